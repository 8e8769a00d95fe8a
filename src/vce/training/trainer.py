"""Train one variant of the study: generator + conditional PatchGAN, LSGAN + pixelwise gradient (+ L1).

One iteration (pix2pix ordering, one generator forward per iteration)::

    fake = G(x)
    D step: lsgan_d(D(x, y), D(x, fake.detach())) + gp_weight * GP
    G step: lambda_pg * PG(fake, y) + lambda_gan * lsgan_g(D(x, fake)) + lambda_l1 * L1(fake, y)

Terms whose weight is 0 are not back-propagated; they are still computed without gradients
(the GAN term from the D step's scores) so every run logs the same columns.

Gradient penalty ``GP`` (``train.gp_type``, column ``gp`` of ``losses.csv``):

* ``r1`` (**default**): ``E ||grad_y D(x, y)||^2`` on real targets (Mescheder et al. 2018). It is
  the default because it needs no extra discriminator forward, is zero at the equilibrium
  (D flat on the data), and is the penalty shown to converge for non-Wasserstein losses such as
  the LSGAN loss used here; the paper itself names no penalty, so the cheapest stabiliser that
  leaves the LSGAN objective unchanged at its optimum is used.
* ``wgan_gp``: ``E (||grad D(x, x_hat)|| - 1)^2`` on random interpolates ``x_hat`` between the
  real and the generated T1C (Gulrajani et al. 2017); one extra D forward per iteration. The
  interpolation weights come from a dedicated seeded torch generator (part of the resumable
  state).

Outputs (written atomically into ``out_dir`` at the end): ``checkpoint.pt`` (plain tensors /
python types, loads with ``torch.load(weights_only=True)``; see ``train.keep``), ``losses.csv``,
``montage.png``, ``train_summary.json`` and, with validation on, ``validation.csv``,
``validation/it_XXXXXX.png`` and ``best.pt`` (``keep: last``) or ``last.pt`` (``keep: best``).

Resumable state: every ``train.checkpoint_every`` iterations the complete state (G, D, EMA,
both Adam optimisers, GradScaler, torch / CUDA / GP RNG states, the batch sampler's PCG64 state
and pending permutation, the loss rows and the running averaging window, validation rows,
best-checkpoint weights, health flags) is written atomically (temp file + rename) to
``<state_dir>/last.pt``; ``state_dir`` defaults to the sibling ``<out_dir>.partial/`` (``out_dir``
itself only appears at the very end). ``resume=True`` continues from it -- on CPU the final
weights are bit-identical to an uninterrupted run. Without ``resume`` an existing state is
**deleted** and training starts from scratch. After a successful run the state directory is
deleted.

Mixed precision (``train.amp``): ``bf16`` / ``fp16`` autocast of the G and D forwards; the
paper's losses are computed in float32 on ``.float()`` outputs. ``fp16`` uses a GradScaler and
needs CUDA (on CPU it falls back to fp32 with a warning); the gradient penalty takes its input
gradient of the scaled output and unscales it (torch AMP recipe). ``train.compile`` wraps G
(and D when no gradient penalty is used: compiled graphs do not support the double backward of
a penalty) in ``torch.compile``.

Data parallel: run under ``torchrun`` (``WORLD_SIZE > 1``): backend nccl on CUDA, gloo on CPU.
Every rank draws its own contiguous shard of each seeded global batch (``batch_size`` is per
process, so the effective batch is ``batch_size * world_size``); gradients are averaged with one
flattened ``all_reduce`` per network (explicit, because DistributedDataParallel does not support
the penalty's double backward), so all ranks keep identical weights; a hash of every rank's final
generator is gathered and checked. Only rank 0 validates, logs to the tracker, shows progress and
writes files.

Validation (``train.val_patients`` > 0): whole TRAIN patients (from ``index.csv``, seeded, never
test patients) are held out of training; every ``train.val_every`` iterations and at the end,
MAE, SSIM (7x7 window, ``data_range`` = range of the validation targets) and the pixelwise
gradient loss are computed in the normalised space on all their slices, with the EMA generator
when ``train.ema_decay > 0``.

GAN health (:func:`gan_health`): a warning (log, tracker metric ``health_<name>`` = 1 and tag
``vce.health.<name>`` when the tracker has ``set_tags``) once when the mean ``loss_d`` of the last
``health_window`` logged rows falls below ``d_collapse_loss`` (the discriminator wins
completely) or when the generator's monitored value (validation MAE, else the training pixelwise
gradient / L1 loss) has not improved for ``patience`` validations / logged rows.

Reproducibility: initialisation uses ``torch.manual_seed(seed)`` inside
:func:`torch.random.fork_rng` (the caller's global RNG is untouched) and batches come from a
``numpy`` generator seeded from ``seed``; on CPU two runs with the same seed give bit-identical
losses (deterministic algorithms are requested for the duration of the run).
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from vce.config import TrainConfig, Variant
from vce.io.atomic import atomic_dir, atomic_file
from vce.io.errors import VCEInputError
from vce.losses import l1_loss, lsgan_d_loss, lsgan_g_loss, pixelwise_gradient_loss, r1_penalty, wgan_gp_penalty
from vce.models.factory import build_discriminator, build_generator, count_parameters, output_for
from vce.tracking import Tracker
from vce.training.data import SeededBatchSampler, SliceDataset, holdout_patients

__all__ = ["LOSS_COLUMNS", "VAL_COLUMNS", "gan_health", "train_variant", "montage_indices", "default_state_dir"]

log = logging.getLogger(__name__)

LOSS_COLUMNS = ("loss_d", "loss_g", "loss_pg", "loss_gan", "loss_l1", "gp")
VAL_COLUMNS = ("val_mae", "val_ssim", "val_pg")
CHECKPOINT_FORMAT = 1
STATE_FORMAT = 1
GP_TYPES = ("r1", "wgan_gp")
AMP_MODES = ("off", "bf16", "fp16")
KEEP = ("last", "best")
#: TrainConfig fields that may differ between an interrupted run and its resumption.
RESUME_FREE = ("iterations", "checkpoint_every", "threads")


def generator_arch(model: str, cfg: TrainConfig) -> dict[str, Any]:
    """Architecture keywords of the generator beyond (modalities, base channels): PGMGVCE's number
    of halvings (``train.pgmgvce_depth``); MMgSN-Net's layout is fixed."""
    return {"depth": cfg.pgmgvce_depth} if model == "pgmgvce" else {}


