"""Figures of the comparison report (matplotlib, Agg canvas; no pyplot global state).

Both functions take a table built by :mod:`vce.reporting.tables` (numeric ``"<group> mean"`` /
``"<group> sd"`` columns) and write one PNG.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

METRICS_BY_VARIANT_PNG = "metrics_by_variant.png"
TEXTURE_PNG = "texture.png"

_COLORS = {"Ground truth": "#4d4d4d", "Li et al. MMgSN-Net": "#1f77b4", "PGMGVCE": "#d62728"}


def _err(sd: pd.Series) -> np.ndarray:
    """Error-bar half-lengths: the sd, 0 where it is undefined (one patient)."""
    return np.nan_to_num(sd.to_numpy(float), nan=0.0)


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=120, format="png")
    return path


def plot_metrics_by_variant(overview: pd.DataFrame, path: str | Path) -> Path:
    """Bar chart of MAE and SSIM (mean ± sd over test patients) for every variant."""
    names = [str(i) for i in overview.index]
    fig = Figure(figsize=(max(6.0, 1.1 * len(names) + 2), 4.2), layout="constrained")
    x = np.arange(len(names))
    roles = overview["role"].tolist() if "role" in overview else [""] * len(names)
    colors = ["#d62728" if r == "main" else "#1f77b4" if "baseline" in str(r) else "#8c8c8c" for r in roles]
    for k, metric in enumerate(("MAE", "SSIM")):
        ax = fig.add_subplot(1, 2, k + 1)
        ax.bar(x, overview[f"{metric} mean"].to_numpy(float), yerr=_err(overview[f"{metric} sd"]), color=colors, capsize=3)
        ax.set_xticks(x, names, rotation=45, ha="right", fontsize=8)
        ax.set_title(f"{metric} (mean ± sd over test patients)", fontsize=9)
        ax.set_ylabel(metric + (" (scanner units)" if metric == "MAE" else ""))
        ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_texture(table2: pd.DataFrame, path: str | Path) -> Path:
    """Ground truth vs baseline vs main for the four texture indices (one panel each)."""
    groups = [c[: -len(" mean")] for c in table2.columns if c.endswith(" mean") and f"{c[:-5]} sd" in table2]
    metrics = [str(i) for i in table2.index]
    ncol = len(metrics)
    fig = Figure(figsize=(3.0 * max(ncol, 1), 3.6), layout="constrained")
    x = np.arange(len(groups))
    for k, metric in enumerate(metrics):
        ax = fig.add_subplot(1, ncol, k + 1)
        means = np.array([table2.loc[metric, f"{g} mean"] for g in groups], dtype=float)
        sds = np.array([table2.loc[metric, f"{g} sd"] for g in groups], dtype=float)
        ax.bar(x, means, yerr=np.nan_to_num(sds, nan=0.0), capsize=3, color=[_COLORS.get(g, "#8c8c8c") for g in groups])
        ax.set_xticks(x, groups, rotation=30, ha="right", fontsize=8)
        p = table2.loc[metric, "p_wilcoxon"] if "p_wilcoxon" in table2 else math.nan
        ax.set_title(metric + ("" if not math.isfinite(float(p)) else f"\n(Wilcoxon p = {float(p):.3g})"), fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)
