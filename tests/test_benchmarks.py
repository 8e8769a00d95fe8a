"""Benchmarks suite: the runner's results schema and the benchmark helpers at tiny sizes (no timing asserts)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))

import _common  # noqa: E402
import bench_data  # noqa: E402
import bench_inference  # noqa: E402
import bench_metrics  # noqa: E402
import bench_train  # noqa: E402
import run as bench_run  # noqa: E402
from pix2pix_reference import NLayerDiscriminator, UnetGenerator  # noqa: E402

TINY_PEAK = ((1, 8, 16),)


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_discover_finds_the_suite():
    names = bench_run.discover()
    assert {"train", "inference", "data", "metrics"} <= set(names)


def test_runner_writes_schema_and_fails_on_error(tmp_path):
    bdir = tmp_path / "b"
    bdir.mkdir()
    (bdir / "bench_ok.py").write_text(
        "def run(short):\n    return {'summary': 'fine', 'short': short, 'ratios': {'a_over_b': 0.5}, 'bad': float('nan')}\n"
    )
    (bdir / "bench_broken.py").write_text("def run(short):\n    raise ValueError('boom in the benchmark')\n")
    out = tmp_path / "out"
    cmd = [sys.executable, str(BENCH / "run.py"), "--short", "--bench-dir", str(bdir), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    res = json.loads((out / "results.json").read_text())
    assert res["schema_version"] == bench_run.SCHEMA_VERSION and res["short"] is True
    assert {"created", "machine", "benchmarks"} <= set(res)
    assert set(res["benchmarks"]) == {"ok", "broken"}
    ok, bad = res["benchmarks"]["ok"], res["benchmarks"]["broken"]
    assert ok["status"] == "ok" and ok["error"] is None
    assert ok["result"] == {"summary": "fine", "short": True, "ratios": {"a_over_b": 0.5}, "bad": None}
    assert ok["wall_s"] >= 0 and ok["peak_rss_mib"] > 0
    assert bad["status"] == "error" and bad["result"] is None and "boom in the benchmark" in bad["error"]
    md = (out / "results.md").read_text()
    assert "| ok | ok |" in md and "| broken | error |" in md and "| a_over_b | 0.5 |" in md

    only = subprocess.run(cmd + ["--only", "ok"], capture_output=True, text=True, cwd=ROOT)
    assert only.returncode == 0, only.stdout + only.stderr
    assert set(json.loads((out / "results.json").read_text())["benchmarks"]) == {"ok"}
    unknown = subprocess.run(cmd + ["--only", "nope"], capture_output=True, text=True, cwd=ROOT)
    assert unknown.returncode == 2


def test_count_flops_matches_conv_formula():
    x = torch.randn(2, 3, 10, 10, requires_grad=True)
    w = torch.randn(5, 3, 3, 3, requires_grad=True)
    fwd = 2 * 2 * 5 * 8 * 8 * 3 * 3 * 3  # 2 * N * Cout * Ho * Wo * Cin * k * k (no padding)
    assert _common.count_flops(lambda: torch.nn.functional.conv2d(x, w)) == fwd
    # backward: input gradient + weight gradient, each as costly as the forward
    assert _common.count_flops(lambda: torch.nn.functional.conv2d(x, w).sum().backward()) == 3 * fwd


def test_meta_flop_count_equals_real_count():
    torch.manual_seed(0)
    x, y = bench_train._inputs(2, 32)
    step = bench_train.pgmgvce_step(4, 32)  # the trainer's GanStep, on the CPU
    real = _common.count_flops(lambda: step.step(x, y))
    assert real > 0 and real == bench_train.pgmgvce_flops(4, 32, 2)
    from pix2pix_reference import Pix2Pix, pix2pix_iteration

    p = Pix2Pix(2, 1, 5, 8, 8)
    assert _common.count_flops(lambda: pix2pix_iteration(p, x, y)) == bench_train.pix2pix_flops(8, 32, 2, ndf=8, num_downs=5)


def test_choose_ngf_is_the_brute_force_minimiser():
    target = bench_train.pgmgvce_flops(8, 64, 2)
    ngf, flops = bench_train.choose_ngf(target, 64, 2, ndf=16, num_downs=6)
    counts = {n: bench_train.pix2pix_flops(n, 64, 2, ndf=16, num_downs=6) for n in bench_train.NGF_CANDIDATES}
    assert flops == counts[ngf]
    assert abs(flops - target) == min(abs(c - target) for c in counts.values())


def test_pix2pix_reference_shapes():
    G = UnetGenerator(2, 1, num_downs=6, ngf=4).eval()
    out = G(torch.randn(1, 2, 64, 64))
    assert out.shape == (1, 1, 64, 64) and out.abs().max() < 1
    D = NLayerDiscriminator(3, ndf=4)
    assert D(torch.randn(1, 3, 192, 192)).shape == (1, 1, 22, 22)  # 192/8 - 2: the 70x70 PatchGAN


def test_bench_train_tiny(monkeypatch):
    monkeypatch.setattr(bench_train, "conv_peak", lambda repeats: _common.conv_peak(1, shapes=TINY_PEAK))
    monkeypatch.setattr(bench_train, "PEAK_SHAPES", TINY_PEAK)
    res = bench_train.run(True, image_size=32, batch=2, base=4, num_downs=5, ndf=8, repeats=1)
    json.dumps(res)
    assert res["setting"]["image_size"] == 32 and res["setting"]["threads"] == 2
    for k in ("pgmgvce", "pix2pix"):
        r = res[k]
        assert r["flops_per_iteration"] > 0 and r["s_per_iteration"] > 0 and r["timed_iterations"] == 1
        assert r["gflops_per_s"] == pytest.approx(r["flops_per_iteration"] / r["s_per_iteration"] / 1e9)
    assert res["pix2pix"]["ngf"] in bench_train.NGF_CANDIDATES
    assert res["ratios"]["flops_ours_over_pix2pix"] == pytest.approx(
        res["pgmgvce"]["flops_per_iteration"] / res["pix2pix"]["flops_per_iteration"]
    )


def test_bench_inference_tiny(monkeypatch):
    monkeypatch.setattr(bench_inference, "conv_peak", lambda repeats, backward: _common.conv_peak(1, backward, TINY_PEAK))
    monkeypatch.setattr(bench_inference, "PEAK_SHAPES", TINY_PEAK)
    res = bench_inference.run(True, image_size=32, n_slices=4, batch=2, base=4, repeats=1)
    json.dumps(res)
    assert res["volume"]["shape_zyx"] == [4, 32, 32]
    peak = res["conv_peak_forward"]
    assert peak["gflops_per_s"] == max(peak["standalone_gflops_per_s"], peak["interleaved_gflops_per_s"])
    assert res["generator_batch"]["slices_per_s"] > 0 and 0 <= res["volume"]["overhead_fraction"] <= 1


def test_bench_data_memory_child_in_process(tmp_path):
    pids = bench_data.write_registered_cohort(tmp_path / "reg", 2, 8, 32)
    assert pids == ["p000", "p001"]
    res = bench_data.memory_child(tmp_path / "reg", tmp_path / "work", 32)
    assert res["patients"] == 2 and res["train_slices"] > 0
    assert res["store_mib"] > 0 and res["peak_anon_mib"] >= res["baseline_anon_mib"] > 0
    # the epoch read every training slice once: its checksum is the sum of the stored arrays
    from vce.training.data import SliceDataset

    data = SliceDataset(tmp_path / "work" / "normalized" / "sigmoid", "train", ("T1", "T2"))
    x, y = data.batch(np.arange(len(data)))
    assert res["checksum"] == pytest.approx(float(x.double().sum() + y.double().sum()), rel=1e-4)
    # the read is timed against the trainer's own step on a batch of that store
    rv = bench_data.read_vs_step(tmp_path / "work" / "normalized" / "sigmoid", 32, reads=3, steps=1)
    assert rv["steps"] == 1 and rv["step_s"] > 0 and rv["read_over_step"] == rv["read_s"] / rv["step_s"]


def test_bench_metrics_tiny():
    res = bench_metrics.run(True, n_slices=3, size=24, repeats=1)
    json.dumps(res)
    assert res["setting"]["n_slices"] == 3 and res["values_equal"] is True
    assert set(res["max_difference"]) == set(bench_metrics.KEYS)
    assert max(res["max_difference"].values()) <= bench_metrics.TOLERANCE
    assert res["loop"]["median_s"] > 0 and res["batched"]["median_s"] > 0
    assert res["ratios"]["loop_over_batched"] == pytest.approx(res["loop"]["median_s"] / res["batched"]["median_s"])
    assert res["meets_target"] == (res["ratios"]["loop_over_batched"] >= bench_metrics.TARGET)
    assert res["box_filters"]["values_agree"] is True


def test_bench_metrics_loop_and_batched_agree_on_the_phantom():
    pred, gt, body = bench_metrics.phantom_stack(2, 32)
    assert pred.shape == gt.shape == body.shape == (2, 32, 32) and body.dtype == bool
    assert 0 <= gt.min() and gt.max() <= 4095 and (gt[:, ~body[0]] == 0).all()
    diffs = bench_metrics.differences(bench_metrics.loop_metrics(pred, gt), bench_metrics.batched_metrics(pred, gt))
    assert max(diffs.values()) < 1e-12
