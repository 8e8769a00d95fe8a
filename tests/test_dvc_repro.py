"""DVC reproduces the study from a clean clone: same split, bit for bit; a second repro does nothing.

Slow (it runs every stage, every variant trained, at the tiny profile twice): `pytest -m slow`.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT

pytestmark = pytest.mark.slow


def _env():
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    env["DVC_NO_ANALYTICS"] = "1"
    return env


def _clone(dest: Path) -> Path:
    subprocess.run(["git", "clone", "-q", str(ROOT), str(dest)], check=True)
    params = dest / "params.yaml"
    params.write_text(params.read_text().replace("profile: demo", "profile: tiny", 1))
    return dest


def _run(cwd: Path, *cmd: str) -> str:
    r = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True)
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout}\n{r.stderr}"
    return r.stdout + r.stderr


def _lock_md5(repo: Path, stage: str) -> str:
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return lock["stages"][stage]["outs"][0]["md5"]


def test_dvc_repro_is_exact_and_idempotent(tmp_path):
    repos = []
    for name in ("a", "b"):
        repo = _clone(tmp_path / name)
        _run(repo, "vce", "synth", "--out", "data", "--profile", "tiny")
        _run(repo, "dvc", "repro")
        repos.append(repo)
    a, b = repos
    assert _lock_md5(a, "split") == _lock_md5(b, "split")
    assert (a / "outputs/split/split.json").read_text() == (b / "outputs/split/split.json").read_text()
    assert (a / "outputs/report/summary.md").is_file() and (a / "outputs/report/report.html").is_file()
    shown = _run(a, "dvc", "metrics", "show")  # the metrics: section of dvc.yaml
    assert "outputs/report/metrics.json" in shown and "mae_body" in shown
    out = _run(a, "dvc", "repro")
    assert "up to date" in out.lower()
    status = _run(a, "dvc", "status")
    assert "changed" not in status
