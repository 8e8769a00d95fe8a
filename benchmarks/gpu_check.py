#!/usr/bin/env python
"""``make gpu-check``: the GPU path measured in one prepared script (issue 10 item 6).

Phases (each logged to stderr with its wall time):

1. **machine**: torch / CUDA / cuDNN versions, the card (name, memory, compute capability, SMs),
   the driver from ``nvidia-smi`` when it exists, CPUs.
2. **timing**: one training iteration of the trainer's own :class:`vce.training.step.GanStep`
   (one G forward, D step with LSGAN + R1, G step, loss report), built as
   :meth:`vce.training.trainer.GanTrainer.build` builds it, for the study's main variant
   (``pgmgvce_main``) and the MMgSN-Net baseline (``baseline_mmgsn``), at the chosen size's
   train settings (``--size paper``: the paper profile, 192x192, batch 4, ``base_channels`` 32),
   in three modes: ``fp32``, ``bf16`` (autocast, as ``train.amp: bf16``) and ``compiled``
   (``torch.compile`` of G, as ``train.compile: true``). Deterministic algorithms and the thread
   count are set as the trainer sets them, so the rate is what ``vce train`` gets. Median of N
   timed iterations after warm-up (``torch.cuda.synchronize`` around each on CUDA); it/s, the
   projected time of the paper's ``train.iterations`` (14,000) = iterations x median s/it, the
   peak GPU memory on CUDA, achieved TFLOP/s (conv/matmul FLOPs counted on the meta device).
   ``compiled`` runs in a child process with a time limit (``--compile-timeout-s``): a compile
   that fails or runs out of time is recorded as an error string, never a crash.
3. **data**: a small cohort at the chosen size through the project's own steps
   (``vce.steps.synth -> register -> split -> normalize``; the profile's settings with a few
   patients and slices, QC thresholds relaxed and ``qc.png`` off: the cohort only feeds the trainer).
4. **training**: ``pgmgvce_main`` and ``baseline_mmgsn`` trained with ``vce.steps.train`` (the
   real trainer, tracking off, no validation / resumable states) for a fixed wall-clock budget
   each (``--budget-s``), turned into an iteration count from phase 2's fp32 rate, or for
   ``--iterations N``. Iterations done, it/s and the final losses come from ``train_summary.json``.

Outputs (each written atomically): ``<out>/gpu_check.json`` (everything) and
``<out>/gpu_check.md`` (tables to paste into docs/results.md). Exit status 1 when the fp32
timing, the data steps or a training failed (their errors are in the JSON), else 0.

``--size auto`` is ``paper`` on CUDA (the whole script under 8 minutes: ``--max-total-s``
shrinks the training budgets when the earlier phases ran long) and ``tiny`` on CPU (48x48,
``base_channels`` 4; about a minute on 2 cores), so CI runs the same code without a GPU.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import datetime
import gc
import json
import logging
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from _common import count_flops  # noqa: E402

from vce.config import Config, TrainConfig, Variant, load_config  # noqa: E402
from vce.io.atomic import write_json, write_text  # noqa: E402
from vce.training.trainer import threads_and_determinism  # noqa: E402

SCHEMA_VERSION = 1
MODES = ("fp32", "bf16", "compiled")
MODELS = ("pgmgvce_main", "baseline_mmgsn")
PHASES = ("machine", "timing", "data", "training")
DATA_STEPS = ("synth", "register", "split", "normalize")

log = logging.getLogger("gpu_check")


@dataclasses.dataclass(frozen=True)
class Size:
    """What ``--size`` sets: the params profile and the small cohort / timing repeats."""

    name: str
    profile: str
    n_patients: int
    n_slices: int
    warmup: int
    repeats: int


SIZES = {
    "paper": Size("paper", "paper", n_patients=4, n_slices=10, warmup=3, repeats=20),
    "tiny": Size("tiny", "tiny", n_patients=3, n_slices=6, warmup=2, repeats=5),
}
#: Defaults that depend on the device: (training budget s per model, compile limit s, whole-script limit s).
DEVICE_DEFAULTS = {"cuda": (60.0, 200.0, 450.0), "cpu": (5.0, 40.0, 150.0)}


# --------------------------------------------------------------------------- configuration
def study_config(params: Path, size: Size, n_patients: int | None = None, n_slices: int | None = None) -> Config:
    """The size's profile with a few patients / slices; QC thresholds relaxed so that no patient of
    the tiny cohort is excluded (registration quality is not what this script checks), no qc.png.
    Built with ``dataclasses.replace`` so every other field keeps its value (or default)."""
    cfg = load_config(params, profile=size.profile)
    synth = dataclasses.replace(cfg.synth, n_patients=n_patients or size.n_patients, n_slices=n_slices or size.n_slices)
    register = dataclasses.replace(cfg.register, qc_png=False, max_tre_mm=1e3, min_jacobian=-1e3, max_metric_increase=1e3)
    return dataclasses.replace(cfg, synth=synth, register=register)


def paper_iterations(params: Path) -> int:
    """The paper's ``train.iterations`` (14,000): what the timing is projected to."""
    return load_config(params, profile="paper").train.iterations


