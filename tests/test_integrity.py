"""Integrity pass (issue 11): what `vce validate` refuses, `vce register` and `vce split` refuse too.

Every defect is a real file (NIfTI headers patched byte by byte, volumes rewritten with
SimpleITK); each CLI test checks the exit code, that the message names the patient and file,
that no traceback is printed and that nothing is left in ``--out``.
"""

from __future__ import annotations

import gzip
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from vce.cli import main


def _copy(src: Path, dst: Path, n: int = 2) -> Path:
    dst.mkdir(parents=True)
    for pid in sorted(p.name for p in src.iterdir() if p.is_dir())[:n]:
        shutil.copytree(src / pid, dst / pid)
    return dst


def _run(capsys, *argv):
    rc = main(list(argv))
    cap = capsys.readouterr()
    assert "Traceback" not in cap.err
    return rc, cap.out, cap.err


def _validate(capsys, raw: Path, tmp_path: Path):
    rep = tmp_path / "rep.json"
    rc, out, _ = _run(capsys, "validate", "--raw", str(raw), "--report", str(rep), "--profile", "tiny")
    return rc, json.loads(rep.read_text()), out


def _errors(report, pid):
    return [(i["check"], i["file"], i["message"]) for i in report["patients"][pid]["issues"] if i["severity"] == "error"]


def _register(capsys, raw: Path, out: Path, *extra):
    rc, _, err = _run(capsys, "register", "--raw", str(raw), "--out", str(out), "--profile", "tiny", "--workers", "1", *extra)
    return rc, err


def _split(capsys, reg: Path, out: Path):
    rc, _, err = _run(capsys, "split", "--registered", str(reg), "--out", str(out), "--profile", "tiny")
    return rc, err


def _no_debris(parent: Path, out: Path) -> bool:
    return not out.exists() and not [p for p in parent.iterdir() if ".tmp-" in p.name]


def _patch_header(f: Path, **fields) -> None:
    """Rewrite NIfTI header fields of a .nii.gz in place, bytes as stored (no nibabel fix-ups)."""
    raw = bytearray(gzip.decompress(f.read_bytes()))
    hdr = nib.Nifti1Header.from_fileobj(io.BytesIO(bytes(raw)), check=False)
    for k, v in fields.items():
        hdr[k] = v
    raw[:348] = hdr.binaryblock
    f.write_bytes(gzip.compress(bytes(raw)))


def _rewrite(f: Path, fn, dtype=None) -> None:
    """Replace the voxels of ``f`` by ``fn(array)`` (same geometry), optionally cast to ``dtype``."""
    img = sitk.ReadImage(str(f))
    arr = fn(sitk.GetArrayFromImage(img).astype(np.float64))
    new = sitk.GetImageFromArray(arr.astype(dtype or np.float32))
    new.CopyInformation(img)
    sitk.WriteImage(new, str(f))


# --- 1. voxel spacing ----------------------------------------------------------------------


@pytest.mark.parametrize("kind,pixdim,needle", [
    ("zero", [0.0, 4.4, 8.0], "x is zero (missing)"),
    ("missing", [0.0, 0.0, 0.0], "z is zero (missing)"),
    ("negative", [4.4, -4.4, 8.0], "y is negative"),
    ("nan", [4.4, 4.4, np.nan], "z is nan"),
])
def test_unusable_spacing_refused_by_validate_and_register(tmp_path, tiny_cohort, capsys, kind, pixdim, needle):
    """ITK reads a zero or NaN pixdim as 1 mm and a negative one as its absolute value: the header is checked as stored."""
    raw = _copy(tiny_cohort, tmp_path / "raw")
    pid = sorted(p.name for p in raw.iterdir())[1]
    f = raw / pid / "T2.nii.gz"
    hdr = nib.load(str(f)).header
    _patch_header(f, pixdim=[hdr["pixdim"][0], *pixdim, *hdr["pixdim"][4:]])
    assert sitk.ReadImage(str(f)).GetSpacing()[0] > 0  # ITK alone would not notice

    rc, rep, _ = _validate(capsys, raw, tmp_path)
    (check, file, msg), = _errors(rep, pid)
    assert rc == 1 and check == "spacing" and file == str(f) and needle in msg and "voxel spacing" in msg
    out = tmp_path / "registered"
    rc, err = _register(capsys, raw, out)
    assert rc == 2 and str(f) in err and f"patient {pid}" in err and needle in err and _no_debris(tmp_path, out)


