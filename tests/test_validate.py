"""`vce validate`: one report (JSON + CSV) of everything wrong or suspicious, nothing else written."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil

import numpy as np
import SimpleITK as sitk

from vce.cli import main
from vce.prep.validate import physical_extent


def _tree(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def _rewrite(f, fn):
    img = sitk.ReadImage(str(f))
    new = sitk.GetImageFromArray(fn(sitk.GetArrayFromImage(img).astype(np.float32)))
    new.CopyInformation(img) if new.GetSize() == img.GetSize() else new.SetSpacing(img.GetSpacing())
    sitk.WriteImage(new, str(f))
    return new


def test_clean_cohort_passes(tmp_path, tiny_cohort, capsys):
    before = _tree(tiny_cohort)
    rep = tmp_path / "rep" / "report.json"
    rc = main(["validate", "--raw", str(tiny_cohort), "--report", str(rep), "--profile", "tiny"])
    out = capsys.readouterr().out
    r = json.loads(rep.read_text())
    assert rc == 0 and r["ok"] and r["n_errors"] == 0 and r["n_usable"] == r["n_patients"] == 8
    assert all(p["status"] == "ok" for p in r["patients"].values()), r["patients"]
    assert "8 patient(s), 8 usable" in out
    assert _tree(tiny_cohort) == before  # nothing written into the cohort
    assert sorted(p.name for p in rep.parent.iterdir()) == ["report.csv", "report.json"]


def test_every_problem_is_reported(tmp_path, tiny_cohort, capsys):
    raw = tmp_path / "raw"
    pids = sorted(p.name for p in tiny_cohort.iterdir() if p.is_dir())
    for pid in pids:
        shutil.copytree(tiny_cohort / pid, raw / pid)
    p = {k: raw / pid for k, pid in zip(["missing", "trunc", "fourd", "nan", "zero", "neg", "fov", "mask"], pids)}
    (p["missing"] / "T1C.nii.gz").unlink()
    data = (p["trunc"] / "T1.nii.gz").read_bytes()
    (p["trunc"] / "T1.nii.gz").write_bytes(data[: len(data) // 3])
    (p["trunc"] / "T2.nii.gz").write_bytes(b"not an image")
    _rewrite(p["fourd"] / "T2.nii.gz", lambda a: a)
    arr = sitk.GetArrayFromImage(sitk.ReadImage(str(p["fourd"] / "T2.nii.gz")))
    sitk.WriteImage(sitk.GetImageFromArray(np.stack([arr, arr])), str(p["fourd"] / "T2.nii.gz"))

    def inf(a):
        a[1, 2, 3] = np.inf
        return a

    _rewrite(p["nan"] / "T1.nii.gz", inf)
    _rewrite(p["zero"] / "T1C.nii.gz", np.zeros_like)
    _rewrite(p["neg"] / "T1.nii.gz", lambda a: a - 5000)
    small = _rewrite(p["fov"] / "T1.nii.gz", lambda a: a[:, :20, :20])  # 20 x 4.4 = 88 mm < 100 mm
    _rewrite(p["mask"] / "tumor_mask.nii.gz", lambda a: a[:, :-2, :])
    (p["mask"] / "notes.txt").write_text("x")  # ignored
    shutil.copy(p["mask"] / "T2.nii.gz", p["mask"] / "t1c.nii")  # misnamed: warned
    (raw / "Bad Name").mkdir()
    (raw / p["mask"].name.lower()).mkdir()  # case-insensitive duplicate of an id
    before = _tree(raw)

    rep = tmp_path / "rep.json"
    rc = main(["validate", "--raw", str(raw), "--report", str(rep), "--profile", "tiny"])
    out = capsys.readouterr().out
    assert rc == 1
    r = json.loads(rep.read_text())
    checks = {pid: {(i["severity"], i["check"]) for i in v["issues"]} for pid, v in r["patients"].items()}
    name = lambda k: p[k].name  # noqa: E731
    assert ("error", "missing") in checks[name("missing")]
    assert {("error", "truncated"), ("error", "unreadable")} <= checks[name("trunc")]
    assert ("error", "not_3d") in checks[name("fourd")]
    assert ("error", "non_finite") in checks[name("nan")]
    assert ("error", "constant") in checks[name("zero")]
    assert checks[name("neg")] == {("error", "intensity_range")}  # outside the 12-bit range [0, 4095]
    assert {("warning", "tiny_fov"), ("warning", "fov_mismatch")} <= checks[name("fov")]
    assert checks[name("mask")] == {("warning", "mask_grid"), ("warning", "unexpected_file")}  # register resamples it
    assert [i["file"] for i in r["patients"][name("mask")]["issues"] if i["check"] == "unexpected_file"] == [str(p["mask"] / "t1c.nii")]
    assert ("error", "patient_id") in checks["Bad Name"]
    assert ("error", "duplicate_id") in checks[p["mask"].name.lower()]
    assert r["n_usable"] == 2 and not r["ok"]  # 'fov' and 'mask' have warnings only
    assert r["cohort"] == []  # 2 usable patients still split 1:1 with the tiny profile
    # the extent behind tiny_fov, independently: 20 voxels x 4.4 mm
    assert np.allclose(physical_extent(small)[:2], [88.0, 88.0], atol=1e-3)
    rows = list(csv.DictReader(rep.with_suffix(".csv").open()))
    assert len(rows) == r["n_errors"] + r["n_warnings"] and {"patient", "file", "severity", "check", "message"} <= set(rows[0])
    assert str(p["trunc"] / "T1.nii.gz") in {row["file"] for row in rows}
    assert f"{r['n_errors']} error(s)" in out
    assert _tree(raw) == before  # validate changes nothing in the cohort
    assert sorted(x.name for x in tmp_path.iterdir()) == ["raw", "rep.csv", "rep.json"]  # no temp leftovers


def test_missing_cohort_is_an_input_error(tmp_path, capsys):
    rc = main(["validate", "--raw", str(tmp_path / "nowhere"), "--report", str(tmp_path / "r.json"), "--profile", "tiny"])
    assert rc == 2 and "nowhere" in capsys.readouterr().err and not (tmp_path / "r.json").exists()


def test_cohort_too_small(tmp_path, tiny_cohort, capsys):
    raw = tmp_path / "raw"
    pid = sorted(p.name for p in tiny_cohort.iterdir() if p.is_dir())[0]
    shutil.copytree(tiny_cohort / pid, raw / pid)
    rc = main(["validate", "--raw", str(raw), "--report", str(tmp_path / "r.json"), "--profile", "tiny"])
    r = json.loads((tmp_path / "r.json").read_text())
    assert rc == 1 and [i["check"] for i in r["cohort"]] == ["cohort_too_small"] and "too small" in capsys.readouterr().out


def test_optional_synthetic_files(tmp_path, tiny_cohort):
    """T1C_clean must be on the T1C grid and wm_mask on the T2 grid (error naming the file); absent is fine."""
    from vce.prep.validate import validate_cohort

    raw = tmp_path / "raw"
    pids = sorted(p.name for p in tiny_cohort.iterdir() if p.is_dir())[:4]
    for pid in pids:
        shutil.copytree(tiny_cohort / pid, raw / pid)
    absent, clean_off, wm_off, shifted = (raw / pid for pid in pids)
    (absent / "T1C_clean.nii.gz").unlink()
    (absent / "wm_mask.nii.gz").unlink()
    _rewrite(clean_off / "T1C_clean.nii.gz", lambda a: a[:, :-2, :])  # another size
    _rewrite(wm_off / "wm_mask.nii.gz", lambda a: a[:, :, 1:])
    img = sitk.ReadImage(str(shifted / "T1C_clean.nii.gz"))
    img.SetOrigin([o + 5.0 for o in img.GetOrigin()])  # same size, moved by 5 mm
    sitk.WriteImage(img, str(shifted / "T1C_clean.nii.gz"))

    r = validate_cohort(raw)
    issues = {pid: [(i["check"], i["file"], i["message"]) for i in v["issues"] if i["severity"] == "error"] for pid, v in r["patients"].items()}
    assert issues[absent.name] == [] and r["patients"][absent.name]["status"] == "ok"
    (check, file, msg), = issues[clean_off.name]
    assert check == "clean_grid" and file == str(clean_off / "T1C_clean.nii.gz") and "T1C_clean.nii.gz" in msg and "T1C grid" in msg
    (check, file, msg), = issues[wm_off.name]
    assert check == "wm_grid" and file == str(wm_off / "wm_mask.nii.gz") and "wm_mask.nii.gz" in msg and "T2 grid" in msg
    assert [c for c, _, _ in issues[shifted.name]] == ["clean_grid"]
    assert r["n_usable"] == 1