def _check_cfg(cfg: TrainConfig, variant: Variant) -> None:
    problems = []
    for name in ("iterations", "batch_size", "log_every", "base_channels", "val_every", "health_window", "patience"):
        if getattr(cfg, name) < 1:
            problems.append(f"{name} must be >= 1 (got {getattr(cfg, name)})")
    if cfg.lr <= 0:
        problems.append(f"lr must be > 0 (got {cfg.lr})")
    if cfg.gp_weight < 0:
        problems.append(f"gp_weight must be >= 0 (got {cfg.gp_weight})")
    if cfg.pg_eps <= 0:
        problems.append(f"pg_eps must be > 0 (got {cfg.pg_eps})")
    if cfg.gp_type not in GP_TYPES:
        problems.append(f"gp_type must be one of {GP_TYPES} (got {cfg.gp_type!r})")
    if cfg.amp not in AMP_MODES:
        problems.append(f"amp must be one of {AMP_MODES} (got {cfg.amp!r})")
    if cfg.keep not in KEEP:
        problems.append(f"keep must be one of {KEEP} (got {cfg.keep!r})")
    if cfg.keep == "best" and cfg.val_patients <= 0:
        problems.append("keep: best needs validation (val_patients > 0)")
    if cfg.checkpoint_every < 0:
        problems.append(f"checkpoint_every must be >= 0 (got {cfg.checkpoint_every})")
    if cfg.val_patients < 0 or (cfg.val_patients >= 1 and not float(cfg.val_patients).is_integer()):
        problems.append(f"val_patients must be 0, a count >= 1 or a fraction in (0, 1) (got {cfg.val_patients})")
    if not 0 <= cfg.ema_decay < 1:
        problems.append(f"ema_decay must be in [0, 1) (got {cfg.ema_decay})")
    if variant.lambda_pg + variant.lambda_gan + variant.lambda_l1 <= 0:
        problems.append(f"variant {variant.name}: all generator loss weights are 0, nothing to train")
    if problems:
        raise ValueError("invalid training settings: " + "; ".join(problems))


def _plain(obj: Any) -> Any:
    """Tuples -> lists recursively (only plain python types go into the checkpoint)."""
    return json.loads(json.dumps(obj))


def default_state_dir(out_dir: str | Path) -> Path:
    """Where the resumable state lives by default: the sibling ``<out_dir>.partial/``."""
    out_dir = Path(out_dir)
    return out_dir.parent / f"{out_dir.name}.partial"


def montage_indices(n: int, k: int = 4) -> list[int]:
    """``k`` fixed, evenly spaced slice indices in ``[0, n)`` (fewer if ``n < k``)."""
    return sorted({int(round(v)) for v in np.linspace(0, n - 1, num=min(k, n))})