def test_unusable_spacing_refused_by_split(tmp_path, tiny_registered, capsys):
    reg = _copy(tiny_registered, tmp_path / "reg", n=3)
    pid = sorted(p.name for p in reg.iterdir())[2]
    f = reg / pid / "T1C.nii.gz"
    hdr = nib.load(str(f)).header
    _patch_header(f, pixdim=[hdr["pixdim"][0], 4.4, 0.0, 8.0, *hdr["pixdim"][4:]])
    out = tmp_path / "split"
    rc, err = _split(capsys, reg, out)
    assert rc == 2 and str(f) in err and f"patient {pid}" in err and "y is zero" in err and _no_debris(tmp_path, out)


def test_spacing_problem_unit():
    from vce.io.nifti import spacing_problem

    assert spacing_problem((4.4, 4.4, 8.0)) is None
    msg = spacing_problem((0.0, -1.0, float("inf")))
    assert "x is zero (missing)" in msg and "y is negative" in msg and "z is inf" in msg and "[0, -1, inf]" in msg


# --- 2. header-claimed size vs file size ----------------------------------------------------

_BIG = dict(dim=[3, 1000, 1000, 800, 1, 1, 1, 1], datatype=8, bitpix=32)  # 3.2 GB of int32 claimed


def test_header_claiming_more_than_the_file_is_refused_before_reading(tmp_path, tiny_cohort, capsys):
    """A ~20 KB file whose header claims 3.2 GB: refused naming the file and both sizes, in small memory."""
    raw = _copy(tiny_cohort, tmp_path / "raw")
    pid = sorted(p.name for p in raw.iterdir())[0]
    f = raw / pid / "T1.nii.gz"
    _patch_header(f, **_BIG)
    assert f.stat().st_size < 100_000
    rep = tmp_path / "rep.json"
    code = ("import resource, sys; from vce.cli import main; "
            f"rc = main(['validate', '--raw', {str(raw)!r}, '--report', {str(rep)!r}, '--profile', 'tiny']); "
            "print('MAXRSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    peak_mb = int(proc.stdout.split("MAXRSS")[1].split()[0]) / 1024  # ru_maxrss is in KiB on Linux
    assert peak_mb < 1500, f"validate peaked at {peak_mb:.0f} MB"  # reading the claimed voxels needs 3200+ MB
    (check, file, msg), = _errors(json.loads(rep.read_text()), pid)
    assert check == "truncated" and file == str(f)
    assert "header claims 1000x1000x800 int32 voxels = 3.2 GB" in msg and "but the file holds" in msg and "decompressed" in msg

    out = tmp_path / "registered"
    rc, err = _register(capsys, raw, out)
    assert rc == 2 and str(f) in err and f"patient {pid}" in err and "header claims" in err and _no_debris(tmp_path, out)


def test_header_size_check_uncompressed_and_honest_files(tmp_path, tiny_cohort):
    """.nii: header size vs file size; an honest file passes; a truncated one names both byte counts."""
    from vce.io.nifti import header_size_problem, read_volume

    src = sorted(p for p in tiny_cohort.iterdir() if p.is_dir())[0] / "T2.nii.gz"
    data = gzip.decompress(src.read_bytes())
    ok, short = tmp_path / "ok.nii", tmp_path / "short.nii"
    ok.write_bytes(data)
    short.write_bytes(data[: len(data) - 100])
    assert header_size_problem(ok) is None and header_size_problem(src) is None
    msg = header_size_problem(short)
    assert f"({len(data)} bytes with the 352-byte header)" in msg and f"the file holds {len(data) - 100} bytes" in msg
    assert "decompressed" not in msg
    from vce.io.errors import VCEInputError

    with pytest.raises(VCEInputError, match="short.nii: T2: NIfTI header claims"):
        read_volume(short, what="T2")
    # concatenated gzip members (valid gzip) are followed, not mistaken for a short file
    multi = tmp_path / "multi.nii.gz"
    multi.write_bytes(gzip.compress(data[:1000]) + gzip.compress(data[1000:]))
    assert header_size_problem(multi) is None


# --- 3. intensity range ---------------------------------------------------------------------


def test_16bit_cohort_refused_with_the_fix(tmp_path, tiny_cohort, tiny_registered, capsys):
    """uint16 volumes (x 16, up to 65520) pass every step today and are clipped to 4095: refused everywhere."""
    raw = _copy(tiny_cohort, tmp_path / "raw")
    pid = sorted(p.name for p in raw.iterdir())[1]
    for m in ("T1", "T2", "T1C"):
        _rewrite(raw / pid / f"{m}.nii.gz", lambda a: a * 16, np.uint16)
    rc, rep, out = _validate(capsys, raw, tmp_path)
    errs = _errors(rep, pid)
    assert rc == 1 and [c for c, _, _ in errs] == ["intensity_range"] * 3
    check, file, msg = errs[0]
    arr = sitk.GetArrayFromImage(sitk.ReadImage(file))
    lo, hi = float(arr.min()), float(arr.max())
    assert file == str(raw / pid / "T1.nii.gz") and msg.startswith(f"T1: intensities {lo:g} .. {hi:g} are outside")
    assert hi > 4095 and "[0, 4095]" in msg and "--rescale-12bit" in msg
    assert f"{pid}  error   intensity_range" in out

    reg = tmp_path / "registered"
    rc, err = _register(capsys, raw, reg)
    assert rc == 2 and f"patient {pid}" in err and "T1.nii.gz" in err and "--rescale-12bit" in err and _no_debris(tmp_path, reg)
    assert "3 integrity problem(s)" in err  # T1, T2 and T1C, all named

    reg2 = _copy(tiny_registered, tmp_path / "reg2", n=2)
    rid = sorted(p.name for p in reg2.iterdir())[0]
    _rewrite(reg2 / rid / "T1C.nii.gz", lambda a: a * 16)
    split = tmp_path / "split"
    rc, err = _split(capsys, reg2, split)
    assert rc == 2 and f"patient {rid}" in err and str(reg2 / rid / "T1C.nii.gz") in err and "[0, 4095]" in err
    assert _no_debris(tmp_path, split)


def test_negative_intensities_refused(tmp_path, tiny_cohort, capsys):
    raw = _copy(tiny_cohort, tmp_path / "raw")
    pid = sorted(p.name for p in raw.iterdir())[0]
    _rewrite(raw / pid / "T2.nii.gz", lambda a: a - a.min() - 1024, np.int16)  # CT-like signed data
    rc, rep, _ = _validate(capsys, raw, tmp_path)
    (check, file, msg), = _errors(rep, pid)
    assert rc == 1 and check == "intensity_range" and "intensities -1024 .. " in msg and "negative values" in msg
    out = tmp_path / "registered"
    rc, err = _register(capsys, raw, out)
    assert rc == 2 and f"patient {pid}" in err and str(raw / pid / "T2.nii.gz") in err and "negative" in err
    assert _no_debris(tmp_path, out)


def test_intensity_problem_unit():
    from vce.io.nifti import intensity_problem

    assert intensity_problem(0, 4095) is None and intensity_problem(0, 4095.3) is None  # interpolation rounding
    assert "--rescale-12bit" in intensity_problem(0, 4096) and "negative" not in intensity_problem(0, 4096)
    assert "negative" in intensity_problem(-1, 100) and "--rescale-12bit" not in intensity_problem(-1, 100)


def test_import_rescale_12bit(tmp_path, tiny_cohort, capsys):
    """--rescale-12bit scales each modality whose max exceeds 4095 by 4095/max and records the factor;
    without it the import warns and validate refuses."""
    from vce.prep.importing import import_cohort

    src = tmp_path / "src"
    pdirs = sorted(p for p in tiny_cohort.iterdir() if p.is_dir())[:2]
    for k, pdir in enumerate(pdirs):
        (src / f"case_{k}").mkdir(parents=True)
        for m in ("T1", "T2", "T1C"):
            img = sitk.ReadImage(str(pdir / f"{m}.nii.gz"))
            scale = 16 if (k, m) != (1, "T2") else 1  # one modality already in range: left alone
            new = sitk.GetImageFromArray((sitk.GetArrayFromImage(img).astype(np.float64) * scale).astype(np.uint16))
            new.CopyInformation(img)
            sitk.WriteImage(new, str(src / f"case_{k}" / f"{m}.nii.gz"))

    import_cohort(src, tmp_path / "plain")
    rc, rep, _ = _validate(capsys, tmp_path / "plain", tmp_path)
    assert rc == 1 and {c for c, _, _ in _errors(rep, "P0001")} == {"intensity_range"}

    out = tmp_path / "raw"
    import_cohort(src, out, rescale_12bit=True)
    info = json.loads((out / "import.json").read_text())
    assert info["rescale_12bit"] is True
    for k, pid in enumerate(("P0001", "P0002")):
        for m in ("T1", "T2", "T1C"):
            orig = sitk.GetArrayFromImage(sitk.ReadImage(str(src / f"case_{k}" / f"{m}.nii.gz"))).astype(np.float64)
            got = sitk.GetArrayFromImage(sitk.ReadImage(str(out / pid / f"{m}.nii.gz")))
            if orig.max() > 4095:
                factor = info["patients"][pid][m]["rescale_12bit_factor"]
                assert factor == pytest.approx(4095 / orig.max(), rel=1e-12) and got.max() == pytest.approx(4095, abs=1e-3)
                np.testing.assert_allclose(got, orig * factor, rtol=1e-6, atol=1e-3)
            else:
                assert "rescale_12bit_factor" not in info["patients"][pid][m] and np.array_equal(got, orig)
    assert "case_0" not in (out / "import.json").read_text()  # provenance carries no source names
    rc, rep, _ = _validate(capsys, out, tmp_path)
    assert rc == 0 and rep["ok"], rep


# --- 4. register QC tolerance; a step that excludes everyone ---------------------------------


def test_mi_tolerance_is_relative():
    from vce.config import RegisterConfig
    from vce.prep.registration import MI_RELATIVE_TOLERANCE, mi_got_worse, qc_failures

    strict = RegisterConfig(max_metric_increase=0.0)
    assert MI_RELATIVE_TOLERANCE == 0.01
    assert not mi_got_worse(-1.8538, -1.8467, strict)  # the aligned pair: +0.4 %
    assert mi_got_worse(-1.8538, -1.80, strict)  # +2.9 %
    assert mi_got_worse(-0.5, float("nan"), strict)
    qc = {"T1_mi_before": -1.8538, "T1_mi_after": -1.80, "T1_jac_min": 1.0}
    assert "worse" in qc_failures(qc, strict)[0] and "tolerance 0.0185" in qc_failures(qc, strict)[0]
    assert qc_failures({**qc, "T1_kept": "initial"}, strict) == []  # the better (initial) alignment was kept


def test_registration_that_makes_mi_worse_keeps_the_initial_alignment(tmp_path, tiny_cfg, tiny_registered, monkeypatch):
    """An already-aligned pair (a registered patient as raw input) whose registration goes astray
    (a 9 mm shift) is kept as it was, not excluded; the written T1 is the identity resampling."""
    import dataclasses

    import pandas as pd

    from vce.prep import registration

    raw = tmp_path / "raw"
    pid = sorted(p.name for p in tiny_registered.iterdir() if p.is_dir())[0]
    raw.mkdir()
    shutil.copytree(tiny_registered / pid, raw / pid)
    real = registration.register_image

    def astray(fixed, moving, cfg, seed=0, mask=None):
        if moving is moving_of.get("T1"):
            return sitk.CompositeTransform([sitk.TranslationTransform(3, (9.0, 0.0, 0.0))])
        return real(fixed, moving, cfg, seed=seed, mask=mask)

    moving_of = {}
    real_read = registration._read_moving
    monkeypatch.setattr(registration, "_read_moving", lambda d, p: moving_of.update(real_read(d, p)) or moving_of)
    monkeypatch.setattr(registration, "register_image", astray)
    cfg = dataclasses.replace(tiny_cfg.register, max_metric_increase=0.0, qc_png=False)
    table = registration.register_cohort(raw, tmp_path / "reg", cfg, seed=tiny_cfg.seed)
    row = table.iloc[0]
    assert row["status"] == "ok" and row["T1_kept"] == "initial" and row["T1_mi_after"] > row["T1_mi_before"]
    assert row["T1_jac_min"] == pytest.approx(1.0) and row["T1C_kept"] in ("registered", "initial")
    out = tmp_path / "reg" / pid
    expected = sitk.Resample(sitk.Cast(sitk.ReadImage(str(raw / pid / "T1.nii.gz")), sitk.sitkFloat32),
                             sitk.ReadImage(str(raw / pid / "T2.nii.gz")), sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out / "T1.nii.gz"))), sitk.GetArrayFromImage(expected))
    assert "initial" in json.loads((out / "transforms.json").read_text())["T1"]["kept"]
    assert json.loads((tmp_path / "reg" / "excluded.json").read_text()) == {}
    assert list(pd.read_csv(tmp_path / "reg" / "qc.csv")["T1_kept"]) == ["initial"]


