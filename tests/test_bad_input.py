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
    [("4d", "3D scalar"), ("nan", "NaN"), ("zero", "constant")],
)
def test_invalid_volume_content(tmp_path, tiny_cohort, capsys, kind, needle):
    raw = _cohort(tmp_path, tiny_cohort)
    f = _first(raw) / "T2.nii.gz"
    arr = sitk.GetArrayFromImage(sitk.ReadImage(str(f))).astype(np.float32)
    if kind == "4d":
        img = sitk.GetImageFromArray(np.stack([arr, arr]))  # (t, z, y, x) -> 4D image
    elif kind == "nan":
        arr[0, 0, 0] = np.nan
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
