"""`vce import`: DICOM / NIfTI -> de-identified raw cohort; series rules; pseudonyms; read_image."""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from vce.cli import main
from vce.io.images import preserve_locale
from vce.io.errors import VCEInputError
from vce.io.images import DEFAULT_RULES, SeriesRule, parse_rules, read_image

#: identifiers written into the synthetic DICOM headers; none may reach any output
PHI = {
    "0010|0010": "DOE^JOHNATHAN",  # PatientName
    "0010|0020": "MRN-884411",  # PatientID (replaced per patient below)
    "0010|0030": "19610203",  # PatientBirthDate
    "0008|0080": "St Elsewhere Hospital",  # InstitutionName
    "0008|0090": "HOUSE^GREGORY",  # ReferringPhysicianName
    "0008|0050": "ACC99817",  # AccessionNumber
}
NEEDLES = ["DOE", "JOHNATHAN", "MRN-884411", "MRN-775522", "19610203", "Elsewhere", "HOUSE", "GREGORY", "ACC99817"]
_uid = iter(range(1, 10_000))


def write_dicom_series(folder: Path, arr: np.ndarray, description: str, number: int, patient_id: str = "MRN-884411",
                       spacing=(1.0, 1.0, 3.0), repeat: int = 1, tags: dict[str, str] | None = None) -> Path:
    """Write ``arr`` (z, y, x) int16 as one axial DICOM series (one file per slice) with PHI tags.

    ``repeat > 1`` writes every slice position that many times (a 4D-like series).
    """
    folder.mkdir(parents=True, exist_ok=True)
    uid = f"1.2.826.0.1.3680043.2.1125.{next(_uid)}"
    w = sitk.ImageFileWriter()
    w.KeepOriginalImageUIDOn()
    k = 0
    for t in range(repeat):
        for z in range(arr.shape[0]):
            s = sitk.GetImageFromArray(arr[z].astype(np.int16))
            s.SetSpacing(spacing[:2])
            meta = {**PHI, "0010|0020": patient_id, "0020|000e": uid, "0008|103e": description, "0020|0011": str(number),
                    "0020|0032": f"0\\0\\{z * spacing[2]}", "0020|0037": "1\\0\\0\\0\\1\\0", "0020|0013": str(k + 1),
                    "0008|0060": "MR", "0018|0050": str(spacing[2]), **(tags or {})}
            for key, v in meta.items():
                s.SetMetaData(key, v)
            w.SetFileName(str(folder / f"IM{number:02d}_{k:04d}.dcm"))
            with preserve_locale():
                w.Execute(s)
            k += 1
    return folder


def _arrays(tiny_cohort, i=0):
    pdir = sorted(p for p in tiny_cohort.iterdir() if p.is_dir())[i]
    return {m: sitk.GetArrayFromImage(sitk.ReadImage(str(pdir / f"{m}.nii.gz"))).astype(np.int16) for m in ("T1", "T2", "T1C")}


def dicom_patient(folder: Path, arrs, patient_id: str, extra: bool = True) -> Path:
    """A patient folder with mixed series in nested sub-folders, like a PACS export."""
    write_dicom_series(folder / "study1" / "s3", arrs["T1"], "AX T1 SE pre", 3, patient_id)
    write_dicom_series(folder / "study1" / "s5", arrs["T2"], "AX T2 TSE", 5, patient_id)
    write_dicom_series(folder / "study1" / "s9", arrs["T1C"], "AX T1 SE POST GAD", 9, patient_id)
    if extra:
        write_dicom_series(folder / "study1" / "s6", arrs["T2"][:, ::-1], "AX T2 FLAIR", 6, patient_id)
        (folder / "study1" / "README.txt").write_text("not dicom")
    return folder


def _all_bytes(root: Path):
    for f in root.rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            yield f, gzip.decompress(data) if f.name.endswith(".gz") else data