# --------------------------------------------------------------------------- machine
def machine_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cuda_available": torch.cuda.is_available(),
        "device": str(device),
        "load_avg_1_5_15": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
    }
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info["gpu"] = {
            "name": p.name, "total_memory_mib": p.total_memory / 2**20,
            "compute_capability": f"{p.major}.{p.minor}", "multi_processor_count": p.multi_processor_count,
            "count": torch.cuda.device_count(), "bf16_supported": torch.cuda.is_bf16_supported(),
        }  # fmt: skip
    info["nvidia_smi"] = nvidia_smi()
    return info


def nvidia_smi() -> dict[str, Any] | None:
    """Driver and card as ``nvidia-smi`` reports them; ``None`` when it is absent (never fails)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    error = None
    for fields in (("name", "driver_version", "memory.total", "power.limit", "clocks.max.sm"), ("name", "driver_version")):
        try:
            out = subprocess.run([exe, f"--query-gpu={','.join(fields)}", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20, check=True).stdout  # fmt: skip
            break
        except (OSError, subprocess.SubprocessError) as exc:  # an unknown field on an old driver: fewer fields
            error = f"{type(exc).__name__}: {exc}"
    else:
        return {"error": error}
    gpus = [dict(zip(fields, (v.strip() for v in line.split(",")))) for line in out.strip().splitlines() if line.strip()]
    return {"gpus": gpus, "driver_version": gpus[0].get("driver_version") if gpus else None}


# --------------------------------------------------------------------------- timing
def build_step(variant: Variant, cfg: TrainConfig, image_size: int, device: torch.device, mode: str, ema: bool = True) -> Any:
    """The trainer's :class:`~vce.training.step.GanStep` for ``variant`` (as ``GanTrainer.build``):
    ``mode`` fp32 | bf16 (``Precision("bf16")``) | compiled (``compile=True``)."""
    from vce.losses import LossWeights
    from vce.models.checkpoint import build_from_spec, generator_spec
    from vce.models.factory import build_discriminator
    from vce.training.distributed import DistContext
    from vce.training.ema import EMA
    from vce.training.precision import Precision
    from vce.training.step import GanStep

    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; known: {MODES}")
    from vce.losses import effective_pg_eps

    pg_eps = effective_pg_eps(variant, cfg)  # the trainer's eq.-2 eps (scaled by the normalisation's slope)
    G = build_from_spec(generator_spec(variant, cfg)).to(device)
    D = build_discriminator(len(variant.modalities), cfg.base_channels, image_size=image_size).to(device)
    step = GanStep(
        G, D, weights=LossWeights(variant.lambda_pg, variant.lambda_gan, variant.lambda_l1), lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2), gp_type=cfg.gp_type, gp_weight=cfg.gp_weight, pg_eps=pg_eps,
        precision=Precision("bf16" if mode == "bf16" else "off", device), dist=DistContext(device=device),
        ema=EMA(G, cfg.ema_decay) if ema and cfg.ema_decay > 0 else None, compile=mode == "compiled",
        name=f"gpu-check {variant.name} {mode}",
    )  # fmt: skip
    G.train()
    D.train()
    return step


def _inputs(n_modalities: int, batch: int, size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Random (0, 1) slices like sigmoid-normalised ones: x (B, M, S, S), y (B, 1, S, S)."""
    if device.type == "meta":
        return torch.empty(batch, n_modalities, size, size, device=device), torch.empty(batch, 1, size, size, device=device)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(batch, n_modalities, size, size, generator=g), torch.rand(batch, 1, size, size, generator=g)
    return x.to(device), y.to(device)


