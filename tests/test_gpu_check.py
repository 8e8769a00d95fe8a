"""``benchmarks/gpu_check.py`` (``make gpu-check``) at its CPU size: the script CI runs without a GPU.

One run of the script (``--size tiny --device cpu``, 2 patients, 2 s of training per model, the
compiled mode limited to 15 s: cold, torch.compile on 2 cores takes longer and is then recorded
as an error) takes about a minute; the tests read its outputs.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
MODES = ("fp32", "bf16", "compiled")
MODELS = ("pgmgvce_main", "baseline_mmgsn")


@pytest.fixture(scope="module")
def gpu_check(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("gpu_check") / "out"
    cmd = [sys.executable, str(SCRIPT), "--size", "tiny", "--device", "cpu", "--out", str(out),
           "--patients", "2", "--budget-s", "2", "--compile-timeout-s", "15"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    return out, proc


@pytest.fixture(scope="module")
def result(gpu_check) -> dict:
    out, proc = gpu_check
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((out / "gpu_check.json").read_text())


def test_machine_and_settings(result):
    assert result["size"] == "tiny" and result["device"] == "cpu" and result["ok"] is True
    m = result["machine"]
    assert m["cpu_count"] >= 1 and m["torch"] and m["cuda_available"] in (True, False)
    assert "gpu" not in m  # CPU run: no card recorded
    st = result["timing"]["setting"]
    assert (st["image_size"], st["base_channels"], st["profile"]) == (48, 4, "tiny")
    assert result["total_wall_s"] > 0 and set(result["phases_s"]) == {"machine", "timing", "data", "training"}


def test_modes_timed_or_error_recorded(result):
    from vce.config import load_config

    paper_its = load_config(ROOT / "params.yaml", profile="paper").train.iterations
    modes = result["timing"]["modes"]
    assert set(modes) == set(MODES)
    for mode in MODES:
        for name in MODELS:
            r = modes[mode][name]
            if mode == "fp32":
                assert r["status"] == "ok", r  # the CPU path itself must work
            if r["status"] == "ok":
                assert r["iterations_per_s"] > 0 and r["timed_iterations"] >= 1
                assert r["projected_iterations"] == paper_its
                assert math.isclose(r["projected_s"], paper_its / r["iterations_per_s"], rel_tol=1e-9)
                assert math.isclose(r["s_per_iteration"] * r["iterations_per_s"], 1.0, rel_tol=1e-9)
                assert r["losses_finite"] and r["s_per_iteration_min"] <= r["s_per_iteration"] <= r["s_per_iteration_max"]
            else:
                assert r["status"] == "error" and isinstance(r["error"], str) and r["error"], r
    assert modes["compiled"]["pgmgvce_main"]["status"] == "error" or modes["compiled"]["pgmgvce_main"]["generator_compiled"]
    assert modes["fp32"]["pgmgvce_main"]["generator_compiled"] is False


def test_trainings_ran_with_finite_losses(result):
    for name in MODELS:
        r = result["training"][name]
        assert r["status"] == "ok", r
        assert r["iterations"] > 0 and r["iterations_per_s"] > 0 and r["wall_time_s"] > 0
        assert r["device"] == "cpu" and r["image_size"] == 48
        assert r["losses_finite"] and all(math.isfinite(float(v)) for v in r["final_losses"].values())
        assert set(r["final_losses"]) >= {"loss_d", "loss_g", "loss_pg", "loss_l1"}
    d = result["data"]
    assert d["patients"]["train"] >= 1 and d["slices"]["train"] >= 1


def test_markdown_and_cleanup(gpu_check, result):
    out, _ = gpu_check
    md = (out / "gpu_check.md").read_text()
    assert "| model | mode | s/it |" in md and "| variant | iterations |" in md
    for name in MODELS:
        assert md.count(f"| {name} |") == len(MODES) + 1  # three timing rows + one training row
    assert not (out / "work").exists()  # the cohort and runs are removed after a successful run
    assert not list(out.glob(".*tmp*"))  # atomic writes left no temporaries


def test_helpers():
    sys.path.insert(0, str(SCRIPT.parent))
    import gpu_check as g

    assert g.fmt_duration(42.04) == "42.0 s"
    assert g.fmt_duration(539.6) == "9 min 0 s"  # rounded once: never "8 min 60 s"
    assert g.fmt_duration(14000 * 0.57) == "2 h 13 min"
    assert g.fmt_duration(None) == "-"
    assert g.plan_iterations(20.0, 60.0, None, 14000) == 1200
    assert g.plan_iterations(1e6, 60.0, None, 14000) == 14000
    assert g.plan_iterations(0.01, 60.0, None, 14000) == 2
    assert g.plan_iterations(None, 60.0, None, 14000) == 10
    assert g.plan_iterations(20.0, 60.0, 7, 14000) == 7
