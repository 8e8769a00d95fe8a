"""Train one variant of the study: generator + conditional PatchGAN, LSGAN + pixelwise gradient (+ L1).

:class:`GanTrainer` runs the loop; each concern has its own small module:

    step.py         GanStep: one D step + one G step (the paper's objectives, vce.losses)
    precision.py    autocast / GradScaler (train.amp)
    distributed.py  torchrun context: ranks, gradient averaging, final weight check
    ema.py          EMA of the generator (train.ema_decay)
    state.py        the resumable state (save_state / load_state) and the run's bookkeeping
    monitor.py      validation on held-out TRAIN patients + GAN-health warnings
    history.py      window-averaged loss rows (losses.csv)
    outputs.py      the finished run directory and what the tracker gets
    vce.models.checkpoint   the checkpoint format (writer and reader)

Outputs (written atomically into ``out_dir`` at the end, see :mod:`vce.training.outputs`).
Resume: ``resume=True`` continues from ``<state_dir>/last.pt`` (:mod:`vce.training.state`); on
CPU the final weights are bit-identical to an uninterrupted run. Without ``resume`` an existing
state is **deleted** and training starts from scratch; after a successful run it is deleted.

Reproducibility: initialisation uses ``torch.manual_seed(seed)`` inside
:func:`torch.random.fork_rng` (the caller's global RNG is untouched), batches come from a
``numpy`` generator seeded from ``seed``, deterministic algorithms are requested for the
duration of the run and the thread count is set (``train.threads``) and restored; on CPU two
runs with the same seed give bit-identical losses.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vce.config import TrainConfig, Variant
from vce.losses import LossWeights, effective_pg_eps
from vce.models.checkpoint import build_from_spec, generator_spec, make_checkpoint
from vce.models.factory import build_discriminator, count_parameters
from vce.tracking import Tracker
from vce.training.data import SeededBatchSampler, training_sets
from vce.training.distributed import DistContext, state_hash
from vce.training.ema import EMA
from vce.training.history import LossLog
from vce.training.monitor import VAL_COLUMNS, Monitor
from vce.training.montage import write_montage
from vce.training.outputs import checkpoint_files, track_outputs, write_run_dir
from vce.training.precision import Precision
from vce.training.state import RunState, cpu_state, default_state_dir, identity, load_state, save_state
from vce.training.step import LOSS_COLUMNS, GanStep

__all__ = ["GanTrainer", "RunOptions", "train_variant"]

log = logging.getLogger(__name__)


def train_variant(
    norm_dir: str | Path,
    out_dir: str | Path,
    variant: Variant,
    cfg: TrainConfig,
    seed: int,
    tracker: Tracker | None = None,
    *,
    device: str | torch.device | None = None,
    progress: bool | None = None,
    metadata: dict[str, Any] | None = None,
    resume: bool = False,
    state_dir: str | Path | None = None,
) -> Path:
    """Train ``variant`` on ``norm_dir/train/{T1,T2,T1C}.npy`` and write its outputs to ``out_dir``.

    ``device``: default ``cuda`` when available, else ``cpu`` (under torchrun on CUDA each rank
    uses ``cuda:<LOCAL_RANK>``). ``progress``: a tqdm bar (default: only when stderr is a
    terminal; rank 0 only). ``metadata``: JSON-serialisable information for later steps (image
    size, calibration, MLflow run id), stored as ``checkpoint["metadata"]`` (tuples become
    lists). ``resume``: continue from ``<state_dir>/last.pt`` when it exists (else start fresh,
    with a warning). ``state_dir``: default :func:`default_state_dir`. Returns ``out_dir``.
    Raises :class:`~vce.io.errors.VCEInputError` for missing/mismatched inputs and
    ``FloatingPointError`` if a loss becomes non-finite.
    """
    options = RunOptions(progress=progress, metadata=metadata, resume=resume, state_dir=state_dir)
    dist = DistContext.from_env(device)
    try:
        trainer = GanTrainer(variant, cfg, seed, norm_dir=norm_dir, out_dir=out_dir, dist=dist,
                             tracker=tracker, options=options)  # fmt: skip
        return trainer.fit()
    finally:
        dist.close()


@dataclass(frozen=True)
class RunOptions:
    """How to run (not what to train): see :func:`train_variant` for each field."""

    progress: bool | None = None
    metadata: dict[str, Any] | None = None
    resume: bool = False
    state_dir: str | Path | None = None


class GanTrainer:
    """One variant's training run: :meth:`fit` builds, resumes or starts, trains and writes."""

    def __init__(self, variant: Variant, cfg: TrainConfig, seed: int, *, norm_dir: str | Path, out_dir: str | Path,
                 dist: DistContext, tracker: Tracker | None = None, options: RunOptions = RunOptions()) -> None:  # fmt: skip
        self.variant, self.cfg, self.seed, self.dist, self.resume = variant, cfg, seed, dist, options.resume
        self.metadata = _plain_json(options.metadata or {})
        self.tracker = tracker if dist.main else None
        self.out_dir = Path(out_dir)
        self.state_dir = Path(options.state_dir) if options.state_dir is not None else default_state_dir(self.out_dir)
        self.state_path = self.state_dir / "last.pt"
        progress = options.progress
        self.show_progress = dist.main and (sys.stderr.isatty() if progress is None else progress)
        self.data, self.val_data, self.val_pids = training_sets(norm_dir, variant.modalities, cfg.val_patients, seed)
        self.cfg_dict = _plain_json(dataclasses.asdict(cfg))
        self.identity = identity(variant.to_dict(), seed, self.cfg_dict, dist.world)
        self.precision = Precision(cfg.amp, dist.device)
        self.monitor = Monitor(variant, cfg, self.val_data, dist.device, self.tracker, self.state_dir / "validation")
        self.losses = LossLog(LOSS_COLUMNS, cfg.log_every, cfg.iterations)
        self.run = RunState()
        self.wall = 0.0

    def fit(self) -> Path:
        """Train ``cfg.iterations`` iterations (from a resumable state if asked) and write the run."""
        with threads_and_determinism(self.cfg.threads):
            with torch.random.fork_rng(devices=self.dist.rng_devices):
                torch.manual_seed(self.seed)
                self.build()
                self.resume_or_start()
                self.log_start()
                self.train_loop()
            return self.finish()

    # ------------------------------------------------------------------ setup
    def build(self) -> None:
        """Networks (seeded init: G, then D), EMA, the step and the batch sampler."""
        v, cfg, dev = self.variant, self.cfg, self.dist.device
        G = build_from_spec(generator_spec(v, cfg)).to(dev)
        D = build_discriminator(self.data.n_modalities, cfg.base_channels, image_size=self.data.image_size).to(dev)
        ema = EMA(G, cfg.ema_decay) if cfg.ema_decay > 0 else None
        self.dist.broadcast(G, D)
        if ema is not None and self.dist.world > 1:
            ema.copy_from(G)
        self.step = GanStep(
            G, D, weights=LossWeights(v.lambda_pg, v.lambda_gan, v.lambda_l1), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
            gp_type=cfg.gp_type, gp_weight=cfg.gp_weight, pg_eps=effective_pg_eps(v, cfg), precision=self.precision,
            dist=self.dist, ema=ema, gp_seed=_sub_seed(self.seed, 3), compile=cfg.compile, name=f"variant {v.name}",
        )  # fmt: skip
        self.sampler = SeededBatchSampler(len(self.data), cfg.batch_size, _sub_seed(self.seed, 1),
                                          self.dist.rank, self.dist.world)  # fmt: skip

    def resume_or_start(self) -> None:
        """Load the resumable state (``resume``), or delete a stale one and start from scratch."""
        name = self.variant.name
        if self.resume and self.state_path.is_file():
            st = load_state(self.state_path, self.identity, self.cfg.iterations)
            self.step.load_state_dict(st)
            self.step.iteration = st["iteration"]
            self.sampler.load_state_dict(st["sampler"])
            self.losses.load_state_dict(st)
            self.run = RunState.from_state(st)
            log.info("train %s: resuming from %s at iteration %d", name, self.state_path, st["iteration"])
        elif self.resume:
            log.warning("train %s: --resume but no state at %s; starting from scratch", name, self.state_path)
        elif self.dist.main and self.state_dir.exists():
            log.warning("train %s: ignoring and deleting the stale state %s (no --resume)", name, self.state_dir)
            shutil.rmtree(self.state_dir)
        self.dist.barrier()

    def save_state(self, iteration: int) -> None:
        """The complete resumable state at ``iteration`` (rank 0)."""
        wall = self.run.wall_before + time.perf_counter() - self._t0
        parts = self.step.state_dict() | {"sampler": self.sampler.state_dict()} | self.losses.state_dict()
        save_state(self.state_path, iteration, self.identity, parts | self.run.state_dict(wall))
        log.info("train %s: resumable state at iteration %d -> %s", self.variant.name, iteration, self.state_path)

    def params(self) -> dict[str, Any]:
        """What the tracker logs as the run's parameters."""
        n = self.n_params()
        return self.variant.to_dict() | self.cfg_dict | {
            "seed": self.seed, "params_generator": n["generator"], "params_discriminator": n["discriminator"],
            "image_size": self.data.image_size, "n_train_slices": len(self.data),
            "n_val_slices": len(self.val_data) if self.val_data is not None else 0,
            "val_patient_ids": ",".join(self.val_pids), "d_n_layers": self.step.D.n_layers,
            "world_size": self.dist.world, "amp_effective": self.precision.mode,
            "resumed_from": self.run.resumed_from or 0,
        }  # fmt: skip

    def n_params(self) -> dict[str, int]:
        return {"generator": count_parameters(self.step.G), "discriminator": count_parameters(self.step.D)}

    def log_start(self) -> None:
        if self.tracker is not None:
            self.tracker.log_params(self.params())
        if not self.dist.main:
            return
        v, cfg, n, s = self.variant, self.cfg, self.n_params(), self.data.image_size
        log.info(
            "train %s: model=%s modalities=%s G=%d D=%d params, %d slices of %dx%d (%d validation, patients %s), "
            "%d iterations, batch %d x %d process(es), gp %s, amp %s, ema %g, seed %d",
            v.name, v.model, ",".join(v.modalities), n["generator"], n["discriminator"], len(self.data), s, s,
            len(self.val_data) if self.val_data else 0, self.val_pids, cfg.iterations, cfg.batch_size,
            self.dist.world, cfg.gp_type, self.precision.mode, cfg.ema_decay, self.seed,
        )  # fmt: skip

    # ------------------------------------------------------------------ loop
    def train_loop(self) -> None:
        """Iterations ``start+1 .. cfg.iterations``: a step, then logging, validation, state."""
        from tqdm.auto import tqdm

        start, dev = self.step.iteration, self.dist.device
        self.bar = tqdm(total=self.cfg.iterations, initial=start, desc=self.variant.name, unit="it",
                        disable=not self.show_progress, dynamic_ncols=True)  # fmt: skip
        self.step.G.train()
        self.step.D.train()
        self._t0, self._start = time.perf_counter(), start
        for it in range(start + 1, self.cfg.iterations + 1):
            x, y = self.data.batch(self.sampler.next_batch())
            values = self.step.step(x.to(dev), y.to(dev))
            self.bar.update(1)
            self.after_step(it, values)
        self.bar.close()
        self.wall = self.run.wall_before + time.perf_counter() - self._t0
        self.step.release()

    def after_step(self, it: int, values: dict[str, float]) -> None:
        row = self.losses.add(it, values)
        if row is not None:
            self.on_log(it, row)
        main = self.dist.main
        if main and self.monitor.due(it):
            self.monitor.validate(it, self.step.generator, self.step.D, self.run)
            self.monitor.health(it, self.losses.rows, self.run)
        every = self.cfg.checkpoint_every
        if main and every and it % every == 0 and it < self.cfg.iterations:
            self.save_state(it)

    def on_log(self, it: int, row: dict[str, float]) -> None:
        """A logged loss row: progress bar, log line, tracker; health when there is no validation."""
        rate = (it - self._start) / max(time.perf_counter() - self._t0, 1e-9)
        self.bar.set_postfix(d=f"{row['loss_d']:.3f}", g=f"{row['loss_g']:.3f}", pg=f"{row['loss_pg']:.3f}")
        if self.dist.main:
            log.info(
                "%s it %d/%d  loss_d=%.4f loss_g=%.4f pg=%.4f gan=%.4f l1=%.4f gp=%.4f  (%.2f it/s)",
                self.variant.name, it, self.cfg.iterations, row["loss_d"], row["loss_g"], row["loss_pg"],
                row["loss_gan"], row["loss_l1"], row["gp"], rate,
            )  # fmt: skip
        if self.tracker is not None:
            self.tracker.log_metrics({k: float(row[k]) for k in LOSS_COLUMNS}, step=it)
        if self.dist.main and self.val_data is None:
            self.monitor.health(it, self.losses.rows, self.run)

    # ------------------------------------------------------------------ end
    def finish(self) -> Path:
        """Check all ranks agree, then (rank 0) write the run directory and tell the tracker."""
        gen = self.step.generator
        last_g, last_d = cpu_state(gen), cpu_state(self.step.D)
        hashes = self.dist.gather_same(state_hash(last_g), f"variant {self.variant.name}")
        if not self.dist.main:
            self.dist.barrier()
            return self.out_dir
        summary = self.summary(hashes)
        title = f"{self.variant.name} ({self.variant.model}), {self.cfg.iterations} it"
        write_run_dir(
            self.out_dir, checkpoints=self.checkpoints(last_g, last_d), loss_rows=self.losses.rows,
            val_rows=self.run.val_rows, validation_pngs=self.state_dir / "validation",
            montage=partial(write_montage, G=gen, data=self.data, device=self.dist.device, title=title), summary=summary,
        )  # fmt: skip
        shutil.rmtree(self.state_dir, ignore_errors=True)
        log.info("train %s done: %d iterations in %.1f s (%.3f s/it); outputs in %s", self.variant.name,
                 self.cfg.iterations, self.wall, self.wall / self.cfg.iterations, self.out_dir)  # fmt: skip
        track_outputs(self.tracker, self.out_dir, summary)
        self.dist.barrier()
        return self.out_dir

    def checkpoints(self, last_g: dict[str, torch.Tensor], last_d: dict[str, torch.Tensor]) -> dict[str, dict[str, Any]]:
        """File name -> checkpoint (the last weights, and the best ones with validation)."""
        D = self.step.D
        common = {
            "spec": generator_spec(self.variant, self.cfg), "variant": self.variant,
            "discriminator_spec": {"in_channels": D.in_channels, "base_channels": self.cfg.base_channels,
                                   "n_layers": D.n_layers},
            "generator_is_ema": self.step.ema is not None, "seed": self.seed, "image_size": self.data.image_size,
            "train_config": self.cfg_dict, "metadata": self.metadata,
        }  # fmt: skip
        last = make_checkpoint(last_g, last_d, selected="last", selected_iteration=self.cfg.iterations, **common)
        best = None
        if self.run.val_rows:
            b = self.run.best
            best = make_checkpoint(b["generator"], b["discriminator"], selected="best",
                                   selected_iteration=b["iteration"], **common)  # fmt: skip
        return checkpoint_files(self.cfg.keep, last, best)

    def summary(self, hashes: list[str]) -> dict[str, Any]:
        """``train_summary.json``."""
        cfg, run, wall = self.cfg, self.run, self.wall
        summary = {
            "variant": self.variant.to_dict(), "seed": self.seed, "iterations": cfg.iterations,
            "batch_size": cfg.batch_size, "world_size": self.dist.world, "image_size": self.data.image_size,
            "n_train_slices": len(self.data), "n_val_slices": len(self.val_data) if self.val_data is not None else 0,
            "val_patients": self.val_pids, "threads": torch.get_num_threads(), "device": str(self.dist.device),
            "amp": self.precision.mode, "compile": cfg.compile, "gp_type": cfg.gp_type, "ema_decay": cfg.ema_decay,
            "resumed_from": run.resumed_from, "wall_time_s": wall,
            "iterations_per_s": cfg.iterations / wall if wall > 0 else None, "s_per_iteration": wall / cfg.iterations,
            "this_process_iterations": cfg.iterations - (run.resumed_from or 0), "params": self.n_params(),
            "final_losses": {k: self.losses.rows[-1][k] for k in LOSS_COLUMNS},
            "final_validation": {k: run.val_rows[-1][k] for k in VAL_COLUMNS} if run.val_rows else None,
            "best": {"iteration": run.best["iteration"], "val_norm_mae": run.best["val_norm_mae"]} if run.val_rows else None,
            "keep": cfg.keep, "health_warnings": run.warned, "generator_sha256_per_rank": hashes,
            "torch_version": torch.__version__,
        }  # fmt: skip
        gen = self.step.generator
        if hasattr(gen, "modality_weights"):
            summary["modality_weights"] = dict(zip(self.variant.modalities, gen.modality_weights().cpu().tolist()))
        return summary


def _sub_seed(seed: int, stream: int) -> int:
    """An independent seed for one random stream of the run (1: batches, 3: the penalty)."""
    return int(np.random.SeedSequence([seed, stream]).generate_state(1)[0])


def _plain_json(obj: Any) -> Any:
    """Tuples -> lists recursively: only plain python types go into checkpoints and states."""
    try:
        return json.loads(json.dumps(obj))
    except TypeError as exc:
        raise ValueError(f"metadata must be JSON-serialisable: {exc}") from exc


@contextmanager
def threads_and_determinism(threads: int) -> Iterator[None]:
    """``threads`` torch threads (0 = unchanged) and deterministic algorithms, restored after."""
    prev_threads = torch.get_num_threads()
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    if threads > 0:
        torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.set_num_threads(prev_threads)
        torch.use_deterministic_algorithms(prev_det, warn_only=prev_warn)