def iteration_flops(variant: Variant, cfg: TrainConfig, image_size: int) -> int | None:
    """Conv/matmul FLOPs of one iteration (forward + backward, R1's double backward), counted on
    the meta device (no arithmetic); ``None`` when counting fails."""
    try:
        meta = torch.device("meta")
        step = build_step(variant, cfg, image_size, meta, "fp32", ema=False)
        x, y = _inputs(len(variant.modalities), cfg.batch_size, image_size, meta)
        return count_flops(lambda: step.train_batch(x, y))
    except Exception as exc:  # noqa: BLE001 - a missing FLOP count only drops a column
        log.warning("FLOP count of %s failed: %s", variant.name, exc)
        return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:4000]


def time_model(variant: Variant, cfg: TrainConfig, image_size: int, device: torch.device, mode: str,
               warmup: int, repeats: int, projected_iterations: int) -> dict[str, Any]:  # fmt: skip
    """Seconds per iteration of ``variant`` in ``mode`` (median of ``repeats`` after ``warmup``);
    ``{"status": "error", "error": ...}`` instead of raising."""
    t_start = time.perf_counter()
    step = None
    try:
        torch.manual_seed(0)
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        with threads_and_determinism(cfg.threads):  # as the trainer runs its loop
            step = build_step(variant, cfg, image_size, device, mode)
            x, y = _inputs(len(variant.modalities), cfg.batch_size, image_size, device)
            times, losses = [], {}
            for i in range(warmup + repeats):
                _sync(device)
                t0 = time.perf_counter()
                losses = step.step(x, y)
                _sync(device)
                times.append(time.perf_counter() - t0)
        timed = times[warmup:]
        med = statistics.median(timed)
        res: dict[str, Any] = {
            "status": "ok", "s_per_iteration": med, "s_per_iteration_min": min(timed),
            "s_per_iteration_max": max(timed), "iterations_per_s": 1.0 / med,
            "projected_iterations": projected_iterations, "projected_s": projected_iterations * med,
            "first_iteration_s": times[0], "warmup_iterations": warmup, "timed_iterations": repeats,
            "last_losses": losses, "losses_finite": all(math.isfinite(v) for v in losses.values()),
            "generator_compiled": step.Gc is not step.G, "discriminator_compiled": step.Dc is not step.D,
        }  # fmt: skip
        if device.type == "cuda":
            res["peak_memory_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
            res["peak_memory_reserved_mib"] = torch.cuda.max_memory_reserved(device) / 2**20
    except Exception as exc:  # noqa: BLE001 - recorded, the other modes still run
        log.warning("timing %s %s failed: %s", variant.name, mode, _error(exc))
        res = {"status": "error", "error": _error(exc)}
    finally:
        del step
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    res["wall_s"] = time.perf_counter() - t_start
    return res


def time_mode(cfg: Config, device: torch.device, size: Size, mode: str, projected: int,
              flops: dict[str, int | None], partial: Path | None = None) -> dict[str, Any]:  # fmt: skip
    """Both models in ``mode``; ``partial``: JSON rewritten after each model (the compile child)."""
    out: dict[str, Any] = {}
    for name in MODELS:
        log.info("timing %s, %s: %d warm-up + %d timed iterations", name, mode, size.warmup, size.repeats)
        r = time_model(cfg.variant(name), cfg.train, cfg.split.image_size, device, mode, size.warmup, size.repeats, projected)
        if r["status"] == "ok" and flops.get(name):
            r["tflops_per_s"] = flops[name] / r["s_per_iteration"] / 1e12
        if r["status"] == "ok":
            log.info("  %s %s: %.4f s/it (%.2f it/s), %d iterations -> %s, first iteration %.2f s", name, mode,
                     r["s_per_iteration"], r["iterations_per_s"], projected, fmt_duration(r["projected_s"]),
                     r["first_iteration_s"])  # fmt: skip
        out[name] = r
        if partial is not None:
            write_json(partial, out)
    return out


def time_compiled_child(args: argparse.Namespace, size: Size, device: torch.device, timeout_s: float, work: Path) -> dict[str, Any]:
    """The ``compiled`` mode in a child process (its own process group) killed after ``timeout_s``;
    models it did not finish are recorded with the reason."""
    result = work / "compiled.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker-compiled", str(result), "--size", size.name,
           "--device", device.type, "--params", str(args.params)]  # fmt: skip
    if args.patients:
        cmd += ["--patients", str(args.patients)]
    tail: collections.deque[str] = collections.deque(maxlen=30)
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, start_new_session=True)

    def forward() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            sys.stderr.write(line)
            tail.append(line.rstrip())

    reader = threading.Thread(target=forward, daemon=True)
    reader.start()
    def stop() -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the child and the compile workers it started
        proc.wait()

    reason = None
    try:
        proc.wait(timeout=max(1.0, timeout_s))
    except subprocess.TimeoutExpired:
        reason = f"TimeoutError: torch.compile mode did not finish within {timeout_s:.0f} s (--compile-timeout-s)"
        log.warning("compiled mode: %s; stopping the child %d", reason, proc.pid)
        stop()
    except BaseException:  # Ctrl-C: the child has its own session and would not get the SIGINT
        stop()
        raise
    reader.join(timeout=5)
    if reason is None and proc.returncode != 0:
        reason = f"ChildProcessError: the compiled-mode process exited with status {proc.returncode}: " + " | ".join(list(tail)[-5:])
    done = json.loads(result.read_text()) if result.is_file() else {}
    return {name: done.get(name) or {"status": "error", "error": reason or "no result"} for name in MODELS}