def test_already_aligned_pair_is_not_excluded(tmp_path, tiny_cfg, tiny_registered):
    """Registering registered (aligned) volumes again with the strict default (max_metric_increase 0): kept."""
    import dataclasses

    from vce.prep.registration import register_cohort

    raw = _copy(tiny_registered, tmp_path / "raw", n=2)
    cfg = dataclasses.replace(tiny_cfg.register, max_metric_increase=0.0, qc_png=False)
    table = register_cohort(raw, tmp_path / "reg", cfg, seed=tiny_cfg.seed)
    assert list(table["status"]) == ["ok", "ok"], table[["patient", "reason"]]
    assert {"registered", "initial"} >= set(table["T1_kept"]) | set(table["T1C_kept"])
    assert all((tmp_path / "reg" / p / "T1.nii.gz").is_file() for p in table["patient"])


def test_register_excluding_every_patient_exits_2_with_reasons(tmp_path, tiny_cohort, capsys):
    import yaml

    from conftest import ROOT

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["profiles"]["tiny"]["register"].update(max_tre_mm=1e-3, qc_png=False)
    pfile = tmp_path / "params.yaml"
    pfile.write_text(yaml.safe_dump(params))
    raw = _copy(tiny_cohort, tmp_path / "raw")
    out = tmp_path / "registered"
    rc, err = _register(capsys, raw, out, "--params", str(pfile))
    pids = sorted(p.name for p in raw.iterdir())
    assert rc == 2 and "excluded every patient (2 of 2)" in err and _no_debris(tmp_path, out)
    for pid in pids:
        assert f"patient {pid}: T1: TRE p95" in err or f"patient {pid}: T1C: TRE p95" in err


