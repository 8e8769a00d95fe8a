"""Data and generated outputs are never committed: DVC tracks the data, .gitignore the outputs."""

from __future__ import annotations

import fnmatch
import shutil
import subprocess

import pytest

from conftest import ROOT

#: what the pipeline writes (stores, images, arrays, checkpoints): never a tracked file
GENERATED = ("*.db", "*.db-journal", "*.nii", "*.nii.gz", "*.dcm", "*.npy", "*.npz", "*.pt", "*.pth",
             "mlruns/*", "*/mlruns/*", "data/*", "data_*/*", "outputs/*")


def _tracked() -> list[str]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    return [p for p in out.decode().split("\0") if p]


def test_no_data_or_generated_output_is_tracked():
    tracked = _tracked()
    assert "params.yaml" in tracked and "data.dvc" in tracked  # the listing is the real one
    bad = [p for p in tracked if any(fnmatch.fnmatch(p, g) for g in GENERATED)]
    assert bad == [], f"generated files tracked by git: {bad}"


def test_generated_outputs_are_ignored():
    """A study's default outputs (vce run, vce predict's MLflow default, DVC's data) are ignored."""
    _tracked()
    paths = ["mlflow.db", "mlflow/mlflow.db", "mlflow/artifacts/x", "outputs/demo/x", "data/P001/T1.nii.gz",
             "data_mid/P001/T1.nii.gz", "build/image.json", "mlruns/0/meta.yaml"]
    r = subprocess.run(["git", "check-ignore", "--no-index", *paths], cwd=ROOT, capture_output=True, text=True)
    assert sorted(r.stdout.split()) == sorted(paths)