def run_timing(args: argparse.Namespace, cfg: Config, size: Size, device: torch.device, deadline: float,
               work: Path) -> dict[str, Any]:  # fmt: skip
    projected = paper_iterations(args.params)
    image_size = cfg.split.image_size
    flops = {name: iteration_flops(cfg.variant(name), cfg.train, image_size) for name in MODELS}
    modes: dict[str, Any] = {}
    for mode in ("fp32", "bf16"):
        modes[mode] = time_mode(cfg, device, size, mode, projected, flops)
    limit = min(args.compile_timeout_s, max(30.0, deadline - time.monotonic() - 120.0))
    log.info("timing compiled mode in a child process (limit %.0f s)", limit)
    modes["compiled"] = time_compiled_child(args, size, device, limit, work)
    for name in MODELS:
        r = modes["compiled"][name]
        if r.get("status") == "ok" and flops.get(name):
            r["tflops_per_s"] = flops[name] / r["s_per_iteration"] / 1e12
    return {
        "setting": {
            "profile": size.profile, "image_size": image_size, "batch": cfg.train.batch_size,
            "base_channels": cfg.train.base_channels, "pgmgvce_depth": cfg.train.pgmgvce_depth,
            "gp_type": cfg.train.gp_type, "gp_weight": cfg.train.gp_weight, "threads": cfg.train.threads,
            "torch_threads": torch.get_num_threads() if cfg.train.threads == 0 else cfg.train.threads,
            "deterministic": True, "warmup": size.warmup, "repeats": size.repeats,
            "projected_iterations": projected, "compile_timeout_s": limit,
        },  # fmt: skip
        "flops_per_iteration": flops,
        "modes": modes,
    }