def test_split_says_register_excluded_the_patients(tmp_path, tiny_registered, capsys):
    """A registered directory that register emptied (as older versions left it): split names why and where."""
    reg = tmp_path / "reg"
    reg.mkdir()
    shutil.copy(tiny_registered / "qc.csv", reg / "qc.csv")
    (reg / "excluded.json").write_text(json.dumps({"P001": "T1: Mattes MI got worse", "P002": "T1C: TRE p95 9 mm"}))
    out = tmp_path / "split"
    rc, err = _split(capsys, reg, out)
    assert rc == 2 and "register excluded all 2 patient(s)" in err and str(reg / "excluded.json") in err
    assert str(reg / "qc.csv") in err and "P001: T1: Mattes MI got worse" in err and _no_debris(tmp_path, out)
    # one patient left: too small, and the excluded ones are named
    shutil.copytree(tiny_registered / "P003", reg / "P003")
    rc, err = _split(capsys, reg, out)
    assert rc == 2 and "too small" in err and "register excluded 2 patient(s): P001, P002" in err and not out.exists()


# --- 5. tumour mask on another grid -------------------------------------------------------


def test_mask_on_another_grid_is_resampled_in_physical_space(tmp_path, tiny_cohort, capsys):
    """The same tumour on a grid shifted by 3 voxels with a wider field of view and half the
    slice spacing: register puts it back onto the T2 grid voxel for voxel, not index by index."""
    raw = _copy(tiny_cohort, tmp_path / "raw", n=1)
    pid = next(raw.iterdir()).name
    f = raw / pid / "tumor_mask.nii.gz"
    mask = sitk.ReadImage(str(f))
    t2 = sitk.ReadImage(str(raw / pid / "T2.nii.gz"))
    grid = sitk.Image([m + 6 for m in mask.GetSize()[:2]] + [2 * mask.GetSize()[2]], sitk.sitkUInt8)
    sp = mask.GetSpacing()
    grid.SetSpacing((sp[0], sp[1], sp[2] / 2))
    grid.SetOrigin(np.add(mask.GetOrigin(), (-3 * sp[0], -3 * sp[1], 0.0)).tolist())
    grid.SetDirection(mask.GetDirection())
    moved = sitk.Resample(mask, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    sitk.WriteImage(moved, str(f))
    orig = sitk.GetArrayFromImage(mask)
    assert orig.sum() > 0 and sitk.GetArrayFromImage(moved).shape != orig.shape  # index by index it would not fit

    rc, rep, _ = _validate(capsys, raw, tmp_path)
    warn = [i for i in rep["patients"][pid]["issues"] if i["check"] == "mask_grid"]
    assert rep["patients"][pid]["status"] == "warning" and len(warn) == 1 and "register resamples it" in warn[0]["message"]
    out = tmp_path / "registered"
    rc, err = _register(capsys, raw, out)
    assert rc == 0, err
    got = sitk.ReadImage(str(out / pid / "tumor_mask.nii.gz"))
    assert got.GetSize() == t2.GetSize() and np.allclose(got.GetOrigin(), t2.GetOrigin(), atol=1e-4)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(got), orig)  # physically the same voxels as the original
    # and independently, point by point: each T2 voxel centre takes the moved mask's value there
    arr, mv = sitk.GetArrayFromImage(got), sitk.GetArrayFromImage(moved)
    for idx in [(20, 20, 2), (0, 0, 0), (47, 47, 5), *[tuple(int(v) for v in p[::-1]) for p in np.argwhere(orig)[:20]]]:
        j = moved.TransformPhysicalPointToIndex(t2.TransformIndexToPhysicalPoint(idx))
        assert arr[idx[::-1]] == mv[j[::-1]]


