"""Shared helpers of the benchmarks: threads, timing, FLOP counting, the machine's convolution peak.

Benchmarks report RATIOS measured in one run (ours vs a reference, or vs the peak measured in
the same process), because the machines are shared and absolute times are noisy.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["THREADS", "TotalFlopCounter", "set_threads", "conv_step", "time_calls", "time_interleaved", "count_flops", "conv_peak", "gflops"]

THREADS = 2


def set_threads(n: int = THREADS) -> int:
    """Fix torch's intra-op threads to ``n`` (the benchmarks' reference setting); returns ``n``."""
    torch.set_num_threads(n)
    return torch.get_num_threads()


def time_calls(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Run ``fn`` ``warmup`` times untimed, then ``repeats`` times; seconds per call.

    Returns ``{"median_s", "min_s", "max_s", "repeats"}``.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "repeats": repeats}


class _GlobalOnly:
    """Stand-in for FlopCounterMode's ModuleTracker: every op is attributed to "Global" only.

    The tracker's autograd hooks raise "A leaf node was passed to _will_engine_execute_node" under
    ``torch.autograd.grad`` with respect to a leaf input, which the R1 penalty does; per-module
    tables are not needed here, only the total.
    """

    parents = frozenset({"Global"})

    def __enter__(self) -> "_GlobalOnly":
        return self

    def __exit__(self, *args: object) -> None:
        return None


class TotalFlopCounter(FlopCounterMode):
    """:class:`torch.utils.flop_counter.FlopCounterMode` counting the total only (works with R1's autograd.grad)."""

    def __init__(self) -> None:
        super().__init__(display=False)
        self.mod_tracker = _GlobalOnly()


def time_interleaved(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1) -> dict[str, dict[str, float]]:
    """Like :func:`time_calls` for several functions, alternating them call by call.

    On a shared machine the load drifts; alternating puts both sides of a ratio under the same
    load. Returns ``{name: {"median_s", "min_s", "max_s", "repeats"}}``.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {
        k: {"median_s": statistics.median(v), "min_s": min(v), "max_s": max(v), "repeats": repeats}
        for k, v in times.items()
    }


def count_flops(fn: Callable[[], Any]) -> int:
    """Floating-point operations (1 multiply-add = 2 FLOPs) that ``fn()`` performs in the ops
    ``torch.utils.flop_counter`` knows (convolutions, matmuls, their backward passes).

    Elementwise ops (norms, activations, optimiser updates) are not counted, so achieved
    GFLOP/s figures measure the conv/matmul work only. ``fn`` may run on the ``meta`` device
    (shapes only, no arithmetic), which gives the same count in milliseconds.
    """
    with TotalFlopCounter() as counter:
        fn()
    return int(counter.get_total_flops())


def gflops(flops: float, seconds: float) -> float:
    return flops / seconds / 1e9 if seconds > 0 else float("nan")


PEAK_SHAPES = ((8, 128, 64), (8, 64, 96))


def conv_step(n: int, c: int, s: int, backward: bool = True) -> tuple[Callable[[], None], int]:
    """A (n, c, s, s) * (c, c, 3, 3) stride-1 convolution (+ its input and weight gradients if
    ``backward``) as a callable, and its FLOPs."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, c, s, s, generator=gen).requires_grad_(backward)
    w = (torch.randn(c, c, 3, 3, generator=gen) * 0.05).requires_grad_(backward)

    def step() -> None:
        if backward:
            F.conv2d(x, w, padding=1).sum().backward()
            x.grad = None
            w.grad = None
        else:
            with torch.no_grad():
                F.conv2d(x, w, padding=1)

    return step, count_flops(step)


def conv_peak(repeats: int = 5, backward: bool = True, shapes: tuple[tuple[int, int, int], ...] = PEAK_SHAPES) -> dict[str, Any]:
    """This machine's achieved convolution throughput at the current thread count.

    Large, well-shaped 3x3 convolutions (fp32, NCHW, stride 1): (8, 128, 64, 64) * (128, 128, 3, 3)
    and (8, 64, 96, 96) * (64, 64, 3, 3), forward + backward (input and weight gradients).
    FLOPs come from :func:`count_flops`; the peak is the best (minimum-time) of ``repeats``
    runs of the best shape. ``shapes``: (batch, channels, size) triples (the tests use tiny ones). Returns ``{"gflops_per_s", "shape", "flops", "best_s", "per_shape"}``.
    """
    per_shape = {}
    for n, c, s in shapes:
        step, flops = conv_step(n, c, s, backward)
        t = time_calls(step, repeats, warmup=1)
        per_shape[f"{n}x{c}x{s}x{s}"] = {"flops": flops, "best_s": t["min_s"], "gflops_per_s": gflops(flops, t["min_s"])}
    best = max(per_shape, key=lambda k: per_shape[k]["gflops_per_s"])
    return {**per_shape[best], "shape": best, "backward": backward, "threads": torch.get_num_threads(), "per_shape": per_shape}
