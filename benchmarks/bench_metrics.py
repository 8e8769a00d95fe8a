"""Scoring a test set (issue 9): the per-slice loop vs :mod:`vce.metrics.batched`, numpy on one thread.

(a) the reference: a Python loop over the slices calling :func:`vce.metrics.similarity.ssim`
    (skimage), ``mae``, ``mse`` and :func:`vce.metrics.texture.texture_metrics` of pred and gt,
    as the evaluation did per slice (``vce.metrics.slice_metrics``);
(b) the same whole-slice values from the batched functions (``mae``, ``mse``, ``ssim``,
    ``texture`` of pred and gt), each call on the whole stack.

Both run alternately in the same process (``time_interleaved``); the values must agree to 1e-9
(relative above 1, absolute below) or the benchmark fails. Ratio: ``loop_over_batched``, target
>= 10 (``meets_target``; timings never fail the run). Also measured, as the alternative the
issue names: the four SSIM box filters with torch ``conv2d`` (float64, separable 1x7 then 7x1,
one thread) against the batched numpy box sums on the same slices (``torch_box_over_numpy_box``).

Data: ``n`` random smooth "heads" of 192x192 in scanner units (an elliptical body of smoothed
noise around 1000, air 0) and a prediction = 0.9 gt + 60 + noise. Full: 449 slices (a test
split of the paper's size), 3 timed repeats. Short: 48 slices, 2 repeats.
Run: ``python benchmarks/bench_metrics.py [--short]`` or ``python benchmarks/run.py --only metrics``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import time_interleaved  # noqa: E402

from vce.metrics import batched  # noqa: E402
from vce.metrics.similarity import DATA_RANGE, mae, mse, ssim  # noqa: E402
from vce.metrics.texture import TEXTURE_KEYS, texture_metrics  # noqa: E402

TARGET = 10.0
TOLERANCE = 1e-9
KEYS = ("mae", "mse", "ssim", *TEXTURE_KEYS, *(f"gt_{k}" for k in TEXTURE_KEYS))


def phantom_stack(n: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(pred, gt, body)``: ``(n, size, size)`` float64 scanner units and the bool body mask."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size] / size - 0.5
    body = np.broadcast_to((y / 0.42) ** 2 + (x / 0.36) ** 2 < 1, (n, size, size))
    texture = ndimage.gaussian_filter(rng.normal(size=(n, size, size)), (0, 3, 3))
    gt = np.where(body, 1000.0 + 2500.0 * texture, 0.0).clip(0, DATA_RANGE)
    pred = (0.9 * gt + 60.0 + rng.normal(0.0, 40.0, gt.shape)).clip(0, DATA_RANGE)
    return pred, gt, body.copy()


def loop_metrics(pred: np.ndarray, gt: np.ndarray) -> dict[str, np.ndarray]:
    """The reference: the per-slice functions in a loop over the slices."""
    rows = []
    for p, g in zip(pred, gt):
        row = {"mae": mae(p, g), "mse": mse(p, g), "ssim": ssim(p, g, DATA_RANGE)}
        row.update(texture_metrics(p, DATA_RANGE))
        row.update({f"gt_{k}": v for k, v in texture_metrics(g, DATA_RANGE).items()})
        rows.append(row)
    return {k: np.array([r[k] for r in rows]) for k in KEYS}


def batched_metrics(pred: np.ndarray, gt: np.ndarray) -> dict[str, np.ndarray]:
    """The same whole-slice values from :mod:`vce.metrics.batched`."""
    out = {"mae": batched.mae(pred, gt), "mse": batched.mse(pred, gt), "ssim": batched.ssim(pred, gt, DATA_RANGE)}
    out.update(batched.texture(pred, DATA_RANGE))
    out.update({f"gt_{k}": v for k, v in batched.texture(gt, DATA_RANGE).items()})
    return out


def differences(ref: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> dict[str, float]:
    """Per key, the largest ``|got - ref| / max(1, |ref|)`` (relative above 1, absolute below)."""
    return {k: float(np.max(np.abs(got[k] - ref[k]) / np.maximum(1.0, np.abs(ref[k])))) for k in KEYS}


def _numpy_box(q: np.ndarray, ws: Any) -> np.ndarray:
    """Valid 7x7 window sums of a ``(nb, h, w)`` block by the batched kernels: ``(nb, h-6, w-6)`` view."""
    nb, h, w = q.shape
    out = ws("box", q.size)
    batched._box_sum(q.reshape(-1), 7, w, out[: q.size - 6 * (w + 1)], ws)
    return batched._grid(out, q.shape, h - 6, w - 6)


def box_filters_torch_vs_numpy(pred: np.ndarray, gt: np.ndarray, repeats: int) -> dict[str, Any]:
    """The four SSIM window sums (x, y, x^2 + y^2, xy) by torch conv2d vs the batched numpy sums."""
    n, h, w = pred.shape
    quantities = np.stack([pred, gt, pred * pred + gt * gt, pred * gt])  # (4, n, h, w)
    qt = torch.from_numpy(quantities.reshape(4 * n, 1, h, w))
    row, col = torch.ones(1, 1, 1, 7, dtype=torch.float64), torch.ones(1, 1, 7, 1, dtype=torch.float64)
    ws = batched._Workspace(batched._block_slices(pred.shape), h, w)

    def by_torch() -> torch.Tensor:
        return F.conv2d(F.conv2d(qt, row), col)

    def by_numpy() -> None:
        for q in quantities:
            for b in batched._blocks(pred.shape):
                _numpy_box(q[b], ws)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        t = time_interleaved({"torch": by_torch, "numpy": by_numpy}, repeats)
        first = next(batched._blocks(pred.shape))
        ref = by_torch().numpy().reshape(4, n, h - 6, w - 6)[3, first]
    finally:
        torch.set_num_threads(threads)
    agree = np.allclose(_numpy_box(quantities[3, first], ws), ref, rtol=1e-12)
    return {"slices": n, "threads": 1, "torch_s": t["torch"]["median_s"], "numpy_s": t["numpy"]["median_s"],
            "values_agree": bool(agree), "torch_over_numpy": t["torch"]["median_s"] / t["numpy"]["median_s"]}  # fmt: skip


def run(short: bool, *, n_slices: int | None = None, size: int = 192, repeats: int | None = None) -> dict[str, Any]:
    """Measure (a) vs (b) and the box-filter alternative; keyword arguments override the sizes (tests)."""
    n = n_slices or (48 if short else 449)
    repeats = repeats or (2 if short else 3)
    pred, gt, _ = phantom_stack(n, size)
    diffs = differences(loop_metrics(pred, gt), batched_metrics(pred, gt))
    worst = max(diffs, key=diffs.get)
    if diffs[worst] > TOLERANCE:
        raise RuntimeError(f"batched {worst} differs from the per-slice value by {diffs[worst]:.3g} (> {TOLERANCE})")
    t = time_interleaved({"loop": lambda: loop_metrics(pred, gt), "batched": lambda: batched_metrics(pred, gt)}, repeats)
    ratio = t["loop"]["median_s"] / t["batched"]["median_s"]
    box = box_filters_torch_vs_numpy(pred[: min(n, 32)], gt[: min(n, 32)], repeats)
    return {
        "setting": {"n_slices": n, "size": size, "repeats": repeats, "dtype": "float64", "numpy_threads": 1,
                    "block_pixels": batched.BLOCK_PIXELS, "short": short},  # fmt: skip
        "loop": {**t["loop"], "ms_per_slice": 1e3 * t["loop"]["median_s"] / n},
        "batched": {**t["batched"], "ms_per_slice": 1e3 * t["batched"]["median_s"] / n},
        "max_difference": diffs,
        "values_equal": True,
        "box_filters": box,
        "target_loop_over_batched": TARGET,
        "meets_target": bool(ratio >= TARGET),
        "ratios": {"loop_over_batched": ratio, "torch_box_over_numpy_box": box["torch_over_numpy"]},
        "summary": (
            f"{n} slices {size}x{size}: loop {t['loop']['median_s']:.2f} s, batched {t['batched']['median_s']:.2f} s "
            f"= x{ratio:.1f} (target x{TARGET:.0f}: {'met' if ratio >= TARGET else 'NOT met'}); values within "
            f"{diffs[worst]:.1g}; torch conv2d box filters x{box['torch_over_numpy']:.1f} the numpy time"
        ),
    }


if __name__ == "__main__":
    import json

    print(json.dumps(run("--short" in sys.argv), indent=2))
