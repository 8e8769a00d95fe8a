"""Bad input: a clear error naming the patient and file, a non-zero exit, and no partial output."""

import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from vce.cli import main


def _cohort(tmp_path, tiny_cohort, n=2):
    raw = tmp_path / "raw"
    raw.mkdir()
    for pid in sorted(p.name for p in tiny_cohort.iterdir() if p.is_dir())[:n]:
        shutil.copytree(tiny_cohort / pid, raw / pid)
    return raw


def _run(capsys, *argv):
    rc = main(list(argv))
    return rc, capsys.readouterr().err


def _register(tmp_path, raw, capsys):
    out = tmp_path / "registered"
    rc, err = _run(capsys, "register", "--raw", str(raw), "--out", str(out), "--profile", "tiny", "--workers", "1")
    return rc, err, out


def _first(raw):
    return sorted(p for p in raw.iterdir() if p.is_dir())[0]


def test_missing_modality(tmp_path, tiny_cohort, capsys):
    raw = _cohort(tmp_path, tiny_cohort)
    p = _first(raw)
    (p / "T1C.nii.gz").unlink()
    rc, err, out = _register(tmp_path, raw, capsys)
    assert rc == 2 and p.name in err and "T1C.nii.gz" in err and not out.exists()


@pytest.mark.parametrize("content", [b"", b"this is not an image at all", None])
def test_unreadable_truncated_or_non_image(tmp_path, tiny_cohort, capsys, content):
    raw = _cohort(tmp_path, tiny_cohort)
    f = _first(raw) / "T1.nii.gz"
    data = f.read_bytes()
    f.write_bytes(content if content is not None else data[: len(data) // 3])  # None: truncated
    rc, err, out = _register(tmp_path, raw, capsys)
    assert rc == 2 and str(f) in err and not out.exists()


@pytest.mark.parametrize(
    "kind,needle",
    [("4d", "3D scalar"), ("nan", "NaN"), ("inf", "Inf"), ("zero", "constant")],
)
def test_invalid_volume_content(tmp_path, tiny_cohort, capsys, kind, needle):
    raw = _cohort(tmp_path, tiny_cohort)
    f = _first(raw) / "T2.nii.gz"
    arr = sitk.GetArrayFromImage(sitk.ReadImage(str(f))).astype(np.float32)
    if kind == "4d":
        img = sitk.GetImageFromArray(np.stack([arr, arr]))  # (t, z, y, x) -> 4D image
    elif kind in ("nan", "inf"):
        arr[0, 0, 0] = np.nan if kind == "nan" else -np.inf
        img = sitk.GetImageFromArray(arr)
    else:
        img = sitk.GetImageFromArray(np.zeros_like(arr))
    sitk.WriteImage(img, str(f))
    rc, err, out = _register(tmp_path, raw, capsys)
    assert rc == 2 and str(f) in err and needle in err and not out.exists()


@pytest.mark.parametrize("name", ["..", "bad name", "a..b/..", "-x"])
def test_bad_patient_directory_names(tmp_path, tiny_cohort, capsys, name):
    raw = _cohort(tmp_path, tiny_cohort)
    bad = raw / name
    if name == "..":
        bad = raw / "weird..name with space"
    elif "/" in name:
        bad = raw / "a..b"
    bad.mkdir(exist_ok=True)
    rc, err, out = _register(tmp_path, raw, capsys)
    assert rc == 2 and "invalid patient id" in err and not out.exists()


def test_cohort_too_small_to_split(tmp_path, tiny_registered, capsys):
    reg = tmp_path / "reg"
    reg.mkdir()
    pid = _first(tiny_registered).name
    shutil.copytree(tiny_registered / pid, reg / pid)
    out = tmp_path / "split"
    rc, err = _run(capsys, "split", "--registered", str(reg), "--out", str(out), "--profile", "tiny")
    assert rc == 2 and "too small" in err and not out.exists()


def test_mismatched_shapes(tmp_path, tiny_registered, capsys):
    reg = tmp_path / "reg"
    shutil.copytree(tiny_registered, reg)
    f = _first(reg) / "T1C.nii.gz"
    arr = sitk.GetArrayFromImage(sitk.ReadImage(str(f)))
    sitk.WriteImage(sitk.GetImageFromArray(arr[:, :-3, :]), str(f))
    out = tmp_path / "split"
    rc, err = _run(capsys, "split", "--registered", str(reg), "--out", str(out), "--profile", "tiny")
    assert rc == 2 and str(f) in err and not out.exists()


def test_rerun_keeps_previous_output_on_failure(tmp_path, tiny_cohort, capsys):
    raw = _cohort(tmp_path, tiny_cohort)
    rc, err, out = _register(tmp_path, raw, capsys)
    assert rc == 0 and out.is_dir()
    before = sorted(p.name for p in out.iterdir())
    (_first(raw) / "T2.nii.gz").write_bytes(b"corrupt")
    rc, err, out = _register(tmp_path, raw, capsys)
    assert rc == 2 and sorted(p.name for p in out.iterdir()) == before
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_missing_cohort_directory(tmp_path, capsys):
    rc, err, out = _register(tmp_path, tmp_path / "nowhere", capsys)
    assert rc == 2 and "nowhere" in err and not out.exists()


def test_run_refuses_a_synthetic_cohort_of_another_profile(tmp_path, tiny_cohort, tiny_cfg):
    from vce.config import load_config
    from vce.io.errors import VCEInputError
    from vce.study import check_synthetic_cohort

    from conftest import ROOT

    check_synthetic_cohort(tiny_cohort, tiny_cfg)  # its own profile: fine
    with pytest.raises(VCEInputError, match="other settings"):
        check_synthetic_cohort(tiny_cohort, load_config(ROOT / "params.yaml", "demo"))


def test_tumour_mask_not_on_t2_grid(tmp_path, tiny_cohort, capsys):
    raw = _cohort(tmp_path, tiny_cohort)
    f = _first(raw) / "tumor_mask.nii.gz"
    arr = sitk.GetArrayFromImage(sitk.ReadImage(str(f)))
    sitk.WriteImage(sitk.GetImageFromArray(arr[:, :-4, :]), str(f))
    rc, err, out = _register(tmp_path, raw, capsys)
    assert rc == 2 and str(f) in err and "T2 size" in err and not out.exists()


def test_duplicate_patient_ids_up_to_case(tmp_path, tiny_cohort, capsys):
    raw = _cohort(tmp_path, tiny_cohort)
    p = _first(raw)
    shutil.copytree(p, raw / p.name.lower())
    rc, err, out = _register(tmp_path, raw, capsys)
    assert rc == 2 and p.name in err and p.name.lower() in err and "differ only in case" in err and not out.exists()


# --- vce import: the same guarantees for real-data import (see tests/test_import.py) ---------

def _import_src(tmp_path, tiny_cohort, kind):
    """Two source patients as DICOM series, then one defect; returns (src, file or folder to name)."""
    from test_import import _arrays, dicom_patient, write_dicom_series

    src = tmp_path / "src"
    a = dicom_patient(src / "case_a", _arrays(tiny_cohort, 0), "ID-A", extra=False)
    b = dicom_patient(src / "case_b", _arrays(tiny_cohort, 1), "ID-B", extra=False)
    t2 = b / "study1" / "s5"
    if kind == "missing_modality":
        shutil.rmtree(t2)
        return src, "T2"
    if kind == "truncated_dicom":
        f = sorted(t2.iterdir())[2]
        f.write_bytes(f.read_bytes()[:400])
        return src, str(f.relative_to(src))
    if kind == "non_image":
        shutil.rmtree(t2)
        (b / "T2.nii.gz").write_bytes(b"this is not an image")
        return src, "case_b/T2.nii.gz"
    if kind == "4d_dicom":
        shutil.rmtree(t2)
        write_dicom_series(t2, _arrays(tiny_cohort, 1)["T2"], "AX T2 TSE", 5, "ID-B", repeat=2)
        return src, "4D"
    if kind == "nan_nifti":
        shutil.rmtree(t2)
        arr = _arrays(tiny_cohort, 1)["T2"].astype(np.float32)
        arr[1, 2, 3] = np.nan
        sitk.WriteImage(sitk.GetImageFromArray(arr), str(b / "T2.nii.gz"))
        return src, str(b / "T2.nii.gz")
    if kind == "zero_nifti":
        shutil.rmtree(t2)
        sitk.WriteImage(sitk.GetImageFromArray(np.zeros((6, 48, 48), np.float32)), str(b / "T2.nii.gz"))
        return src, "constant"
    if kind == "duplicate_patient_id":
        shutil.rmtree(b)
        dicom_patient(b, _arrays(tiny_cohort, 1), "ID-A", extra=False)
        return src, "same DICOM PatientID"
    if kind == "case_duplicate_folders":
        shutil.copytree(a, src / "CASE_A")
        return src, "differ only in case"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["missing_modality", "truncated_dicom", "non_image", "4d_dicom", "nan_nifti",
                                  "zero_nifti", "duplicate_patient_id", "case_duplicate_folders"])
def test_import_bad_input(tmp_path, tiny_cohort, capsys, kind):
    src, needle = _import_src(tmp_path, tiny_cohort, kind)
    out = tmp_path / "raw"
    rc, err = _run(capsys, "import", "--src", str(src), "--out", str(out))
    assert rc == 2 and needle in err, err
    assert "case_b" in err or "CASE_A" in err  # the source folder is named
    assert "ID-A" not in err and "ID-B" not in err  # DICOM PatientIDs are not
    assert not out.exists() and not (src / ".vce_pseudonyms.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # no temp leftovers


def test_reimport_failure_keeps_previous_output(tmp_path, tiny_cohort, capsys):
    src, _ = _import_src(tmp_path, tiny_cohort, "truncated_dicom")
    shutil.rmtree(src / "case_b")
    out = tmp_path / "raw"
    rc, err = _run(capsys, "import", "--src", str(src), "--out", str(out))
    assert rc == 0 and (out / "P0001" / "T1C.nii.gz").is_file()
    before = {p.name: p.read_bytes() for p in (out / "P0001").iterdir()}
    mapping = (src / ".vce_pseudonyms.json").read_bytes()
    f = sorted((src / "case_a" / "study1" / "s9").iterdir())[3]
    f.write_bytes(f.read_bytes()[:300])  # a corrupt slice in the middle of T1C
    rc, err = _run(capsys, "import", "--src", str(src), "--out", str(out))
    assert rc == 2 and "case_a" in err and str(f.relative_to(src)) in err
    assert {p.name: p.read_bytes() for p in (out / "P0001").iterdir()} == before
    assert (src / ".vce_pseudonyms.json").read_bytes() == mapping
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw", "src"]


def test_hidden_patient_folders_are_named(tmp_path, caplog):
    """A patient folder starting with '.' is never read: say so instead of vanishing without a word."""
    import logging

    import pytest

    from vce.io.cohort import list_patients
    from vce.io.errors import VCEInputError

    (tmp_path / ".P001").mkdir()
    (tmp_path / ".dvc").mkdir()
    with pytest.raises(VCEInputError, match=r"no patient directories found \(1 hidden folder"):
        list_patients(tmp_path)
    with caplog.at_level(logging.WARNING):
        try:
            list_patients(tmp_path)
        except VCEInputError:
            pass
    assert ".P001" in caplog.text and ".dvc" not in caplog.text
