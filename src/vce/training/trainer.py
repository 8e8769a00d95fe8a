"""Train one variant of the study: generator + conditional PatchGAN, LSGAN + pixelwise gradient (+ L1).

One iteration (pix2pix ordering, one generator forward per iteration)::

    fake = G(x)
    D step: lsgan_d(D(x, y), D(x, fake.detach())) + gp_weight * R1(D, y)
    G step: lambda_pg * PG(fake, y) + lambda_gan * lsgan_g(D(x, fake)) + lambda_l1 * L1(fake, y)

Terms whose weight is 0 are not back-propagated; they are still computed without gradients
(the GAN term from the D step's scores) so every run logs the same columns.

Outputs (written atomically into ``out_dir``): ``checkpoint.pt`` (plain tensors / python types,
loads with ``torch.load(weights_only=True)``), ``losses.csv``, ``montage.png`` and
``train_summary.json``.

Reproducibility: the generator/discriminator initialisation uses ``torch.manual_seed(seed)``
(inside :func:`torch.random.fork_rng`, so the caller's global RNG is untouched) and batches
come from a ``numpy`` generator seeded from ``seed``; on CPU two runs with the same seed give
bit-identical losses (deterministic algorithms are requested for the duration of the run).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from vce.config import TrainConfig, Variant
from vce.io.atomic import atomic_dir
from vce.losses import l1_loss, lsgan_d_loss, lsgan_g_loss, pixelwise_gradient_loss, r1_penalty
from vce.models.factory import build_discriminator, build_generator, count_parameters, output_for
from vce.tracking import Tracker
from vce.training.data import SeededBatchSampler, SliceDataset

__all__ = ["LOSS_COLUMNS", "train_variant", "montage_indices"]

log = logging.getLogger(__name__)

LOSS_COLUMNS = ("loss_d", "loss_g", "loss_pg", "loss_gan", "loss_l1", "r1")
CHECKPOINT_FORMAT = 1


def _check_cfg(cfg: TrainConfig, variant: Variant) -> None:
    problems = []
    if cfg.iterations < 1:
        problems.append(f"iterations must be >= 1 (got {cfg.iterations})")
    if cfg.batch_size < 1:
        problems.append(f"batch_size must be >= 1 (got {cfg.batch_size})")
    if cfg.log_every < 1:
        problems.append(f"log_every must be >= 1 (got {cfg.log_every})")
    if cfg.base_channels < 1:
        problems.append(f"base_channels must be >= 1 (got {cfg.base_channels})")
    if cfg.lr <= 0:
        problems.append(f"lr must be > 0 (got {cfg.lr})")
    if cfg.gp_weight < 0:
        problems.append(f"gp_weight must be >= 0 (got {cfg.gp_weight})")
    if cfg.pg_eps <= 0:
        problems.append(f"pg_eps must be > 0 (got {cfg.pg_eps})")
    if variant.lambda_pg + variant.lambda_gan + variant.lambda_l1 <= 0:
        problems.append(f"variant {variant.name}: all generator loss weights are 0, nothing to train")
    if problems:
        raise ValueError("invalid training settings: " + "; ".join(problems))


def _plain(obj: Any) -> Any:
    """Tuples -> lists recursively (only plain python types go into the checkpoint)."""
    return json.loads(json.dumps(obj))


def montage_indices(n: int, k: int = 4) -> list[int]:
    """``k`` fixed, evenly spaced slice indices in ``[0, n)`` (fewer if ``n < k``)."""
    return sorted({int(round(v)) for v in np.linspace(0, n - 1, num=min(k, n))})


def _write_montage(path: Path, G: nn.Module, data: SliceDataset, device: torch.device, title: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    idx = montage_indices(len(data))
    x, y = data.batch(idx)
    was_training = G.training
    G.eval()
    with torch.no_grad():
        fake = G(x.to(device)).cpu()
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
) -> Path:
    """Train ``variant`` on ``norm_dir/train/{T1,T2,T1C}.npy`` and write its outputs to ``out_dir``.

    ``device``: default ``cuda`` when available, else ``cpu`` (bit-identical reruns are
    guaranteed on CPU). ``progress``: show a tqdm bar (default: only when stderr is a terminal). ``metadata``: extra
    JSON-serialisable information for later steps (e.g. image size, calibration, MLflow run id),
    stored as ``checkpoint["metadata"]`` (tuples become lists) and returned by
    :func:`~vce.models.factory.load_generator`. Returns ``out_dir``.
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
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    data = SliceDataset(norm_dir, "train", variant.modalities)
    n_mod = data.n_modalities
    size = data.image_size

    prev_threads = torch.get_num_threads()
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_det_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            G = build_generator(variant.model, n_mod, cfg.base_channels, output_for(variant.normalization)).to(device)
            D = build_discriminator(n_mod, cfg.base_channels, image_size=size).to(device)
        sampler = SeededBatchSampler(len(data), cfg.batch_size, int(np.random.SeedSequence([seed, 1]).generate_state(1)[0]))
        opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
        opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
        n_params = {"generator": count_parameters(G), "discriminator": count_parameters(D)}
        params = (
            variant.to_dict()
            | {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
            | {
                "seed": seed,
                "params_generator": n_params["generator"],
                "params_discriminator": n_params["discriminator"],
                "image_size": size,
                "n_train_slices": len(data),
                "d_n_layers": D.n_layers,
            }
        )
        if tracker is not None:
            tracker.log_params(params)
        log.info(
            "train %s: model=%s modalities=%s G=%d D=%d params, %d slices of %dx%d, %d iterations, batch %d, seed %d",
            variant.name, variant.model, ",".join(variant.modalities), n_params["generator"],
            n_params["discriminator"], len(data), size, size, cfg.iterations, cfg.batch_size, seed,
        )  # fmt: skip

        rows: list[dict[str, float]] = []
        window = {k: 0.0 for k in LOSS_COLUMNS}
        n_window = 0
        show = sys.stderr.isatty() if progress is None else progress
        bar = tqdm(total=cfg.iterations, desc=variant.name, unit="it", disable=not show, dynamic_ncols=True)
        G.train()
        D.train()
        t0 = time.perf_counter()
        for it in range(1, cfg.iterations + 1):
            x, y = data.batch(sampler.next_batch())
            x, y = x.to(device), y.to(device)
            fake = G(x)

            # --- discriminator step: LSGAN on real vs fake, + R1 on real ---
            for p in D.parameters():
                p.requires_grad_(True)
            y_real = y.detach().requires_grad_(cfg.gp_weight > 0)
            d_real = D(x, y_real)
            d_fake = D(x, fake.detach())
            loss_d_gan = lsgan_d_loss(d_real, d_fake)
            r1 = r1_penalty(d_real, y_real) if cfg.gp_weight > 0 else loss_d_gan.new_zeros(())
            loss_d = loss_d_gan + cfg.gp_weight * r1
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()

            # --- generator step ---
            for p in D.parameters():
                p.requires_grad_(False)
            target = y.detach()
            terms: list[torch.Tensor] = []
            if variant.lambda_gan > 0:
                loss_gan = lsgan_g_loss(D(x, fake))
                terms.append(variant.lambda_gan * loss_gan)
            else:
                loss_gan = lsgan_g_loss(d_fake.detach())
            if variant.lambda_pg > 0:
                loss_pg = pixelwise_gradient_loss(fake, target, cfg.pg_eps)
                terms.append(variant.lambda_pg * loss_pg)
            else:
                with torch.no_grad():
                    loss_pg = pixelwise_gradient_loss(fake, target, cfg.pg_eps)
            if variant.lambda_l1 > 0:
                loss_l1 = l1_loss(fake, target)
                terms.append(variant.lambda_l1 * loss_l1)
            else:
                with torch.no_grad():
                    loss_l1 = l1_loss(fake, target)
            loss_g = sum(terms[1:], terms[0])
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()

            values = {
                "loss_d": loss_d.item(),
                "loss_g": loss_g.item(),
                "loss_pg": loss_pg.item(),
                "loss_gan": loss_gan.item(),
                "loss_l1": loss_l1.item(),
                "r1": r1.item(),
            }
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
                rate = it / max(time.perf_counter() - t0, 1e-9)
                bar.set_postfix(d=f"{row['loss_d']:.3f}", g=f"{row['loss_g']:.3f}", pg=f"{row['loss_pg']:.3f}")
                log.info(
                    "%s it %d/%d  loss_d=%.4f loss_g=%.4f pg=%.4f gan=%.4f l1=%.4f r1=%.4f  (%.2f it/s)",
                    variant.name, it, cfg.iterations, row["loss_d"], row["loss_g"], row["loss_pg"],
                    row["loss_gan"], row["loss_l1"], row["r1"], rate,
                )  # fmt: skip
                if tracker is not None:
                    tracker.log_metrics({k: float(row[k]) for k in LOSS_COLUMNS}, step=it)
        bar.close()
        wall = time.perf_counter() - t0
        for p in D.parameters():
            p.requires_grad_(True)

        G.eval()
        summary = {
            "variant": variant.to_dict(),
            "seed": seed,
            "iterations": cfg.iterations,
            "batch_size": cfg.batch_size,
            "image_size": size,
            "n_train_slices": len(data),
            "threads": torch.get_num_threads(),
            "device": str(device),
            "wall_time_s": wall,
            "iterations_per_s": cfg.iterations / wall if wall > 0 else None,
            "s_per_iteration": wall / cfg.iterations,
            "params": n_params,
            "final_losses": {k: rows[-1][k] for k in LOSS_COLUMNS},
            "torch_version": torch.__version__,
        }
        if hasattr(G, "modality_weights"):
            summary["modality_weights"] = dict(zip(variant.modalities, G.modality_weights().cpu().tolist()))
        checkpoint = {
            "format_version": CHECKPOINT_FORMAT,
            "generator": {k: v.detach().cpu() for k, v in G.state_dict().items()},
            "discriminator": {k: v.detach().cpu() for k, v in D.state_dict().items()},
            "variant": variant.to_dict(),
            "model": {"name": variant.model, "n_modalities": n_mod, "base_channels": cfg.base_channels,
                      "output": output_for(variant.normalization)},
            "discriminator_model": {"in_channels": D.in_channels, "base_channels": cfg.base_channels, "n_layers": D.n_layers},
            "iterations": cfg.iterations,
            "seed": seed,
            "image_size": size,
            "modalities": list(variant.modalities),
            "train_config": _plain(dataclasses.asdict(cfg)),
            "metadata": metadata,
        }
        with atomic_dir(out_dir) as tmp:
            torch.save(checkpoint, tmp / "checkpoint.pt")
            with open(tmp / "losses.csv", "w", newline="") as fh:
                writer = csv.writer(fh)
                writer.writerow(["iteration", *LOSS_COLUMNS])
                for row in rows:
                    writer.writerow([row["iteration"], *(repr(float(row[k])) for k in LOSS_COLUMNS)])
            _write_montage(tmp / "montage.png", G, data, device, f"{variant.name} ({variant.model}), {cfg.iterations} it")
            (tmp / "train_summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
        log.info(
            "train %s done: %d iterations in %.1f s (%.3f s/it); outputs in %s",
            variant.name, cfg.iterations, wall, wall / cfg.iterations, out_dir,
        )  # fmt: skip
        if tracker is not None:
            tracker.log_metrics({"iterations_per_s": summary["iterations_per_s"] or 0.0, "wall_time_s": wall}, step=cfg.iterations)
            tracker.log_artifact(out_dir / "montage.png")
            tracker.log_artifact(out_dir / "checkpoint.pt", artifact_path="model")
            tracker.log_artifact(out_dir / "losses.csv")
        return out_dir
    finally:
        torch.set_num_threads(prev_threads)
        torch.use_deterministic_algorithms(prev_det, warn_only=prev_det_warn)