def gan_health(
    loss_d: Sequence[float],
    g_metric: Sequence[float],
    *,
    window: int,
    d_collapse_loss: float,
    patience: int,
    g_name: str = "val_mae",
) -> dict[str, str]:
    """Detect an unhealthy GAN from its history; returns ``{problem: message}`` (empty = healthy).

    ``loss_d``: the logged (window-averaged) discriminator losses, oldest first. ``d_collapse``:
    their mean over the last ``window`` entries is below ``d_collapse_loss`` (LSGAN: 0 = D
    separates real and fake perfectly; about 0.25 at the equilibrium). ``g_metric``: a
    lower-is-better generator measure, one per validation (or logged row); ``g_stalled``: its
    minimum over the last ``patience`` entries is not below the minimum of all earlier entries.
    """
    problems: dict[str, str] = {}
    if len(loss_d) >= window:
        m = float(np.mean(loss_d[-window:]))
        if m < d_collapse_loss:
            problems["d_collapse"] = (
                f"discriminator collapse: mean loss_d {m:.4g} over the last {window} logged rows < {d_collapse_loss}"
            )
    if len(g_metric) > patience:
        before, recent = min(g_metric[:-patience]), min(g_metric[-patience:])
        if not recent < before:
            problems["g_stalled"] = (
                f"generator stalled: {g_name} has not improved for {patience} evaluations "
                f"(best recent {recent:.4g} >= earlier best {before:.4g})"
            )
    return problems


def _write_montage(path: Path, G: nn.Module, data: SliceDataset, device: torch.device, title: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    idx = montage_indices(len(data))
    x, y = data.batch(idx)
    was_training = G.training
    G.eval()
    with torch.no_grad():
        fake = G(x.to(device)).float().cpu()
    G.train(was_training)
    cols = [*data.modalities, "VCE (G output)", "T1C (target)", "|error|"]
    fig = Figure(figsize=(2.0 * len(cols), 2.0 * len(idx) + 0.4), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(idx), len(cols), squeeze=False)
    for r, i in enumerate(idx):
        tgt = y[r, 0].numpy()
        lo, hi = np.percentile(tgt, [1, 99])
        if hi <= lo:
            hi = lo + 1.0
        err = np.abs(fake[r, 0].numpy() - tgt)
        panels = [x[r, c].numpy() for c in range(x.shape[1])] + [fake[r, 0].numpy(), tgt, err]
        for c, img in enumerate(panels):
            ax = axes[r][c]
            if c == len(panels) - 1:
                ax.imshow(img, cmap="magma", vmin=0.0, vmax=max(float(hi - lo), 1e-6))
            elif c < x.shape[1]:
                ilo, ihi = np.percentile(img, [1, 99])
                ax.imshow(img, cmap="gray", vmin=ilo, vmax=ihi if ihi > ilo else ilo + 1.0)
            else:
                ax.imshow(img, cmap="gray", vmin=lo, vmax=hi)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(cols[c], fontsize=8)
            if c == 0:
                ax.set_ylabel(f"slice {i}", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)


def _validate(G: nn.Module, data: SliceDataset, device: torch.device, eps: float, data_range: float) -> dict[str, float]:
    """MAE, SSIM and pixelwise-gradient loss of ``G`` on every slice of ``data`` (normalised units)."""
    from vce.metrics.similarity import ssim

    was_training = G.training
    G.eval()
    maes: list[float] = []
    ssims: list[float] = []
    pg_sum, n = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(data), 32):
            x, y = data.batch(np.arange(start, min(start + 32, len(data))))
            pred = G(x.to(device)).float().cpu()
            pg_sum += float(pixelwise_gradient_loss(pred, y, eps)) * len(y)
            n += len(y)
            for p, t in zip(pred[:, 0].numpy(), y[:, 0].numpy()):
                maes.append(float(np.mean(np.abs(p.astype(np.float64) - t))))
                ssims.append(ssim(p, t, data_range=data_range))
    G.train(was_training)
    return {"val_mae": float(np.mean(maes)), "val_ssim": float(np.mean(ssims)), "val_pg": pg_sum / n}