# --------------------------------------------------------------------------- data + training
def run_data(cfg: Config, work: Path) -> dict[str, Any]:
    """synth -> register -> split -> normalize with the project's steps; seconds of each."""
    from vce import steps

    times = {}
    paths = {"raw": work / "raw", "registered": work / "registered", "split": work / "split", "normalized": work / "normalized"}
    calls = (
        ("synth", lambda: steps.synth(paths["raw"], cfg)),
        ("register", lambda: steps.register(paths["raw"], paths["registered"], cfg)),
        ("split", lambda: steps.split(paths["registered"], paths["split"], cfg)),
        ("normalize", lambda: steps.normalize(paths["split"], paths["normalized"], cfg)),
    )
    for name, fn in calls:
        log.info("data: %s", name)
        t0 = time.perf_counter()
        fn()
        times[name] = time.perf_counter() - t0
        log.info("data: %s done in %.1f s", name, times[name])
    split = json.loads((paths["split"] / "split.json").read_text())
    return {"steps_s": times, "n_patients": cfg.synth.n_patients, "n_slices": cfg.synth.n_slices,
            "matrix": list(cfg.synth.matrix), "patients": split.get("patients"), "slices": split.get("slices"),
            "normalized": str(paths["normalized"])}  # fmt: skip


def plan_iterations(rate: float | None, budget_s: float, fixed: int | None, cap: int) -> int:
    """``fixed``, else ``budget_s`` x the measured rate (at least 2, at most ``cap``); 10 without a rate."""
    if fixed:
        return fixed
    if not rate or not math.isfinite(rate) or rate <= 0:
        return 10
    return int(max(2, min(cap, math.floor(budget_s * rate))))


