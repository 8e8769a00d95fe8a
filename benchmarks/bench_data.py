"""Data path (issue 3): slice-store read cost vs a training step, and memory vs cohort size.

(a) ``SliceDataset.batch`` reads of random batches (batch 4, two modalities + target) from a
    normalised slice store written by the project's own ``split`` and ``normalize`` code,
    against one PGMGVCE training step (``GanStep.step``, as in ``bench_train``) at the same image size and batch.
    The ratio read / step should be << 1 (data loading is not the bottleneck). The store was
    just written, so reads come from the page cache (a cold disk is slower; dropping caches
    needs root).
(b) Peak memory of ``split_cohort -> normalize_split -> one epoch of SliceDataset batches`` at
    two cohort sizes (N and 4N patients), each in a fresh Python process so the numbers are
    independent. Reported per run: peak resident set (``ru_maxrss``; includes the file pages of
    the memory-mapped store that the process touched, which the kernel can drop at will), peak
    anonymous memory (``RssAnon`` of ``/proc/self/status`` sampled every 2 ms: heap, the part
    that would grow if a step held the cohort in memory) and both minus the process's baseline
    after imports. Ratios 4N / N of the anonymous increment should be ~1 (flat).

The cohort is a phantom written straight into the registered-cohort layout (``<pid>/T1.nii.gz``
T2, T1C on one grid: a noisy ellipsoidal head with a bright "lesion" in T1C), skipping
synthesis and registration (their cost does not belong here). Full: the paper profile's
44 x 192 x 192 volumes, N = 4; short: 22 x 96 x 96, N = 2.
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

BATCH = 4
MODALITIES = ("T1", "T2")


def write_registered_cohort(out: Path, n_patients: int, n_slices: int, size: int, seed: int = 0) -> list[str]:
    """Phantom patients ``p000..`` in the registered layout (T1, T2, T1C .nii.gz, (z, y, x) = (n_slices, size, size))."""
    import SimpleITK as sitk

    rng = np.random.default_rng(seed)
    z, yy, xx = np.meshgrid(np.linspace(-1, 1, n_slices), np.linspace(-1, 1, size), np.linspace(-1, 1, size), indexing="ij")
    pids = []
    for i in range(n_patients):
        pid = f"p{i:03d}"
        d = out / pid
        d.mkdir(parents=True)
        a, b = 0.75 + 0.1 * rng.random(), 0.85 + 0.1 * rng.random()
        head = (xx / a) ** 2 + (yy / b) ** 2 + (z / 1.3) ** 2 < 1.0
        lesion = (xx - 0.2) ** 2 + (yy + 0.1) ** 2 + z**2 < 0.04
        texture = 150.0 * np.sin(6 * xx + i) * np.cos(5 * yy)
        for m, level in (("T1", 800.0), ("T2", 1200.0), ("T1C", 850.0)):
            vol = head * (level + texture) + (m == "T1C") * lesion * 900.0 + rng.normal(0, 20.0, head.shape)
            img = sitk.GetImageFromArray(np.abs(vol).astype(np.float32))
            img.SetSpacing((1.1, 1.1, 3.0))
            sitk.WriteImage(img, str(d / f"{m}.nii.gz"))
        pids.append(pid)
    return pids


class _AnonSampler:
    """Background thread: peak of ``RssAnon`` (bytes) from ``/proc/self/status`` every ``period`` s,
    overall (``peak``) and per stage (``stage_peaks``; :meth:`stage` names the current one)."""

    def __init__(self, period: float = 0.002) -> None:
        self.period = period
        self.peak = anon_bytes() or 0
        self.current = "start"
        self.stage_peaks: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _sample(self) -> None:
        v = anon_bytes() or 0
        self.peak = max(self.peak, v)
        self.stage_peaks[self.current] = max(self.stage_peaks.get(self.current, 0), v)

    def stage(self, name: str) -> None:
        self._sample()
        self.current = name
        self._sample()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._sample()
            time.sleep(self.period)

    def __enter__(self) -> "_AnonSampler":
        self._thread.start()
        return self

    def __exit__(self, *args: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def _proc_status_bytes(field: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` (Linux) in bytes, else ``None``."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def anon_bytes() -> int | None:
    """Current anonymous resident memory of this process (Linux), else ``None``."""
    return _proc_status_bytes("RssAnon")


def rss_bytes() -> int | None:
    """Current resident set size of this process (Linux), else ``None``."""
    return _proc_status_bytes("VmRSS")


def memory_child(registered: Path, work: Path, image_size: int) -> dict[str, Any]:
    """Run split -> normalize -> one epoch of batches in THIS process; return its memory figures (MiB).

    Meant to run in a fresh interpreter (``python bench_data.py --memory-child ...``).
    """
    import torch

    from vce.config import load_config
    from vce.prep.normalization import normalize_split
    from vce.prep.split import split_cohort
    from vce.training.data import SeededBatchSampler, SliceDataset

    torch.set_num_threads(2)
    cfg = dataclasses.replace(load_config(profile="paper").split, image_size=image_size)
    mib = 1024.0 * 1024.0
    base_anon, base_rss = anon_bytes() or 0, rss_bytes() or 0
    times = {}
    with _AnonSampler() as sampler:
        sampler.stage("split")
        t0 = time.perf_counter()
        manifest = split_cohort(registered, work / "split", cfg, seed=0)
        times["split_s"] = time.perf_counter() - t0
        sampler.stage("normalize")
        t0 = time.perf_counter()
        normalize_split(work / "split", work / "normalized")
        times["normalize_s"] = time.perf_counter() - t0
        sampler.stage("epoch")
        t0 = time.perf_counter()
        data = SliceDataset(work / "normalized" / "sigmoid", "train", MODALITIES)
        sampler_b = SeededBatchSampler(len(data), BATCH, 0)
        checksum = 0.0
        for _ in range(-(-len(data) // BATCH)):
            x, y = data.batch(sampler_b.next_batch())
            checksum += float(x.sum()) + float(y.sum())
        times["epoch_s"] = time.perf_counter() - t0
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    store = sum(f.stat().st_size for f in work.rglob("*.npy"))
    return {
        "patients": int(len(manifest)),
        "train_slices": len(data),
        "store_mib": store / mib,
        "baseline_rss_mib": base_rss / mib,
        "peak_rss_mib": maxrss / mib,
        "baseline_anon_mib": base_anon / mib,
        "peak_anon_mib": sampler.peak / mib,
        "anon_increment_mib": (sampler.peak - base_anon) / mib,
        "stage_peak_anon_mib": {k: v / mib for k, v in sampler.stage_peaks.items() if k != "start"},
        "rss_increment_mib": (maxrss - base_rss) / mib,
        "checksum": checksum,
        **times,
    }


def _run_child(registered: Path, work: Path, image_size: int) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--memory-child", str(registered), str(work), str(image_size)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"memory child failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def read_vs_step(norm_dir: Path, image_size: int, reads: int, steps: int) -> dict[str, Any]:
    """Median seconds of a random ``SliceDataset.batch`` read vs of one PGMGVCE training step (same size and batch)."""
    import torch
    from _common import set_threads, time_calls
    from bench_train import pgmgvce_step

    from vce.config import load_config
    from vce.training.data import SeededBatchSampler, SliceDataset

    set_threads()
    data = SliceDataset(norm_dir, "train", MODALITIES)
    sampler = SeededBatchSampler(len(data), BATCH, 1)
    tr = time_calls(lambda: data.batch(sampler.next_batch()), reads, warmup=2)
    cfg = load_config(profile="paper").train
    torch.manual_seed(0)
    step = pgmgvce_step(cfg.base_channels, image_size)  # the trainer's own GanStep
    x, y = data.batch(sampler.next_batch())
    ts = time_calls(lambda: step.step(x, y), steps, warmup=1)
    return {
        "batch": BATCH,
        "image_size": image_size,
        "store_slices": len(data),
        "read_s": tr["median_s"],
        "read_s_max": tr["max_s"],
        "reads": reads,
        "step_s": ts["median_s"],
        "steps": steps,
        "read_over_step": tr["median_s"] / ts["median_s"],
        "note": "store in the page cache (just written)",
    }


def run(short: bool, *, n_patients: int | None = None, n_slices: int | None = None, image_size: int | None = None,
        steps: int | None = None) -> dict[str, Any]:  # fmt: skip
    """(b) at N and 4N patients in fresh processes, then (a) on the 4N store; keyword args override sizes."""
    n = n_patients or (2 if short else 4)
    n_slices = n_slices or (22 if short else 44)
    size = image_size or (96 if short else 192)
    steps = steps or (2 if short else 5)
    memory = {}
    with tempfile.TemporaryDirectory(prefix="vce-bench-data-") as tmp:
        root = Path(tmp)
        for label, k in (("N", n), ("4N", 4 * n)):
            reg = root / f"registered_{label}"
            write_registered_cohort(reg, k, n_slices, size, seed=k)
            memory[label] = _run_child(reg, root / f"work_{label}", size)
        reads = read_vs_step(root / "work_4N" / "normalized" / "sigmoid", size, reads=50 if short else 200, steps=steps)
    ratios = {
        "peak_anon_4N_over_N": memory["4N"]["peak_anon_mib"] / memory["N"]["peak_anon_mib"],
        "anon_increment_4N_over_N": memory["4N"]["anon_increment_mib"] / max(memory["N"]["anon_increment_mib"], 1e-9),
        "peak_rss_4N_over_N": memory["4N"]["peak_rss_mib"] / memory["N"]["peak_rss_mib"],
        "store_4N_over_N": memory["4N"]["store_mib"] / memory["N"]["store_mib"],
        "read_over_step": reads["read_over_step"],
    }
    return {
        "setting": {"volume_zyx": [n_slices, size, size], "patients": [n, 4 * n], "batch": BATCH, "short": short},
        "memory": memory,
        "read_vs_step": reads,
        "ratios": ratios,
        "summary": (
            f"read {reads['read_s'] * 1e3:.2f} ms vs step {reads['step_s']:.2f} s per batch of {BATCH} at {size}px "
            f"(ratio {reads['read_over_step']:.1e}); peak anon {memory['N']['peak_anon_mib']:.0f} -> "
            f"{memory['4N']['peak_anon_mib']:.0f} MiB (x{ratios['peak_anon_4N_over_N']:.2f}, increment "
            f"x{ratios['anon_increment_4N_over_N']:.2f}) for {n} -> {4 * n} patients, store x{ratios['store_4N_over_N']:.1f}"
        ),
    }


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--memory-child":
        os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
        print(json.dumps(memory_child(Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]))))
    else:
        print(json.dumps(run("--short" in sys.argv), indent=2))
