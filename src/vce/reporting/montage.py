"""Montages a person can judge at a glance: inputs, ground truth, prediction, error."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..image_grid import Panel, image_grid


def save_montage(rows: list[tuple[str, dict[str, np.ndarray]]], path: str | Path, vmax: float | None = None) -> Path:
    """Save a grid: one row per ``(label, {column title: 2D image})``; error columns (title starting
    with '|') use a separate colour scale. Written atomically."""
    ncol = max(len(c) for _, c in rows)
    grid: list[list[Panel | None]] = []
    for _, cols in rows:
        grey = [v for k, v in cols.items() if not k.startswith("|")]
        top = vmax if vmax is not None else max(float(np.percentile(v, 99.5)) for v in grey)
        grid.append([
            Panel(img, 0, max(top * 0.25, 1e-6), cmap="magma", colorbar=True) if title.startswith("|") else Panel(img, 0, top)
            for title, img in cols.items()
        ] + [None] * (ncol - len(cols)))
    titles = list(rows[0][1]) + [""] * (ncol - len(rows[0][1]))
    return image_grid(grid, path, col_titles=titles, row_labels=[label for label, _ in rows], panel_size=(2.4, 2.5), dpi=110)
