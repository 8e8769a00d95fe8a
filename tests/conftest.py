"""Shared fixtures: one tiny synthetic cohort pushed through the data steps once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

ROOT = Path(__file__).resolve().parents[1]


def mount_tmpfs(mnt: Path, opts: str):
    """Mount a tmpfs with ``opts`` (e.g. ``size=3m`` or ``size=1m,ro``) at the new directory ``mnt``
    for a fixture to yield; skips where mounting needs root and we are not (CI runs as root)."""
    import shutil
    import subprocess

    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.fixture(scope="session")
def tiny_cfg():
    from vce.config import load_config

    return load_config(ROOT / "params.yaml", "tiny")


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory, tiny_cfg) -> Path:
    from vce import steps

    out = tmp_path_factory.mktemp("cohort") / "raw"
    steps.synth(out, tiny_cfg, workers=2)
    return out


@pytest.fixture(scope="session")
def tiny_registered(tmp_path_factory, tiny_cfg, tiny_cohort) -> Path:
    from vce import steps

    out = tmp_path_factory.mktemp("reg") / "registered"
    steps.register(tiny_cohort, out, tiny_cfg, workers=2)
    return out


@pytest.fixture(scope="session")
def tiny_split(tmp_path_factory, tiny_cfg, tiny_registered) -> Path:
    from vce import steps

    out = tmp_path_factory.mktemp("split") / "split"
    steps.split(tiny_registered, out, tiny_cfg)
    return out


@pytest.fixture(scope="session")
def tiny_normalized(tmp_path_factory, tiny_cfg, tiny_split) -> Path:
    from vce import steps

    out = tmp_path_factory.mktemp("norm") / "normalized"
    steps.normalize(tiny_split, out, tiny_cfg)
    return out
