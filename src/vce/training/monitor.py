"""Validation on held-out TRAIN patients and the GAN-health monitor.

Validation (``train.val_patients`` > 0): whole TRAIN patients (seeded, never test patients) are
held out of training; every ``train.val_every`` iterations and at the end, MAE, SSIM (7x7
window, ``data_range`` = range of the validation targets) and the pixelwise gradient loss are
computed in the normalised space on all their slices, with the EMA generator when on; a montage
is written, the best weights (lowest MAE) kept.

GAN health (:func:`gan_health`): a warning (log, tracker metric ``health_<name>`` = 1 and tag
``vce.health.<name>`` when the tracker has ``set_tags``) once when the mean ``loss_d`` of the last
``health_window`` logged rows falls below ``d_collapse_loss`` (the discriminator wins
completely) or when the generator's monitored value (validation MAE, else the training pixelwise
gradient / L1 / GAN loss) has not improved for ``patience`` validations / logged rows.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from vce.config import TrainConfig, Variant
from vce.losses import effective_pg_eps, pixelwise_gradient_loss
from vce.tracking import Tracker
from vce.training.data import SliceDataset
from vce.training.montage import write_montage
from vce.training.state import RunState, cpu_state

__all__ = ["VAL_COLUMNS", "gan_health", "validate_generator", "Monitor"]

log = logging.getLogger(__name__)

VAL_COLUMNS = ("val_norm_mae", "val_norm_ssim", "val_norm_pg")


def gan_health(
    loss_d: Sequence[float],
    g_metric: Sequence[float],
    *,
    window: int,
    d_collapse_loss: float,
    patience: int,
    g_name: str = "val_norm_mae",
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


def validate_generator(G: nn.Module, data: SliceDataset, device: torch.device, eps: float, data_range: float) -> dict[str, float]:
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
    return {"val_norm_mae": float(np.mean(maes)), "val_norm_ssim": float(np.mean(ssims)), "val_norm_pg": pg_sum / n}


class Monitor:
    """Rank 0's watcher: :meth:`validate` when due, :meth:`health` after each log/validation."""

    def __init__(self, variant: Variant, cfg: TrainConfig, val_data: SliceDataset | None, device: torch.device,
                 tracker: Tracker | None, png_dir: Path) -> None:  # fmt: skip
        self.variant, self.cfg, self.val_data, self.device = variant, cfg, val_data, device
        self.tracker, self.png_dir = tracker, png_dir
        self.val_range = 1.0
        if val_data is not None:
            _, vy = val_data.batch(np.arange(len(val_data)))
            self.val_range = float(vy.max() - vy.min()) or 1.0

    def due(self, iteration: int) -> bool:
        """Whether ``iteration`` is a validation iteration."""
        cfg = self.cfg
        return self.val_data is not None and (iteration % cfg.val_every == 0 or iteration == cfg.iterations)

    def validate(self, iteration: int, G: nn.Module, D: nn.Module, run: RunState) -> dict[str, float]:
        """Validate ``G``, write its montage, keep it in ``run.best`` when it is the best so far."""
        assert self.val_data is not None
        row = {"iteration": iteration} | validate_generator(G, self.val_data, self.device, effective_pg_eps(self.variant, self.cfg), self.val_range)
        run.val_rows.append(row)
        log.info("%s it %d validation: MAE %.4f SSIM %.4f pg %.4f", self.variant.name, iteration,
                 row["val_norm_mae"], row["val_norm_ssim"], row["val_norm_pg"])  # fmt: skip
        png = self.png_dir / f"it_{iteration:06d}.png"
        png.parent.mkdir(parents=True, exist_ok=True)
        write_montage(png, G, self.val_data, self.device, f"{self.variant.name} validation, it {iteration}")
        if row["val_norm_mae"] < run.best["val_norm_mae"]:
            run.best = {"iteration": iteration, "val_norm_mae": row["val_norm_mae"], "generator": cpu_state(G),
                        "discriminator": cpu_state(D)}  # fmt: skip
        if self.tracker is not None:
            self.tracker.log_metrics({k: float(row[k]) for k in VAL_COLUMNS}, step=iteration)
            self.tracker.log_artifact(png, artifact_path="validation")
        return row

    def health(self, iteration: int, loss_rows: list[dict[str, float]], run: RunState) -> None:
        """Warn once per problem found by :func:`gan_health` (log, tracker metric and tag)."""
        g_name, series = self._g_series(loss_rows, run)
        found = gan_health([r["loss_d"] for r in loss_rows], series, window=self.cfg.health_window,
                           d_collapse_loss=self.cfg.d_collapse_loss, patience=self.cfg.patience, g_name=g_name)  # fmt: skip
        for name, msg in found.items():
            if name not in run.warned:
                run.warned.append(name)
                self._warn(iteration, name, msg)

    def _g_series(self, loss_rows: list[dict[str, float]], run: RunState) -> tuple[str, list[float]]:
        """The generator's monitored value: validation MAE, else its main training loss."""
        if run.val_rows:
            return "val_norm_mae", [r["val_norm_mae"] for r in run.val_rows]
        v = self.variant
        g_name = "loss_pg" if v.lambda_pg > 0 else ("loss_l1" if v.lambda_l1 > 0 else "loss_gan")
        return g_name, [r[g_name] for r in loss_rows]

    def _warn(self, iteration: int, name: str, msg: str) -> None:
        log.warning("train %s it %d: %s", self.variant.name, iteration, msg)
        if self.tracker is not None:
            self.tracker.log_metrics({f"health_{name}": 1.0}, step=iteration)
            set_tags: Any = getattr(self.tracker, "set_tags", None)
            if set_tags is not None:
                set_tags({f"vce.health.{name}": f"it {iteration}: {msg}"})
