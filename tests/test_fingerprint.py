"""The cohort's content digest (``vce.io.fingerprint``): what the pipeline's cohort cache is keyed on."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from vce.io.errors import VCEInputError
from vce.io.fingerprint import cohort_digest


def _cohort(root: Path, n: int = 2) -> Path:
    """A raw cohort layout: ``n`` patients with T1/T2/T1C files (bytes, not images: only files matter here)."""
    for i in range(n):
        p = root / f"P{i + 1:04d}"
        p.mkdir(parents=True)
        for m in ("T1", "T2", "T1C"):
            (p / f"{m}.nii.gz").write_bytes(f"{m} of patient {i} ".encode() * 100)
    (root / "cohort.json").write_text('{"seed": 7}')
    return root


def test_same_files_elsewhere_give_the_same_digest(tmp_path):
    a = _cohort(tmp_path / "a")
    shutil.copytree(a, tmp_path / "elsewhere" / "b")
    d = cohort_digest(a)
    assert d.startswith("sha256:") and len(d) == len("sha256:") + 64
    assert cohort_digest(tmp_path / "elsewhere" / "b") == d
    assert cohort_digest(str(a)) == d  # str or Path


@pytest.mark.parametrize("change", ["one_byte", "new_file", "removed_file", "renamed_patient", "cohort_json",
                                    "new_patient"])
def test_a_changed_cohort_under_the_same_path_changes_the_digest(tmp_path, change):
    root = _cohort(tmp_path / "data")
    before = cohort_digest(root)
    p = root / "P0001"
    if change == "one_byte":
        data = bytearray((p / "T2.nii.gz").read_bytes())
        data[10] ^= 1
        (p / "T2.nii.gz").write_bytes(bytes(data))
    elif change == "new_file":
        (p / "tumor_mask.nii.gz").write_bytes(b"mask")
    elif change == "removed_file":
        (root / "cohort.json").unlink()  # still a valid cohort, one file less
    elif change == "renamed_patient":
        p.rename(root / "P0009")
    elif change == "cohort_json":
        (root / "cohort.json").write_text('{"seed": 8}')
    else:
        shutil.copytree(p, root / "P0003")
    assert cohort_digest(root) != before, change


def test_what_the_cohort_step_does_not_copy_does_not_count(tmp_path):
    """Hidden folders and loose files beside the patients are never copied, so they do not key the cache."""
    root = _cohort(tmp_path / "data")
    before = cohort_digest(root)
    (root / ".dvc").mkdir()
    (root / ".dvc" / "cache").write_bytes(b"x")
    (root / "notes.txt").write_text("not a patient")
    assert cohort_digest(root) == before


def test_synthesis_and_bad_cohorts(tmp_path):
    assert cohort_digest("") == ""  # no source: the cohort is synthesised from the params
    with pytest.raises(VCEInputError, match="not found"):
        cohort_digest(tmp_path / "missing")
    bad = _cohort(tmp_path / "bad")
    (bad / "P0001" / "T1.nii.gz").unlink()
    with pytest.raises(VCEInputError, match="missing T1"):
        cohort_digest(bad)
