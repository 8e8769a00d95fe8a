"""Faults during the data and training steps, run as a user runs them (the ``vce`` CLI in its own process).

* ``kill -9`` while a step writes, then a rerun: the same outputs as an uninterrupted run, no
  process of the killed step left, no temporary sibling left behind.
* A disk that fills up (a small tmpfs) and a read-only output: exit 2, one line naming the path,
  no traceback, nothing half-written.

The tmpfs and read-only cases mount filesystems and need root (CI runs as root); elsewhere they skip.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from conftest import ROOT, mount_tmpfs

VCE = [sys.executable, "-m", "vce.cli"]
DEBRIS = (".tmp-", ".old-")


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src")}


def _vce(*argv: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*VCE, *argv, "--profile", "tiny"], capture_output=True, text=True, timeout=timeout,
                          env=_env(), cwd=ROOT)


TIMINGS = {"seconds"}  # wall-clock fields in QC files: how long, not what


def _tree(root: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``root``: PNG figures and logs excluded (they
    embed timings and library versions, not results), JSON and CSV compared without their timing fields."""
    out = {}
    for p in sorted(root.rglob("*")):
        if not p.is_file() or p.suffix in (".png", ".log"):
            continue
        data = p.read_bytes()
        if p.suffix == ".json":
            data = json.dumps(_drop(json.loads(data), TIMINGS), sort_keys=True).encode()
        elif p.suffix == ".csv":
            import pandas as pd

            t = pd.read_csv(p)
            data = t.drop(columns=[c for c in t.columns if c in TIMINGS]).to_csv(index=False).encode()
        out[str(p.relative_to(root))] = hashlib.sha256(data).hexdigest()
    return out


def _drop(obj, keys: set[str]):
    if isinstance(obj, dict):
        return {k: _drop(v, keys) for k, v in obj.items() if k not in keys}
    if isinstance(obj, list):
        return [_drop(v, keys) for v in obj]
    return obj


def _debris(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.rglob(".*") if any(d in p.name for d in DEBRIS))