def test_dicom_import_is_deidentified(tmp_path, tiny_cohort, capsys, caplog):
    src, out = tmp_path / "src", tmp_path / "raw"
    a = _arrays(tiny_cohort, 0)
    dicom_patient(src / "case_a", a, "MRN-884411")
    dicom_patient(src / "case_b", _arrays(tiny_cohort, 1), "MRN-775522")
    with caplog.at_level(logging.DEBUG):
        rc = main(["import", "--src", str(src), "--out", str(out), "-v"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert sorted(p.name for p in out.iterdir()) == ["P0001", "P0002", "import.json"]
    for m in ("T1", "T2", "T1C"):
        img = sitk.ReadImage(str(out / "P0001" / f"{m}.nii.gz"))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(img), a[m])  # T1: the 'pre' series, T1C: 'POST GAD'
        assert img.GetSpacing() == pytest.approx((1.0, 1.0, 3.0))
        assert img.GetDirection() == pytest.approx(np.eye(3).ravel())
        h = nib.load(str(out / "P0001" / f"{m}.nii.gz")).header
        assert h["descrip"].tobytes().rstrip(b"\0") == b"vce import (de-identified)"
        assert h["aux_file"].tobytes().strip(b"\0") == b"" and h["intent_name"].tobytes().strip(b"\0") == b""
    # no identifier in any output byte (gz decompressed), file name, log or console line
    text = caplog.text + cap.out + cap.err
    for needle in NEEDLES:
        for f, data in _all_bytes(out):
            assert needle.lower().encode() not in data.lower(), (needle, f)
            assert needle.lower() not in str(f.relative_to(tmp_path)).lower()
        assert needle.lower() not in text.lower(), needle
    assert "case_a" not in text and "case_b" not in text  # success logs name pseudonyms only
    # the link lives only in the mapping, next to the source data
    mapping = json.loads((src / ".vce_pseudonyms.json").read_text())
    assert {e["pseudonym"]: e["sources"] for e in mapping["patients"]} == {"P0001": ["case_a"], "P0002": ["case_b"]}
    assert mapping["patients"][0]["patient_ids"] == ["MRN-884411"]
    assert not list(out.rglob(".vce_pseudonyms.json"))


def test_reimport_keeps_pseudonyms(tmp_path, tiny_cohort, capsys):
    src, out, mp = tmp_path / "src", tmp_path / "raw", tmp_path / "secure" / "map.json"
    arrs = _arrays(tiny_cohort, 0)
    dicom_patient(src / "m_first", arrs, "ID1", extra=False)
    dicom_patient(src / "z_second", arrs, "ID2", extra=False)
    assert main(["import", "--src", str(src), "--out", str(out), "--mapping", str(mp)]) == 0
    # a new folder sorting first, and z_second renamed (same PatientID): ids stay, the new one is P0003
    dicom_patient(src / "a_new", arrs, "ID3", extra=False)
    (src / "z_second").rename(src / "renamed")
    assert main(["import", "--src", str(src), "--out", str(out), "--mapping", str(mp)]) == 0
    got = {e["pseudonym"]: sorted(e["sources"]) for e in json.loads(mp.read_text())["patients"]}
    assert got == {"P0001": ["m_first"], "P0002": ["renamed", "z_second"], "P0003": ["a_new"]}
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["P0001", "P0002", "P0003"]
    assert not (src / ".vce_pseudonyms.json").exists()


def test_nifti_import_reorients_and_strips_header(tmp_path, tiny_cohort):
    src, out = tmp_path / "src", tmp_path / "raw"
    pdir = sorted(p for p in tiny_cohort.iterdir() if p.is_dir())[0]
    (src / "Pat 1").mkdir(parents=True)
    for m, name in (("T1", "t1.nii.gz"), ("T2", "T2.nii"), ("T1C", "T1C.nii.gz"), ("tumor_mask", "tumor_mask.nii.gz")):
        img = sitk.ReadImage(str(pdir / f"{m}.nii.gz"))
        img.SetDirection((-1, 0, 0, 0, 1, 0, 0, 0, -1))  # RAI-ish: x and z flipped
        nii_path = src / "Pat 1" / name
        sitk.WriteImage(img, str(nii_path))
        nii = nib.load(str(nii_path), mmap=False)
        nii.header["descrip"] = b"DOE^JOHNATHAN MRN-884411"
        nii.header["aux_file"] = b"ACC99817"
        nib.save(nib.Nifti1Image(np.asanyarray(nii.dataobj), nii.affine, nii.header), str(nii_path))
    assert main(["import", "--src", str(src), "--out", str(out)]) == 0
    for m, name in (("T2", "T2.nii"), ("tumor_mask", "tumor_mask.nii.gz")):
        a = sitk.ReadImage(str(src / "Pat 1" / name))
        b = sitk.ReadImage(str(out / "P0001" / f"{m}.nii.gz"))
        assert b.GetDirection() == pytest.approx(np.eye(3).ravel()) and b.GetSpacing() == pytest.approx(a.GetSpacing())
        # same voxel value at the same physical point (pure axis flips, no resampling)
        for idx in [(0, 0, 0), (5, 17, 3), (47, 47, 5)]:
            pt = a.TransformIndexToPhysicalPoint(idx)
            assert b[b.TransformPhysicalPointToIndex(pt)] == a[idx]
    for _, data in _all_bytes(out):
        assert b"JOHNATHAN" not in data and b"ACC99817" not in data


def _ambiguous(src, tiny_cohort):
    arrs = _arrays(tiny_cohort, 0)
    dicom_patient(src / "case_a", arrs, "ID1", extra=False)
    write_dicom_series(src / "case_a" / "s12", arrs["T1C"], "AX T1 POST GAD MPR", 12, "ID1")


def test_ambiguous_series_named_then_overridden(tmp_path, tiny_cohort, capsys):
    src, out = tmp_path / "src", tmp_path / "raw"
    _ambiguous(src, tiny_cohort)
    rc = main(["import", "--src", str(src), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "case_a" in err and "ambiguous" in err and "#9" in err and "#12" in err
    assert not out.exists() and not (src / ".vce_pseudonyms.json").exists()
    assert main(["import", "--src", str(src), "--out", str(out), "--series-rule", r"T1C=#12\b"]) == 0
    rules = tmp_path / "rules.yaml"
    rules.write_text("T1C: {include: 'post', exclude: 'mpr'}\n")
    assert main(["import", "--src", str(src), "--out", str(out), "--series-rules", str(rules)]) == 0


def test_missing_series_lists_candidates(tmp_path, tiny_cohort, capsys):
    src, out = tmp_path / "src", tmp_path / "raw"
    arrs = _arrays(tiny_cohort, 0)
    write_dicom_series(src / "case_a" / "x", arrs["T1"], "AX T1 SE pre", 3, "ID1")
    write_dicom_series(src / "case_a" / "y", arrs["T1C"], "AX T1 post", 4, "ID1")
    rc = main(["import", "--src", str(src), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "case_a" in err and "T2" in err and not out.exists()
    # candidates named by SeriesNumber, DICOM Modality and folder, never by their description
    assert "series #3 (MR, 6 files, folder case_a/x)" in err and "#4" in err and "AX T1" not in err


def test_output_and_mapping_places_refused(tmp_path, tiny_cohort, capsys):
    src = tmp_path / "src"
    dicom_patient(src / "case_a", _arrays(tiny_cohort, 0), "ID1", extra=False)
    assert main(["import", "--src", str(src), "--out", str(src / "raw")]) == 2
    out = tmp_path / "raw"
    assert main(["import", "--src", str(src), "--out", str(out), "--mapping", str(out / "map.json")]) == 2
    assert "must not be written inside" in capsys.readouterr().err and not out.exists()


def test_read_image_api(tmp_path, tiny_cohort):
    arrs = _arrays(tiny_cohort, 0)
    one = write_dicom_series(tmp_path / "one", arrs["T2"], "AX T2 TSE", 5)
    img = read_image(one, what="T2")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img), arrs["T2"])
    assert img.GetMetaDataKeys() == ()  # geometry only, no DICOM tags
    many = dicom_patient(tmp_path / "many", arrs, "ID1")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_image(many, rule="T1C")), arrs["T1C"])
    with pytest.raises(VCEInputError, match="cannot tell which"):
        read_image(many)
    four_d = write_dicom_series(tmp_path / "dyn", arrs["T1"], "dynamic", 7, repeat=2)
    with pytest.raises(VCEInputError, match="4D"):
        read_image(four_d)
    nii = sorted(p for p in tiny_cohort.iterdir() if p.is_dir())[0] / "T1.nii.gz"
    assert read_image(nii, orientation="LPS").GetSize() == sitk.ReadImage(str(nii)).GetSize()


def test_parse_rules():
    r = parse_rules(["T1C=gado", "t2!=tse"])
    assert r["T1C"] == SeriesRule("gado") and r["T2"] == SeriesRule(DEFAULT_RULES["T2"].include, "tse")
    assert r["T1"] == DEFAULT_RULES["T1"]
    for bad in (["FLAIR=x"], ["T1"], ["T1=("]):
        with pytest.raises(VCEInputError):
            parse_rules(bad)


@pytest.mark.parametrize("desc,expected", [
    ("AX T1 SE pre", "T1"), ("T1_SE_GD", "T1C"), ("t1_mprage_sag +C", "T1C"), ("AX T1 POST CONTRAST", "T1C"),
    ("T1 pre-contrast", "T1"), ("AX T2 TSE", "T2"), ("T2 FLAIR", None), ("t2_star", None), ("DWI b1000", None),
    ("Localizer", None), ("MPRAGE", "T1"), ("SUB T1 post", None),
])
def test_default_rules(desc, expected):
    hits = [m for m, r in DEFAULT_RULES.items() if r.matches(f"{desc} |  | #3")]
    assert hits == ([expected] if expected else [])


def test_dicom_io_leaves_the_locale_alone(tmp_path, tiny_cohort):
    """GDCM switches the process to the "C" locale; reading a series must not leak that (it would
    turn every later default-encoding ``read_text()`` ASCII-only)."""
    import locale

    from vce.io.images import read_image

    before = locale.setlocale(locale.LC_ALL)
    write_dicom_series(tmp_path / "s", _arrays(tiny_cohort)["T2"], "AX T2", 5)
    read_image(tmp_path / "s")
    assert locale.setlocale(locale.LC_ALL) == before


def test_every_unreadable_file_is_reported(tmp_path, tiny_cohort, capsys, caplog):
    """Unreadable files of all patients in one error: the count and each file relative to --src."""
    src, out = tmp_path / "src", tmp_path / "raw"
    a = dicom_patient(src / "case_a", _arrays(tiny_cohort, 0), "ID1", extra=False)
    b = dicom_patient(src / "case_b", _arrays(tiny_cohort, 1), "ID2", extra=False)
    c = src / "case_c"
    c.mkdir()
    for m in ("T1", "T2", "T1C"):
        sitk.WriteImage(sitk.ReadImage(str(sorted(tiny_cohort.iterdir())[2] / f"{m}.nii.gz")), str(c / f"{m}.nii.gz"))
    bad = {
        sorted((a / "study1" / "s9").iterdir())[3]: 300,  # header cut before the image attributes
        sorted((a / "study1" / "s3").iterdir())[1]: 100,  # shorter than the DICOM preamble + 'DICM'
        sorted((b / "study1" / "s5").iterdir())[2]: -2000,  # pixel data cut short
    }
    for f, n in bad.items():
        f.write_bytes(f.read_bytes()[:n])
    (c / "T2.nii.gz").write_bytes((c / "T2.nii.gz").read_bytes()[:200])  # truncated NIfTI
    bad[c / "T2.nii.gz"] = 200
    with caplog.at_level(logging.DEBUG):
        rc = main(["import", "--src", str(src), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert f"import of {src} failed: 4 unreadable file(s) (relative to {src})" in err
    for f in bad:
        assert f"unreadable: {f.relative_to(src).as_posix()}: " in err, f
    assert "truncated DICOM file" in err and "pixel data alone needs 4608" in err
    assert not out.exists() and not (src / ".vce_pseudonyms.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_series_text_fields_never_reach_messages(tmp_path, tiny_cohort, capsys, caplog):
    """SeriesDescription and ProtocolName can carry a patient's name: errors name the series by
    number, modality and folder instead (ambiguous, missing, broken series alike)."""
    src, out = tmp_path / "src", tmp_path / "raw"
    arrs = _arrays(tiny_cohort, 0)
    fake = {"0018|1030": "PROTO JANE^ROE"}  # ProtocolName
    write_dicom_series(src / "case_a" / "s3", arrs["T1"], "T1 pre for DOE^JANE", 3, "ID1", tags=fake)
    write_dicom_series(src / "case_a" / "s5", arrs["T2"], "T2 DOE^JANE", 5, "ID1", tags=fake)
    write_dicom_series(src / "case_a" / "s9", arrs["T1C"], "T1 post gad DOE^JANE", 9, "ID1", tags=fake)
    write_dicom_series(src / "case_a" / "s12", arrs["T1C"], "T1 post gad MPR DOE^JANE", 12, "ID1", tags=fake)
    write_dicom_series(src / "case_b" / "s5", arrs["T2"][:1], "T2 single slice DOE^JANE", 5, "ID2", tags=fake)
    write_dicom_series(src / "case_b" / "s3", arrs["T1"], "T1 pre DOE^JANE", 3, "ID2", tags=fake)
    write_dicom_series(src / "case_b" / "s9", arrs["T1C"], "T1 post gad DOE^JANE", 9, "ID2", tags=fake)
    with caplog.at_level(logging.DEBUG):
        rc = main(["import", "--src", str(src), "--out", str(out), "-v"])
        rc2 = main(["import", "--src", str(src), "--out", str(out), "--series-rule", r"T1C=#9\b", "-v"])
    cap = capsys.readouterr()
    assert rc == 2 and rc2 == 2
    assert "ambiguous" in cap.err and "series #9 (MR, 6 files, folder case_a/s9)" in cap.err and "#12" in cap.err
    assert "series #5 (MR, 1 files, folder case_b/s5) has a single slice" in cap.err
    for needle in ("DOE", "JANE", "ROE", "PROTO", "post gad"):
        assert needle.lower() not in (cap.err + cap.out + caplog.text).lower(), needle
    assert not out.exists()
