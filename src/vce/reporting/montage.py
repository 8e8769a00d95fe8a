"""Montages a person can judge at a glance: inputs, ground truth, prediction, error."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..io.atomic import atomic_file  # noqa: E402


def save_montage(rows: list[tuple[str, dict[str, np.ndarray]]], path: str | Path, vmax: float | None = None) -> Path:
    """Save a grid: one row per ``(label, {column title: 2D image})``; error columns (title starting
    with '|') use a separate colour scale. Written atomically."""
    ncol = max(len(c) for _, c in rows)
    fig, axes = plt.subplots(len(rows), ncol, figsize=(2.4 * ncol, 2.5 * len(rows)), squeeze=False)
    for r, (label, cols) in enumerate(rows):
        grey = [v for k, v in cols.items() if not k.startswith("|")]
        top = vmax if vmax is not None else max(float(np.percentile(v, 99.5)) for v in grey)
        for c, (title, img) in enumerate(cols.items()):
            ax = axes[r, c]
            if title.startswith("|"):
                im = ax.imshow(img, cmap="magma", vmin=0, vmax=max(top * 0.25, 1e-6))
                fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
            else:
                ax.imshow(img, cmap="gray", vmin=0, vmax=top)
            ax.set_title(title if r == 0 else "", fontsize=9)
            ax.set_xticks([]), ax.set_yticks([])
        axes[r, 0].set_ylabel(label, fontsize=9)
        for c in range(len(cols), ncol):
            axes[r, c].axis("off")
    fig.tight_layout()
    with atomic_file(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return Path(path)