def _write_rows(path: Path, rows: list[dict[str, float]], columns: Sequence[str]) -> None:
    """CSV ``iteration, *columns`` with one line per row, floats as ``repr`` (round-trip exact)."""
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["iteration", *columns])
        for row in rows:
            writer.writerow([row["iteration"], *(repr(float(row[k])) for k in columns)])


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def _state_hash(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _allreduce_grads(module: nn.Module, world: int) -> None:
    """Average the gradients of ``module`` over all ranks (one flattened all_reduce)."""
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def _resolve_amp(amp: str, device: torch.device) -> str:
    if amp == "fp16" and device.type != "cuda":
        log.warning("train.amp=fp16 needs CUDA (GradScaler); running in fp32 on %s instead", device)
        return "off"
    return amp


def _comparable(cfg_dict: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in cfg_dict.items() if k not in RESUME_FREE}


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

    ``device``: default ``cuda`` when available, else ``cpu`` (bit-identical reruns are
    guaranteed on CPU; under torchrun on CUDA each rank uses ``cuda:<LOCAL_RANK>``).
    ``progress``: show a tqdm bar (default: only when stderr is a terminal; rank 0 only).
    ``metadata``: extra JSON-serialisable information for later steps (e.g. image size,
    calibration, MLflow run id), stored as ``checkpoint["metadata"]`` (tuples become lists) and
    returned by :func:`~vce.models.factory.load_generator`. ``resume``: continue from
    ``<state_dir>/last.pt`` when it exists (else start fresh, with a warning); without it an
    existing state is deleted. ``state_dir``: default :func:`default_state_dir`. Returns ``out_dir``.
    Raises :class:`~vce.io.errors.VCEInputError` for missing/mismatched inputs and
    ``FloatingPointError`` if a loss becomes non-finite.
    """
    from tqdm.auto import tqdm

    variant = Variant.from_any(variant)
    _check_cfg(cfg, variant)
    try:
        metadata = _plain(metadata or {})
    except TypeError as exc:
        raise ValueError(f"metadata must be JSON-serialisable: {exc}") from exc
    out_dir = Path(out_dir)
    state_dir = Path(state_dir) if state_dir is not None else default_state_dir(out_dir)
    state_path = state_dir / "last.pt"

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    own_group = False
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        own_group = True
    if world > 1:
        world, rank = dist.get_world_size(), dist.get_rank()
    main = rank == 0
    if not main:
        tracker = None

    try:
        return _train(
            norm_dir, out_dir, variant, cfg, seed, tracker, device, progress, metadata, resume, state_dir,
            state_path, world, rank, main, tqdm,
        )
    finally:
        if own_group:
            dist.destroy_process_group()


def _train(
    norm_dir, out_dir, variant, cfg, seed, tracker, device, progress, metadata, resume, state_dir, state_path,
    world, rank, main, tqdm,
) -> Path:  # noqa: ANN001 - internal, see train_variant
    val_pids: list[str] = []
    if cfg.val_patients > 0:
        train_rows, val_rows, val_pids = holdout_patients(norm_dir, "train", cfg.val_patients, seed)
        full = SliceDataset(norm_dir, "train", variant.modalities)
        n_index = len(train_rows) + len(val_rows)
        if n_index != len(full):
            raise VCEInputError(
                f"{Path(norm_dir) / 'train' / 'index.csv'}: {n_index} rows but the slice store has {len(full)} slices"
            )
        data = SliceDataset(norm_dir, "train", variant.modalities, rows=train_rows)
        val_data: SliceDataset | None = SliceDataset(norm_dir, "train", variant.modalities, rows=val_rows)
        _, vy = val_data.batch(np.arange(len(val_data)))
        val_range = float(vy.max() - vy.min()) or 1.0
    else:
        data = SliceDataset(norm_dir, "train", variant.modalities)
        val_data, val_range = None, 1.0
    n_mod = data.n_modalities
    size = data.image_size
    amp = _resolve_amp(cfg.amp, device)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)

    def autocast():  # noqa: ANN202
        if amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=device.type, dtype=amp_dtype)

    prev_threads = torch.get_num_threads()
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_det_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    rng_devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=rng_devices):
            torch.manual_seed(seed)
            G = build_generator(variant.model, n_mod, cfg.base_channels, output_for(variant.normalization),
                                **generator_arch(variant.model, cfg)).to(device)
            D = build_discriminator(n_mod, cfg.base_channels, image_size=size).to(device)
            G_ema = None
            if cfg.ema_decay > 0:
                G_ema = copy.deepcopy(G).eval()
                for p in G_ema.parameters():
                    p.requires_grad_(False)
            if world > 1:
                for t in [*G.state_dict().values(), *D.state_dict().values()]:
                    dist.broadcast(t, 0)
                if G_ema is not None:
                    G_ema.load_state_dict(G.state_dict())
            gp_gen = torch.Generator(device="cpu").manual_seed(int(np.random.SeedSequence([seed, 3]).generate_state(1)[0]))
            sampler = SeededBatchSampler(
                len(data), cfg.batch_size, int(np.random.SeedSequence([seed, 1]).generate_state(1)[0]), rank, world
            )
            opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
            opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
            scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
            Gc = torch.compile(G) if cfg.compile else G
            Dc = torch.compile(D) if cfg.compile and cfg.gp_weight == 0 else D
            n_params = {"generator": count_parameters(G), "discriminator": count_parameters(D)}
            cfg_dict = _plain(dataclasses.asdict(cfg))

            # ------------------------------------------------------------ state / resume
            start = 0
            rows: list[dict[str, float]] = []
            val_log: list[dict[str, float]] = []
            window = {k: 0.0 for k in LOSS_COLUMNS}
            n_window = 0
            best: dict[str, Any] = {"iteration": 0, "val_mae": math.inf, "generator": None, "discriminator": None}
            warned: list[str] = []
            wall_before = 0.0
            resumed_from = None
            if resume and state_path.is_file():
                st = torch.load(state_path, map_location="cpu", weights_only=True)
                mismatch = [
                    what for what, a, b in (
                        ("variant", st["variant"], variant.to_dict()), ("seed", st["seed"], seed),
                        ("train config", _comparable(st["train_config"]), _comparable(cfg_dict)),
                        ("world size", st["world_size"], world),
                    ) if a != b
                ]  # fmt: skip
                if mismatch:
                    raise VCEInputError(f"{state_path}: cannot resume, the {', '.join(mismatch)} differ(s) from this run")
                if st["iteration"] >= cfg.iterations:
                    raise VCEInputError(f"{state_path}: state is at iteration {st['iteration']} >= iterations {cfg.iterations}")
                G.load_state_dict(st["generator"])
                D.load_state_dict(st["discriminator"])
                if G_ema is not None:
                    G_ema.load_state_dict(st["generator_ema"])
                opt_g.load_state_dict(st["opt_g"])
                opt_d.load_state_dict(st["opt_d"])
                scaler.load_state_dict(st["scaler"])
                torch.set_rng_state(st["torch_rng"])
                if device.type == "cuda" and st.get("cuda_rng") is not None:
                    torch.cuda.set_rng_state(st["cuda_rng"], device)
                gp_gen.set_state(st["gp_rng"])
                sampler.load_state_dict(st["sampler"])
                start, rows, val_log = st["iteration"], st["rows"], st["val_rows"]
                window, n_window = st["window"], st["n_window"]
                best, warned, wall_before = st["best"], st["warned"], st["wall_s"]
                resumed_from = start
                log.info("train %s: resuming from %s at iteration %d", variant.name, state_path, start)
            elif resume:
                log.warning("train %s: --resume but no state at %s; starting from scratch", variant.name, state_path)
            elif main and state_dir.exists():
                log.warning("train %s: ignoring and deleting the stale state %s (no --resume)", variant.name, state_dir)
                shutil.rmtree(state_dir)
            if world > 1:
                dist.barrier()

            params = (
                variant.to_dict()
                | cfg_dict
                | {
                    "seed": seed,
                    "params_generator": n_params["generator"],
                    "params_discriminator": n_params["discriminator"],
                    "image_size": size,
                    "n_train_slices": len(data),
                    "n_val_slices": len(val_data) if val_data is not None else 0,
                    "val_patient_ids": ",".join(val_pids),
                    "d_n_layers": D.n_layers,
                    "world_size": world,
                    "amp_effective": amp,
                    "resumed_from": resumed_from or 0,
                }
            )
            if tracker is not None:
                tracker.log_params(params)
            if main:
                log.info(
                    "train %s: model=%s modalities=%s G=%d D=%d params, %d slices of %dx%d (%d validation, patients %s), "
                    "%d iterations, batch %d x %d process(es), gp %s, amp %s, ema %g, seed %d",
                    variant.name, variant.model, ",".join(variant.modalities), n_params["generator"],
                    n_params["discriminator"], len(data), size, size, len(val_data) if val_data else 0, val_pids,
                    cfg.iterations, cfg.batch_size, world, cfg.gp_type, amp, cfg.ema_decay, seed,
                )  # fmt: skip

            def save_state(it: int, elapsed: float) -> None:
                state = {
                    "format_version": STATE_FORMAT,
                    "iteration": it,
                    "variant": variant.to_dict(),
                    "seed": seed,
                    "train_config": cfg_dict,
                    "world_size": world,
                    "generator": _cpu_state(G),
                    "discriminator": _cpu_state(D),
                    "generator_ema": _cpu_state(G_ema) if G_ema is not None else None,
                    "opt_g": opt_g.state_dict(),
                    "opt_d": opt_d.state_dict(),
                    "scaler": scaler.state_dict(),
                    "torch_rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                    "gp_rng": gp_gen.get_state(),
                    "sampler": sampler.state_dict(),
                    "rows": rows,
                    "window": window,
                    "n_window": n_window,
                    "val_rows": val_log,
                    "best": best,
                    "warned": warned,
                    "wall_s": elapsed,
                }
                with atomic_file(state_path) as tmp:
                    torch.save(state, tmp)
                log.info("train %s: resumable state at iteration %d -> %s", variant.name, it, state_path)

            def health(it: int) -> None:
                if val_log:
                    g_name, series = "val_mae", [r["val_mae"] for r in val_log]
                else:
                    g_name = "loss_pg" if variant.lambda_pg > 0 else ("loss_l1" if variant.lambda_l1 > 0 else "loss_gan")
                    series = [r[g_name] for r in rows]
                found = gan_health(
                    [r["loss_d"] for r in rows], series, window=cfg.health_window, d_collapse_loss=cfg.d_collapse_loss,
                    patience=cfg.patience, g_name=g_name,
                )
                for name, msg in found.items():
                    if name in warned:
                        continue
                    warned.append(name)
                    log.warning("train %s it %d: %s", variant.name, it, msg)
                    if tracker is not None:
                        tracker.log_metrics({f"health_{name}": 1.0}, step=it)
                        set_tags = getattr(tracker, "set_tags", None)
                        if set_tags is not None:
                            set_tags({f"vce.health.{name}": f"it {it}: {msg}"})

            show = main and (sys.stderr.isatty() if progress is None else progress)
            bar = tqdm(total=cfg.iterations, initial=start, desc=variant.name, unit="it", disable=not show, dynamic_ncols=True)
            G.train()
            D.train()
            t0 = time.perf_counter()
            for it in range(start + 1, cfg.iterations + 1):
                x, y = data.batch(sampler.next_batch())
                x, y = x.to(device), y.to(device)
                with autocast():
                    fake = Gc(x)
                grad_scale = float(scaler.get_scale()) if scaler.is_enabled() else 1.0

                # --- discriminator step: LSGAN on real vs fake, + gradient penalty ---
                for p in D.parameters():
                    p.requires_grad_(True)
                use_r1 = cfg.gp_weight > 0 and cfg.gp_type == "r1"
                y_real = y.detach().requires_grad_(use_r1)
                with autocast():
                    d_real = Dc(x, y_real)
                    d_fake = Dc(x, fake.detach())
                loss_d_gan = lsgan_d_loss(d_real.float(), d_fake.float())
                if cfg.gp_weight <= 0:
                    gp = loss_d_gan.new_zeros(())
                elif use_r1:
                    gp = r1_penalty(d_real, y_real, grad_scale=grad_scale)
                else:
                    alpha = torch.rand(y.shape[0], 1, 1, 1, generator=gp_gen).to(device)

                    def d_of(img: torch.Tensor, x: torch.Tensor = x) -> torch.Tensor:
                        with autocast():
                            return Dc(x, img)

                    gp = wgan_gp_penalty(d_of, y, fake.float(), alpha=alpha, grad_scale=grad_scale)
                loss_d = loss_d_gan + cfg.gp_weight * gp
                opt_d.zero_grad(set_to_none=True)
                scaler.scale(loss_d).backward()
                if world > 1:
                    _allreduce_grads(D, world)
                scaler.step(opt_d)

                # --- generator step (losses in float32) ---
                for p in D.parameters():
                    p.requires_grad_(False)
                target = y.detach()
                fake32 = fake.float()
                terms: list[torch.Tensor] = []
                if variant.lambda_gan > 0:
                    with autocast():
                        d_gen = Dc(x, fake)
                    loss_gan = lsgan_g_loss(d_gen.float())
                    terms.append(variant.lambda_gan * loss_gan)
                else:
                    loss_gan = lsgan_g_loss(d_fake.detach().float())
                if variant.lambda_pg > 0:
                    loss_pg = pixelwise_gradient_loss(fake32, target, cfg.pg_eps)
                    terms.append(variant.lambda_pg * loss_pg)
                else:
                    with torch.no_grad():
                        loss_pg = pixelwise_gradient_loss(fake32, target, cfg.pg_eps)
                if variant.lambda_l1 > 0:
                    loss_l1 = l1_loss(fake32, target)
                    terms.append(variant.lambda_l1 * loss_l1)
                else:
                    with torch.no_grad():
                        loss_l1 = l1_loss(fake32, target)
                loss_g = sum(terms[1:], terms[0])
                opt_g.zero_grad(set_to_none=True)
                scaler.scale(loss_g).backward()
                if world > 1:
                    _allreduce_grads(G, world)
                scaler.step(opt_g)
                scaler.update()
                if G_ema is not None:
                    with torch.no_grad():
                        for pe, p in zip(G_ema.parameters(), G.parameters()):
                            pe.mul_(cfg.ema_decay).add_(p.detach(), alpha=1.0 - cfg.ema_decay)
                        for be, b in zip(G_ema.buffers(), G.buffers()):
                            be.copy_(b)

                vals = torch.stack([t.detach().float() for t in (loss_d, loss_g, loss_pg, loss_gan, loss_l1, gp)])
                if world > 1:
                    dist.all_reduce(vals)
                    vals /= world
                values = dict(zip(LOSS_COLUMNS, vals.cpu().tolist()))
                bad = [k for k, v in values.items() if not math.isfinite(v)]
                if bad:
                    raise FloatingPointError(f"variant {variant.name}: non-finite {bad} at iteration {it}: {values}")
                for k, v in values.items():
                    window[k] += v
                n_window += 1
                bar.update(1)
                if it == 1 or it % cfg.log_every == 0 or it == cfg.iterations:
                    row = {"iteration": it} | {k: window[k] / n_window for k in LOSS_COLUMNS}
                    rows.append(row)
                    window = {k: 0.0 for k in LOSS_COLUMNS}
                    n_window = 0
                    rate = (it - start) / max(time.perf_counter() - t0, 1e-9)
                    bar.set_postfix(d=f"{row['loss_d']:.3f}", g=f"{row['loss_g']:.3f}", pg=f"{row['loss_pg']:.3f}")
                    if main:
                        log.info(
                            "%s it %d/%d  loss_d=%.4f loss_g=%.4f pg=%.4f gan=%.4f l1=%.4f gp=%.4f  (%.2f it/s)",
                            variant.name, it, cfg.iterations, row["loss_d"], row["loss_g"], row["loss_pg"],
                            row["loss_gan"], row["loss_l1"], row["gp"], rate,
                        )  # fmt: skip
                    if tracker is not None:
                        tracker.log_metrics({k: float(row[k]) for k in LOSS_COLUMNS}, step=it)
                    if main and val_data is None:
                        health(it)
                if main and val_data is not None and (it % cfg.val_every == 0 or it == cfg.iterations):
                    gen = G_ema if G_ema is not None else G
                    vrow = {"iteration": it} | _validate(gen, val_data, device, cfg.pg_eps, val_range)
                    val_log.append(vrow)
                    log.info("%s it %d validation: MAE %.4f SSIM %.4f pg %.4f", variant.name, it,
                             vrow["val_mae"], vrow["val_ssim"], vrow["val_pg"])  # fmt: skip
                    png = state_dir / "validation" / f"it_{it:06d}.png"
                    png.parent.mkdir(parents=True, exist_ok=True)
                    with atomic_file(png) as tmp:
                        _write_montage(tmp, gen, val_data, device, f"{variant.name} validation, it {it}")
                    if vrow["val_mae"] < best["val_mae"]:
                        best = {"iteration": it, "val_mae": vrow["val_mae"], "generator": _cpu_state(gen),
                                "discriminator": _cpu_state(D)}  # fmt: skip
                    if tracker is not None:
                        tracker.log_metrics({k: float(vrow[k]) for k in VAL_COLUMNS}, step=it)
                        tracker.log_artifact(png, artifact_path="validation")
                    health(it)
                if main and cfg.checkpoint_every and it % cfg.checkpoint_every == 0 and it < cfg.iterations:
                    save_state(it, wall_before + time.perf_counter() - t0)
            bar.close()
            wall = wall_before + time.perf_counter() - t0
            for p in D.parameters():
                p.requires_grad_(True)

        final_gen = G_ema if G_ema is not None else G
        last_g, last_d = _cpu_state(final_gen), _cpu_state(D)
        hashes = [_state_hash(last_g)]
        if world > 1:
            gathered: list[Any] = [None] * world
            dist.all_gather_object(gathered, hashes[0])
            hashes = [str(h) for h in gathered]
            if len(set(hashes)) != 1:
                raise RuntimeError(f"variant {variant.name}: ranks ended with different generator weights: {hashes}")
        if not main:
            dist.barrier()
            return out_dir

        n_iter_done = cfg.iterations - (resumed_from or 0)
        summary = {
            "variant": variant.to_dict(),
            "seed": seed,
            "iterations": cfg.iterations,
            "batch_size": cfg.batch_size,
            "world_size": world,
            "image_size": size,
            "n_train_slices": len(data),
            "n_val_slices": len(val_data) if val_data is not None else 0,
            "val_patients": val_pids,
            "threads": torch.get_num_threads(),
            "device": str(device),
            "amp": amp,
            "compile": cfg.compile,
            "gp_type": cfg.gp_type,
            "ema_decay": cfg.ema_decay,
            "resumed_from": resumed_from,
            "wall_time_s": wall,
            "iterations_per_s": cfg.iterations / wall if wall > 0 else None,
            "s_per_iteration": wall / cfg.iterations,
            "this_process_iterations": n_iter_done,
            "params": n_params,
            "final_losses": {k: rows[-1][k] for k in LOSS_COLUMNS},
            "final_validation": {k: val_log[-1][k] for k in VAL_COLUMNS} if val_log else None,
            "best": {"iteration": best["iteration"], "val_mae": best["val_mae"]} if val_log else None,
            "keep": cfg.keep,
            "health_warnings": warned,
            "generator_sha256_per_rank": hashes,
            "torch_version": torch.__version__,
        }
        if hasattr(G, "modality_weights"):
            summary["modality_weights"] = dict(zip(variant.modalities, final_gen.modality_weights().cpu().tolist()))

        def checkpoint(g_state: dict, d_state: dict, which: str, iteration: int) -> dict[str, Any]:
            return {
                "format_version": CHECKPOINT_FORMAT,
                "generator": g_state,
                "discriminator": d_state,
                "variant": variant.to_dict(),
                "model": {"name": variant.model, "n_modalities": n_mod, "base_channels": cfg.base_channels,
                          "output": output_for(variant.normalization), "arch": generator_arch(variant.model, cfg)},
                "discriminator_model": {"in_channels": D.in_channels, "base_channels": cfg.base_channels,
                                        "n_layers": D.n_layers},
                "iterations": cfg.iterations,
                "selected": which,
                "selected_iteration": iteration,
                "generator_is_ema": G_ema is not None,
                "seed": seed,
                "image_size": size,
                "modalities": list(variant.modalities),
                "train_config": cfg_dict,
                "metadata": metadata,
            }  # fmt: skip

        ck_last = checkpoint(last_g, last_d, "last", cfg.iterations)
        ck_best = checkpoint(best["generator"], best["discriminator"], "best", best["iteration"]) if val_log else None
        with atomic_dir(out_dir) as tmp:
            if cfg.keep == "best":
                torch.save(ck_best, tmp / "checkpoint.pt")
                torch.save(ck_last, tmp / "last.pt")
            else:
                torch.save(ck_last, tmp / "checkpoint.pt")
                if ck_best is not None:
                    torch.save(ck_best, tmp / "best.pt")
            _write_rows(tmp / "losses.csv", rows, LOSS_COLUMNS)
            if val_log:
                _write_rows(tmp / "validation.csv", val_log, VAL_COLUMNS)
                if (state_dir / "validation").is_dir():
                    shutil.copytree(state_dir / "validation", tmp / "validation")
            _write_montage(tmp / "montage.png", final_gen, data, device, f"{variant.name} ({variant.model}), {cfg.iterations} it")
            (tmp / "train_summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
        shutil.rmtree(state_dir, ignore_errors=True)
        log.info(
            "train %s done: %d iterations in %.1f s (%.3f s/it); outputs in %s",
            variant.name, cfg.iterations, wall, wall / cfg.iterations, out_dir,
        )  # fmt: skip
        if tracker is not None:
            tracker.log_metrics({"iterations_per_s": summary["iterations_per_s"] or 0.0, "wall_time_s": wall}, step=cfg.iterations)
            tracker.log_artifact(out_dir / "montage.png")
            tracker.log_artifact(out_dir / "checkpoint.pt", artifact_path="model")
            tracker.log_artifact(out_dir / "losses.csv")
            if val_log:
                tracker.log_artifact(out_dir / "validation.csv")
        if world > 1:
            dist.barrier()
        return out_dir
    finally:
        torch.set_num_threads(prev_threads)
        torch.use_deterministic_algorithms(prev_det, warn_only=prev_det_warn)
