"""One figure helper for every grid of image panels (training, evaluation, synthesis, registration QC).

A grid is rows of :class:`Panel` (``None``: an empty cell); :func:`image_grid` draws it on the Agg
canvas (no pyplot global state) and writes the PNG atomically, without the matplotlib version in
its metadata, so the same images give the same bytes. Its users: the trainer's montage
(:mod:`vce.training.montage`), the evaluation montage (:mod:`vce.reporting.montage`), the
synthetic cohort preview (:mod:`vce.synth.cohort`) and the registration QC png
(:mod:`vce.prep.registration`). One row of the trainer's montage, for example::

    lo, hi = percentile_window(target)
    [*(Panel(a, *percentile_window(a)) for a in inputs), Panel(vce, lo, hi), Panel(target, lo, hi),
     Panel(abs(vce - target), 0, hi - lo, cmap="magma")]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .io.atomic import atomic_file

TITLE_INCHES = 0.4  # height added for the figure title (``title=``)


@dataclass(frozen=True)
class Panel:
    """One image cell: a 2-D array shown between ``vmin`` and ``vmax`` (None: its own range) with
    ``cmap``, optionally with a tinted ``overlay`` where the mask ``overlay > 0`` (a tumour mask,
    an edge map), a colour bar, and a ``title`` of its own (instead of the column title)."""

    image: np.ndarray
    vmin: float | None = None
    vmax: float | None = None
    cmap: str = "gray"
    overlay: np.ndarray | None = None
    overlay_color: tuple[float, float, float] = (1.0, 0.0, 0.0)
    overlay_alpha: float = 0.45
    colorbar: bool = False
    title: str | None = None
    interpolation: str | None = None  # None: matplotlib's default (antialiased)

    def __post_init__(self) -> None:
        image = np.asarray(self.image)
        if image.ndim != 2 or image.size == 0:
            raise ValueError(f"Panel image must be a non-empty 2-D array, got shape {image.shape}")
        object.__setattr__(self, "image", image)
        if self.overlay is not None:
            overlay = np.asarray(self.overlay)
            if overlay.shape != image.shape:
                raise ValueError(f"Panel overlay shape {overlay.shape} differs from the image's {image.shape}")
            object.__setattr__(self, "overlay", overlay)
        if not 0.0 <= self.overlay_alpha <= 1.0:
            raise ValueError(f"Panel overlay_alpha must be in [0, 1], got {self.overlay_alpha}")


def percentile_window(image: np.ndarray, low: float = 1.0, high: float = 99.0) -> tuple[float, float]:
    """``(vmin, vmax)`` at the ``low`` / ``high`` percentiles of ``image``; ``vmax > vmin`` always."""
    lo, hi = (float(v) for v in np.percentile(image, [low, high]))
    return lo, hi if hi > lo else lo + 1.0


def _shape(panels: Sequence[Sequence[Panel | None]]) -> tuple[int, int]:
    if not isinstance(panels, Sequence) or not panels or any(not isinstance(r, Sequence) or not r for r in panels):
        raise ValueError("image_grid: panels must be a non-empty list of non-empty rows")
    ncols = {len(r) for r in panels}
    if len(ncols) != 1:
        raise ValueError(f"image_grid: ragged rows (lengths {[len(r) for r in panels]}); pad short rows with None")
    for r, row in enumerate(panels):
        for c, p in enumerate(row):
            if p is not None and not isinstance(p, Panel):
                raise ValueError(f"image_grid: cell ({r}, {c}) is a {type(p).__name__}, not a Panel or None")
    return len(panels), ncols.pop()


def image_grid(
    panels: Sequence[Sequence[Panel | None]],
    path: str | Path,
    *,
    col_titles: Sequence[str] | None = None,
    row_labels: Sequence[str] | None = None,
    title: str | None = None,
    panel_size: float | tuple[float, float] = 2.0,
    dpi: int = 100,
    fontsize: float = 9,
) -> Path:
    """Draw ``panels`` (rows of equal length) as one PNG at ``path``, written atomically.

    ``col_titles`` label the first row's panels, ``row_labels`` the first column's (y label),
    ``title`` the figure. Each panel takes ``panel_size`` inches (``(width, height)`` or square),
    the title another :data:`TITLE_INCHES`: the PNG is ``int(width * ncols * dpi)`` by
    ``int((height * nrows + title band) * dpi)`` pixels. Raises ``ValueError`` on bad input.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    nrows, ncols = _shape(panels)
    for name, labels, n in (("col_titles", col_titles, ncols), ("row_labels", row_labels, nrows)):
        if labels is not None and len(labels) != n:
            raise ValueError(f"image_grid: {len(labels)} {name} for {n} {'columns' if name == 'col_titles' else 'rows'}")
    width, height = (panel_size, panel_size) if np.isscalar(panel_size) else panel_size
    if not (width > 0 and height > 0 and dpi > 0):
        raise ValueError(f"image_grid: panel_size {panel_size} and dpi {dpi} must be positive")
    fig = Figure(figsize=(width * ncols, height * nrows + (TITLE_INCHES if title else 0.0)), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for r, row in enumerate(panels):
        for c, p in enumerate(row):
            ax = axes[r][c]
            if p is None:
                ax.axis("off")
                continue
            _draw(fig, ax, p)
            label = p.title if p.title is not None else (col_titles[c] if col_titles is not None and r == 0 else None)
            if label:
                ax.set_title(label, fontsize=fontsize)
            if row_labels is not None and c == 0:
                ax.set_ylabel(row_labels[r], fontsize=fontsize)
    if title:
        fig.suptitle(title, fontsize=fontsize)
    fig.tight_layout()
    with atomic_file(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, metadata={"Software": None})
    return Path(path)


def _draw(fig, ax, p: Panel) -> None:
    im = ax.imshow(p.image, cmap=p.cmap, vmin=p.vmin, vmax=p.vmax, interpolation=p.interpolation)
    if p.overlay is not None:
        rgba = np.zeros(p.image.shape + (4,), dtype=np.float32)
        rgba[..., :3] = p.overlay_color
        rgba[..., 3] = p.overlay_alpha * (p.overlay > 0)
        ax.imshow(rgba, interpolation=p.interpolation)
    if p.colorbar:
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    ax.set_xticks([])
    ax.set_yticks([])