def _kill_when(cmd: list[str], ready, timeout: float = 120) -> list[psutil.Process]:
    """Start ``cmd``, wait until ``ready()`` is true, ``kill -9`` the main process only (as a user
    would), and return its descendants as they were at that moment."""
    proc = subprocess.Popen(cmd, env=_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    try:
        while not ready():
            if proc.poll() is not None:
                pytest.fail(f"step finished (rc {proc.returncode}) before it could be killed: {cmd}")
            if time.time() - t0 > timeout:
                pytest.fail(f"step never reached the kill point in {timeout} s: {cmd}")
            time.sleep(0.01)
        children = psutil.Process(proc.pid).children(recursive=True)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    return children


def _assert_no_survivors(children: list[psutil.Process], grace: float = 15.0) -> None:
    deadline = time.time() + grace
    alive = children
    while alive and time.time() < deadline:
        alive = [c for c in alive if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
        time.sleep(0.2)
    assert not alive, f"processes of the killed step still running: {[c.cmdline()[:4] for c in alive]}"


def _has_temp(parent: Path, name: str):
    return lambda: any(p.name.startswith(f".{name}.tmp-") for p in parent.iterdir()) if parent.exists() else False


STEPS = {
    # step: (argv builder(inputs, out), output name)
    "register": lambda f, out: ["register", "--raw", str(f["raw"]), "--out", str(out), "--workers", "2"],
    "split": lambda f, out: ["split", "--registered", str(f["registered"]), "--out", str(out)],
    "normalize": lambda f, out: ["normalize", "--split", str(f["split"]), "--out", str(out)],
}


@pytest.fixture(scope="module")
def inputs(tiny_cohort, tiny_registered, tiny_split, tiny_normalized) -> dict[str, Path]:
    return {"raw": tiny_cohort, "registered": tiny_registered, "split": tiny_split, "normalized": tiny_normalized}


REFERENCE = {"register": "registered", "split": "split", "normalize": "normalized"}  # the uninterrupted run


@pytest.mark.slow
@pytest.mark.parametrize("step", sorted(STEPS))
def test_kill_9_during_a_step_then_rerun(tmp_path, inputs, step):
    ref = inputs[REFERENCE[step]]  # the same step on the same input, uninterrupted (conftest)
    out = tmp_path / "killed" / step
    out.parent.mkdir()
    children = _kill_when([*VCE, *STEPS[step](inputs, out), "--profile", "tiny"], _has_temp(out.parent, out.name))
    assert not out.exists(), "a killed step left its output in place"
    _assert_no_survivors(children)
    r = _vce(*STEPS[step](inputs, out))
    assert r.returncode == 0, r.stderr
    assert _tree(out) == _tree(ref)
    assert _debris(out.parent) == [], "the rerun left the killed run's temporary siblings"


@pytest.mark.slow
def test_kill_9_during_training_then_resume(tmp_path, inputs):
    """Killed after a resumable state was written; ``--resume`` ends with the weights of an uninterrupted run."""
    import torch

    args = ["train", "--variant", "pgmgvce_main", "--normalized", str(inputs["normalized"]), "--no-tracking",
            "--device", "cpu"]
    params = tmp_path / "params.yaml"  # more iterations and a state every 2, so there is something to kill
    text = (ROOT / "params.yaml").read_text()
    params.write_text(text.replace("      iterations: 4\n      batch_size: 2", "      iterations: 40\n      batch_size: 2")
                      .replace("      checkpoint_every: 0", "      checkpoint_every: 2"))
    ref, out = tmp_path / "ref", tmp_path / "run"
    r = _vce(*args, "--out", str(ref), "--params", str(params))
    assert r.returncode == 0, r.stderr
    state = Path(f"{out}.partial") / "last.pt"
    children = _kill_when([*VCE, *args, "--out", str(out), "--params", str(params), "--profile", "tiny"],
                          lambda: state.is_file())
    assert not out.exists()
    _assert_no_survivors(children)
    r = _vce(*args, "--out", str(out), "--params", str(params), "--resume")
    assert r.returncode == 0, r.stderr
    a = torch.load(ref / "checkpoint.pt", weights_only=True)["generator"]
    b = torch.load(out / "checkpoint.pt", weights_only=True)["generator"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _debris(tmp_path) == []


# --- full disk and read-only output ---------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path) -> Iterator[Path]:
    """A 3 MiB tmpfs: room to start a step, not to finish it."""
    yield from mount_tmpfs(tmp_path / "small", "size=3m")


@pytest.fixture
def read_only(tmp_path) -> Iterator[Path]:
    yield from mount_tmpfs(tmp_path / "ro", "size=1m,ro")




FULL_DISK_STEPS = {
    **STEPS,
    "train": lambda f, out: ["train", "--variant", "pgmgvce_main", "--normalized", str(f["normalized"]), "--out",
                             str(out), "--no-tracking", "--device", "cpu"],
}


def _assert_clean_failure(r: subprocess.CompletedProcess, root: Path, needle: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    errors = [ln for ln in r.stderr.splitlines() if ": error: " in ln]
    assert len(errors) == 1 and str(root) in errors[0] and needle in errors[0].lower(), r.stderr[-2000:]
    assert _debris(root) == [], "temporary siblings left on the full disk"


@pytest.mark.parametrize("step", sorted(STEPS) + ["train"])
def test_full_disk(small_disk, inputs, step):
    fill = small_disk / "filler"
    free = shutil.disk_usage(small_disk).free
    fill.write_bytes(b"\0" * max(0, free - 256 * 1024))  # leave 256 KiB: every step needs more
    out = small_disk / step
    r = _vce(*FULL_DISK_STEPS[step](inputs, out))
    _assert_clean_failure(r, small_disk, "space")
    assert not out.exists()


@pytest.mark.parametrize("step", sorted(STEPS) + ["train"])
def test_read_only_output(read_only, inputs, step):
    out = read_only / step
    r = _vce(*FULL_DISK_STEPS[step](inputs, out))
    _assert_clean_failure(r, read_only, "read-only")