def run_training(args: argparse.Namespace, cfg: Config, device: torch.device, norm_dir: Path, work: Path,
                 rates: dict[str, float | None], deadline: float) -> dict[str, Any]:  # fmt: skip
    from vce import steps

    results: dict[str, Any] = {}
    cap = paper_iterations(args.params)
    for i, name in enumerate(MODELS):
        left = len(MODELS) - i
        remaining = deadline - time.monotonic() - 20.0  # writing the outputs
        budget = max(1.0, min(args.budget_s, remaining / left))
        iters = plan_iterations(rates.get(name), budget, args.iterations, cap)
        tcfg = dataclasses.replace(cfg.train, iterations=iters, log_every=max(1, cfg.train.log_every, iters // 10),
                                   checkpoint_every=0, val_patients=0, keep="last")  # fmt: skip
        run_dir = work / "runs" / name
        log.info("training %s: %d iterations (budget %.0f s at %s it/s) on %s", name, iters, budget,
                 f"{rates[name]:.2f}" if rates.get(name) else "?", device)  # fmt: skip
        t0 = time.perf_counter()
        try:
            steps.train(norm_dir, run_dir, dataclasses.replace(cfg, train=tcfg), name, tracking_uri=None, device=str(device))
            s = json.loads((run_dir / "train_summary.json").read_text())
            final = s["final_losses"]
            results[name] = {
                "status": "ok", "iterations": s["iterations"], "budget_s": budget, "planned_from_rate": rates.get(name),
                "wall_time_s": s["wall_time_s"], "iterations_per_s": s["iterations_per_s"],
                "s_per_iteration": s["s_per_iteration"], "total_s": time.perf_counter() - t0,
                "final_losses": final, "losses_finite": all(math.isfinite(float(v)) for v in final.values()),
                "device": s["device"], "amp": s["amp"], "compile": s["compile"], "image_size": s["image_size"],
                "batch_size": s["batch_size"], "n_train_slices": s["n_train_slices"], "params": s["params"],
                "threads": s["threads"], "health_warnings": s.get("health_warnings"),
            }  # fmt: skip
            log.info("training %s: %d iterations in %.1f s (%.2f it/s), final loss_g %.4f", name, s["iterations"],
                     s["wall_time_s"], s["iterations_per_s"] or 0.0, final["loss_g"])  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - recorded; the other model still trains
            log.error("training %s failed: %s", name, _error(exc))
            results[name] = {"status": "error", "error": _error(exc), "iterations": 0, "total_s": time.perf_counter() - t0}
    return results


# --------------------------------------------------------------------------- report
def fmt_duration(s: float | None) -> str:
    """``42.0 s``, ``7 min 5 s``, ``2 h 13 min`` (rounded once, so never ``60 s``)."""
    if s is None or not math.isfinite(s):
        return "-"
    if s < 59.95:
        return f"{s:.1f} s"
    if s < 3599.5:
        sec = int(round(s))
        return f"{sec // 60} min {sec % 60} s"
    mins = int(round(s / 60))
    return f"{mins // 60} h {mins % 60} min"


def _f(v: Any, spec: str = ".3f") -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def _timing_md(res: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    t = res.get("timing")
    if t:
        st = t["setting"]
        lines += [
            f"One training iteration (`GanStep.step`: G forward, D step LSGAN + {st['gp_type']} x {st['gp_weight']}, "
            f"G step, loss report) at profile `{st['profile']}`: {st['image_size']}x{st['image_size']}, batch {st['batch']}, "
            f"base_channels {st['base_channels']}, deterministic algorithms as in `vce train`; median of {st['repeats']} "
            f"after {st['warmup']} warm-up. Projection = {st['projected_iterations']:,} x median s/it "
            f"(the paper's `train.iterations`). bf16 = `train.amp: bf16` (autocast, losses in fp32); compiled = "
            f"`train.compile: true` (torch.compile of G; D stays eager under a gradient penalty), its first "
            f"iteration includes the compilation.",
            "",
            f"| model | mode | s/it | it/s | {st['projected_iterations']:,} it | peak GPU MiB | TFLOP/s | first it (s) | status |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for mode in MODES:
            for name in MODELS:
                r = t["modes"].get(mode, {}).get(name) or {"status": "error", "error": "not run"}
                if r["status"] == "ok":
                    lines.append(
                        f"| {name} | {mode} | {_f(r['s_per_iteration'], '.4f')} | {_f(r['iterations_per_s'], '.2f')} | "
                        f"{fmt_duration(r['projected_s'])} | {_f(r.get('peak_memory_mib'), '.0f')} | "
                        f"{_f(r.get('tflops_per_s'), '.3g')} | {_f(r['first_iteration_s'], '.2f')} | ok |"
                    )
                else:
                    err = r.get("error", "").replace("|", "/").replace("\n", " ")[:160]
                    lines.append(f"| {name} | {mode} | - | - | - | - | - | - | {r['status']}: {err} |")
        lines.append("")
    return lines


def _training_md(res: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    d = res.get("data")
    if d:
        pt, sl = d.get("patients") or {}, d.get("slices") or {}
        lines += [f"Cohort: {d['n_patients']} synthetic patients x {d['n_slices']} slices at {d['matrix'][0]}x{d['matrix'][1]} "
                  f"through the project's steps (train / test: {pt.get('train', '-')} / {pt.get('test', '-')} patients, "
                  f"{sl.get('train', '-')} / {sl.get('test', '-')} slices); "
                  + ", ".join(f"{k} {fmt_duration(d['steps_s'][k])}" for k in DATA_STEPS if k in d["steps_s"]) + ".", ""]  # fmt: skip
    tr = res.get("training")
    if tr:
        ok = [r for r in tr.values() if r and r.get("status") == "ok"]
        opts = res.get("options") or {}
        plan = (f"{opts['iterations']} iterations each" if opts.get("iterations") else
                f"a budget of up to {_f(opts.get('budget_s'), '.0f')} s each (iterations = budget x the fp32 rate above)")
        lines += [
            f"Training with `vce.steps.train` (the profile's train settings: amp `{ok[0]['amp'] if ok else '-'}`, "
            f"compile {ok[0]['compile'] if ok else '-'}; tracking, validation and resumable states off), {plan}:",
            "",
            "| variant | iterations | loop s | it/s | total s | loss_d | loss_g | loss_pg | loss_l1 | status |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name in MODELS:
            r = tr.get(name) or {"status": "error", "error": "not run"}
            if r["status"] == "ok":
                fl = r["final_losses"]
                lines.append(
                    f"| {name} | {r['iterations']} | {_f(r['wall_time_s'], '.1f')} | {_f(r['iterations_per_s'], '.2f')} | "
                    f"{_f(r['total_s'], '.1f')} | {_f(fl['loss_d'], '.4f')} | {_f(fl['loss_g'], '.4f')} | "
                    f"{_f(fl['loss_pg'], '.4f')} | {_f(fl['loss_l1'], '.4f')} | ok |"
                )
            else:
                err = r.get("error", "").replace("|", "/").replace("\n", " ")[:160]
                lines.append(f"| {name} | 0 | - | - | - | - | - | - | - | error: {err} |")
        lines.append("")
    return lines


def render_md(res: dict[str, Any]) -> str:
    """The markdown report of a gpu_check result (machine, timing, cohort, training, errors)."""
    m = res["machine"]
    gpu = m.get("gpu")
    smi = m.get("nvidia_smi") or {}
    card = (f"{gpu['name']}, {gpu['total_memory_mib'] / 1024:.1f} GiB, compute capability {gpu['compute_capability']}, "
            f"{gpu['multi_processor_count']} SMs" if gpu else f"CPU only ({m['processor'] or m['platform']})")  # fmt: skip
    driver = smi.get("driver_version") if isinstance(smi, dict) else None
    phases = ", ".join(f"{k} {fmt_duration(res['phases_s'][k])}" for k in PHASES if k in res["phases_s"])
    lines = [
        f"### GPU check: {gpu['name'] if gpu else 'CPU only, no GPU'} ({res['created'][:10]}, size `{res['size']}`)",
        "",
        f"`{res['command']}`; total {fmt_duration(res['total_wall_s'])} "
        f"(phases: {phases}).",
        "",
        f"Machine: {card}; driver {driver or '-'}; torch {m['torch']} (CUDA {m['torch_cuda'] or '-'}, "
        f"cuDNN {m['cudnn'] or '-'}); {m['cpu_count']} CPUs; TF32 matmul {m['matmul_allow_tf32']}, "
        f"TF32 cuDNN {m['cudnn_allow_tf32']}.",
        "",
    ]
    lines += _timing_md(res) + _training_md(res)
    if res.get("errors"):
        lines += ["Errors: " + "; ".join(f"{k}: {v}" for k, v in res["errors"].items()), ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("outputs/gpu_check"), help="output directory (default outputs/gpu_check)")
    p.add_argument("--size", choices=("auto", "paper", "tiny"), default="auto", help="auto: paper on CUDA, tiny on CPU")
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    p.add_argument("--budget-s", type=float, default=None, help="training wall-clock budget per model (default 60 on CUDA, 5 on CPU)")
    p.add_argument("--iterations", type=int, default=None, help="train this many iterations instead of a budget")
    p.add_argument("--compile-timeout-s", type=float, default=None, help="limit of the compiled mode (default 200 on CUDA, 40 on CPU)")
    p.add_argument("--max-total-s", type=float, default=None, help="whole-script target; training budgets shrink to fit (default 450 on CUDA, 150 on CPU)")
    p.add_argument("--patients", type=int, default=None, help="synthetic patients of the training cohort (default 4 paper, 3 tiny)")
    p.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    p.add_argument("--keep-work", action="store_true", help="keep <out>/work (cohort, runs) after a successful run")
    p.add_argument("--worker-compiled", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.iterations is not None and args.iterations < 1:
        p.error("--iterations must be >= 1")
    return args


def resolve(args: argparse.Namespace) -> tuple[torch.device, Size]:
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: --device cuda but torch sees no CUDA device")
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu")
    size = SIZES[("paper" if device.type == "cuda" else "tiny") if args.size == "auto" else args.size]
    budget, compile_limit, total = DEVICE_DEFAULTS[device.type]
    args.budget_s = budget if args.budget_s is None else args.budget_s
    args.compile_timeout_s = compile_limit if args.compile_timeout_s is None else args.compile_timeout_s
    args.max_total_s = total if args.max_total_s is None else args.max_total_s
    args.params = Path(args.params).resolve()
    return device, size


def worker_compiled(args: argparse.Namespace) -> int:
    """Child process: the compiled mode of both models, results rewritten after each."""
    device, size = resolve(args)
    cfg = study_config(args.params, size, args.patients)
    flops: dict[str, int | None] = {}
    time_mode(cfg, device, size, "compiled", paper_iterations(args.params), flops, partial=args.worker_compiled)
    return 0


def _new_result(args: argparse.Namespace, argv: list[str] | None, size: Size, device: torch.device) -> dict[str, Any]:
    """The result document before any phase ran."""
    return {
        "schema_version": SCHEMA_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, "benchmarks/gpu_check.py", *(argv if argv is not None else sys.argv[1:])]),
        "size": size.name, "profile": size.profile, "device": str(device),
        "options": {"budget_s": args.budget_s, "iterations": args.iterations, "compile_timeout_s": args.compile_timeout_s,
                    "max_total_s": args.max_total_s},
        "phases_s": {}, "errors": {},
    }  # fmt: skip


def _failures(res: dict[str, Any]) -> list[str]:
    """What makes the check fail: a phase error, an fp32 timing or a training that did not finish."""
    failed = sorted(res["errors"])
    fp32 = (res["timing"] or {}).get("modes", {}).get("fp32", {})
    failed += [f"timing fp32 {n}" for n in MODELS if (fp32.get(n) or {}).get("status") != "ok"]
    failed += [f"training {n}" for n in MODELS if ((res.get("training") or {}).get(n) or {}).get("status") != "ok"]
    return failed


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for name in ("vce.synth", "vce.prep"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if args.worker_compiled is not None:
        return worker_compiled(args)
    t_start = time.monotonic()
    device, size = resolve(args)
    deadline = t_start + args.max_total_s
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    cfg = study_config(args.params, size, args.patients)
    if size.name == "paper" and device.type == "cpu":
        log.warning("--size paper on the CPU: the timing alone takes minutes")
    res = _new_result(args, argv, size, device)
    phases = res["phases_s"]

    def phase(name: str, fn: Any) -> Any:
        log.info("== %s (%.0f s elapsed)", name, time.monotonic() - t_start)
        t0 = time.monotonic()
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - recorded in the JSON, exit status 1
            log.exception("%s failed", name)
            res["errors"][name] = _error(exc)
            return None
        finally:
            phases[name] = time.monotonic() - t0

    res["machine"] = phase("machine", lambda: machine_info(device))
    log.info("device %s%s, size %s (profile %s, %dx%d)", device,
             f" ({res['machine']['gpu']['name']})" if res["machine"] and res["machine"].get("gpu") else "",
             size.name, size.profile, cfg.split.image_size, cfg.split.image_size)  # fmt: skip
    res["timing"] = phase("timing", lambda: run_timing(args, cfg, size, device, deadline, work))
    data = phase("data", lambda: run_data(cfg, work))
    res["data"] = data
    if data is not None:
        fp32 = (res["timing"] or {}).get("modes", {}).get("fp32", {})
        rates = {n: (fp32.get(n) or {}).get("iterations_per_s") for n in MODELS}
        res["training"] = phase("training", lambda: run_training(args, cfg, device, Path(data["normalized"]), work, rates, deadline))
    res["total_wall_s"] = time.monotonic() - t_start
    failed = _failures(res)
    res["ok"] = not failed
    res["failed"] = failed
    write_json(out / "gpu_check.json", res)
    write_text(out / "gpu_check.md", render_md(res))
    if res["ok"] and not args.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    log.info("done in %s: %s, %s%s", fmt_duration(res["total_wall_s"]), out / "gpu_check.json", out / "gpu_check.md",
             f"; FAILED: {failed}" if failed else "")  # fmt: skip
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