def test_mask_outside_the_t2_volume_is_refused(tmp_path, tiny_cohort, capsys):
    raw = _copy(tiny_cohort, tmp_path / "raw")
    pid = sorted(p.name for p in raw.iterdir())[0]
    f = raw / pid / "tumor_mask.nii.gz"
    img = sitk.ReadImage(str(f))
    img.SetOrigin([o + 1000.0 for o in img.GetOrigin()])  # another scan's mask, a metre away
    sitk.WriteImage(img, str(f))
    rc, rep, _ = _validate(capsys, raw, tmp_path)
    (check, file, msg), = _errors(rep, pid)
    assert rc == 1 and check == "mask_outside" and file == str(f) and "does not overlap the T2 volume" in msg
    out = tmp_path / "registered"
    rc, err = _register(capsys, raw, out)
    assert rc == 2 and str(f) in err and f"patient {pid}" in err and "does not overlap" in err and _no_debris(tmp_path, out)


# --- 6. one patient under two ids -----------------------------------------------------------


def test_duplicate_patient_refused_by_validate_register_and_split(tmp_path, tiny_cohort, tiny_registered, capsys):
    """A copy of P001 as P009 (re-saved as float32, so the file bytes differ): refused naming both ids."""
    raw = _copy(tiny_cohort, tmp_path / "raw")
    first = sorted(p.name for p in raw.iterdir())[0]
    shutil.copytree(raw / first, raw / "P009")
    for m in ("T1", "T2", "T1C"):
        _rewrite(raw / "P009" / f"{m}.nii.gz", lambda a: a, np.float32)
    assert (raw / "P009" / "T1.nii.gz").read_bytes() != (raw / first / "T1.nii.gz").read_bytes()
    rc, rep, _ = _validate(capsys, raw, tmp_path)
    (check, file, msg), = _errors(rep, "P009")
    assert rc == 1 and check == "duplicate_patient" and f"patients {first} and P009 have identical T1, T2, T1C" in msg
    assert rep["patients"][first]["status"] == "ok" and rep["n_usable"] == 2
    out = tmp_path / "registered"
    rc, err = _register(capsys, raw, out)
    assert rc == 2 and f"patients {first} and P009 have identical" in err and _no_debris(tmp_path, out)

    reg = _copy(tiny_registered, tmp_path / "reg", n=2)
    rfirst = sorted(p.name for p in reg.iterdir())[0]
    shutil.copytree(reg / rfirst, reg / "P999")
    split = tmp_path / "split"
    rc, err = _split(capsys, reg, split)
    assert rc == 2 and f"patients {rfirst} and P999 have identical T1, T2, T1C" in err and _no_debris(tmp_path, split)


def test_one_copied_modality_is_named(tmp_path, tiny_cohort):
    from vce.prep.validate import validate_cohort

    raw = _copy(tiny_cohort, tmp_path / "raw", n=3)
    a, b, c = sorted(p.name for p in raw.iterdir())
    shutil.copy(raw / a / "T2.nii.gz", raw / c / "T2.nii.gz")
    rep = validate_cohort(raw)
    assert [(i["check"], i["message"].split(" (")[0]) for i in rep["patients"][c]["issues"] if i["severity"] == "error"] == [
        ("duplicate_patient", f"patients {a} and {c} have identical T2")]
    assert rep["patients"][b]["status"] == "ok"
