"""The trainer's montage: a few fixed slices, inputs | VCE (G output) | T1C target | |error|."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from vce.image_grid import Panel, image_grid, percentile_window
from vce.training.data import SliceDataset

__all__ = ["montage_indices", "write_montage"]


def montage_indices(n: int, k: int = 4) -> list[int]:
    """``k`` fixed, evenly spaced slice indices in ``[0, n)`` (fewer if ``n < k``)."""
    return sorted({int(round(v)) for v in np.linspace(0, n - 1, num=min(k, n))})


def write_montage(path: Path, G: nn.Module, data: SliceDataset, device: torch.device, title: str) -> Path:
    """``G`` (eval mode, no gradients) on :func:`montage_indices` of ``data``; one row per slice:
    each input at its own 1-99 % window, VCE and target at the target's, |error| in magma
    (0 to the target's window width). Written atomically."""
    idx = montage_indices(len(data))
    x, y = data.batch(idx)
    was_training = G.training
    G.eval()
    with torch.no_grad():
        fake = G(x.to(device)).float().cpu()
    G.train(was_training)
    rows = []
    for r in range(len(idx)):
        tgt, vce = y[r, 0].numpy(), fake[r, 0].numpy()
        lo, hi = percentile_window(tgt)
        inputs = [Panel(a, *percentile_window(a)) for a in x[r].numpy()]
        err = Panel(np.abs(vce - tgt), 0.0, max(hi - lo, 1e-6), cmap="magma")
        rows.append([*inputs, Panel(vce, lo, hi), Panel(tgt, lo, hi), err])
    cols = [*data.modalities, "VCE (G output)", "T1C (target)", "|error|"]
    return image_grid(rows, path, col_titles=cols, row_labels=[f"slice {i}" for i in idx], title=title, fontsize=8)
