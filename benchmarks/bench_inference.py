"""Inference speed of the PGMGVCE generator (paper profile width), fp32 CPU, 2 threads.

(a) slices/s: a batch of 192x192 two-modality slices through the generator in eval mode under
    ``torch.no_grad`` (median of timed batches after a warm-up), with the achieved GFLOP/s and
    its ratio to the convolution peak measured in the same process.
(b) one whole volume (the paper profile's 44 slices of 192x192) through the project's own
    inference path, :func:`vce.inference.synthesize_t1c` (normalisation, square slicing,
    batched generator, inverse normalisation, clipping), as ``vce evaluate`` / ``vce predict``
    use it; the generator has random weights (speed does not depend on them). Reported: wall
    seconds per volume, and the share of it spent outside the generator (overhead ratio).

Short mode: 96x96 slices and an 11-slice 96x96 volume.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import PEAK_SHAPES, conv_peak, conv_step, count_flops, gflops, set_threads, time_interleaved  # noqa: E402

from vce.config import load_config  # noqa: E402
from vce.inference import input_statistics, run_generator, synthesize_t1c  # noqa: E402
from vce.models.factory import build_generator, output_for  # noqa: E402
from vce.models.checkpoint import generator_arch  # noqa: E402

VARIANT = {"model": "pgmgvce", "normalization": "sigmoid", "modalities": ["T1", "T2"]}


def phantom_volume(n_slices: int, size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """T1/T2 (z, y, x) float32 scanner-unit volumes: a noisy ellipsoidal 'head' on zero background."""
    rng = np.random.default_rng(seed)
    z, yy, xx = np.meshgrid(np.linspace(-1, 1, n_slices), np.linspace(-1, 1, size), np.linspace(-1, 1, size), indexing="ij")
    head = (xx / 0.8) ** 2 + (yy / 0.9) ** 2 + (z / 1.3) ** 2 < 1.0
    out = {}
    for m, level in (("T1", 800.0), ("T2", 1200.0)):
        vol = head * (level + 150.0 * np.sin(6 * xx) * np.cos(5 * yy)) + rng.normal(0, 20.0, head.shape)
        out[m] = np.abs(vol).astype(np.float32)
    return out


def run(short: bool, *, image_size: int | None = None, n_slices: int | None = None, batch: int = 16,
        base: int | None = None, repeats: int | None = None) -> dict[str, Any]:  # fmt: skip
    """Measure (a) and (b); keyword arguments override the sizes (the tests use tiny ones)."""
    threads = set_threads()
    paper = load_config(profile="paper")
    base = paper.train.base_channels if base is None else base
    size = image_size or (96 if short else paper.split.image_size)
    n_slices = n_slices or (11 if short else paper.synth.n_slices)
    repeats = repeats or 3
    torch.manual_seed(0)
    arch = generator_arch("pgmgvce", paper.train)  # the paper profile's depth
    G = build_generator("pgmgvce", 2, base, output_for(VARIANT["normalization"]), **arch).eval()

    # (a) generator throughput on one batch
    x = torch.rand(batch, 2, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        flops = count_flops(lambda: G(x))
    peak = conv_peak(repeats=3 if short else 5, backward=False)
    peak_step, peak_flops = conv_step(*PEAK_SHAPES[0], backward=False)
    with torch.no_grad():
        tt = time_interleaved({"generator": lambda: G(x), "conv_peak": peak_step}, repeats, warmup=1)
    t = tt["generator"]
    # the peak also measured between the batches (same load); the best of both is used
    peak["interleaved_gflops_per_s"] = gflops(peak_flops, tt["conv_peak"]["min_s"])
    peak["standalone_gflops_per_s"] = peak["gflops_per_s"]
    peak["gflops_per_s"] = max(peak["gflops_per_s"], peak["interleaved_gflops_per_s"])
    rate = gflops(flops, t["median_s"])
    throughput = {
        "batch": batch,
        "s_per_batch": t["median_s"],
        "s_per_batch_min": t["min_s"],
        "slices_per_s": batch / t["median_s"],
        "flops_per_slice": flops / batch,
        "gflops_per_s": rate,
        "fraction_of_conv_peak": rate / peak["gflops_per_s"],
    }

    # (b) one volume through vce.inference.synthesize_t1c
    vols = phantom_volume(n_slices, size)
    stats = input_statistics(vols, size, paper.split.min_body_fraction)
    gen_inputs = np.random.default_rng(0).random((n_slices, 2, size, size), dtype=np.float32)

    def whole_volume() -> np.ndarray:
        return synthesize_t1c(G, VARIANT, vols, stats, (1000.0, 200.0), size, batch_size=batch)

    pred = whole_volume()
    if pred.shape != vols["T2"].shape:
        raise RuntimeError(f"synthesize_t1c returned {pred.shape}, expected {vols['T2'].shape}")
    tt = time_interleaved({"volume": whole_volume, "generator": lambda: run_generator(G, gen_inputs, batch)},
                          max(1, repeats - 1), warmup=0)  # fmt: skip
    tv, tg = tt["volume"], tt["generator"]
    volume = {
        "path": "vce.inference.synthesize_t1c (random-weight generator)",
        "shape_zyx": list(pred.shape),
        "s_per_volume": tv["median_s"],
        "generator_only_s": tg["median_s"],
        "overhead_fraction": max(0.0, 1.0 - tg["median_s"] / tv["median_s"]),
        "slices_per_s": n_slices / tv["median_s"],
    }
    return {
        "setting": {"image_size": size, "n_slices": n_slices, "base_channels": base, "threads": threads,
                    "dtype": "float32", "device": "cpu", "torch": torch.__version__, "short": short},
        "conv_peak_forward": peak,
        "generator_batch": throughput,
        "volume": volume,
        "ratios": {
            "generator_fraction_of_fwd_conv_peak": throughput["fraction_of_conv_peak"],
            "volume_time_outside_generator_fraction": volume["overhead_fraction"],
        },
        "summary": (
            f"{size}px: {throughput['slices_per_s']:.1f} slices/s ({rate:.0f} GFLOP/s, "
            f"{throughput['fraction_of_conv_peak']:.0%} of fwd conv peak); volume {n_slices}x{size}x{size} "
            f"{volume['s_per_volume']:.2f} s via synthesize_t1c ({volume['overhead_fraction']:.0%} outside the generator)"
        ),
    }


if __name__ == "__main__":
    import json

    print(json.dumps(run("--short" in sys.argv), indent=2))
