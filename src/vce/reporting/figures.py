"""Figures of the comparison report (matplotlib, Agg canvas; no pyplot global state).

:func:`plot_metrics_by_variant` and :func:`plot_texture` take a table built by
:mod:`vce.reporting.tables` (numeric ``"<group> mean"`` / ``"<group> sd"`` columns) and write one
PNG. The study's ``compare`` step adds :func:`plot_boxplots` (per-patient metrics),
:func:`plot_case_montage` and :func:`plot_intensity_profile` (of :class:`Case` slices) and
:func:`plot_psd_ratio` (power spectra); colours follow the model's role (:func:`model_colors`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from vce.image_grid import Panel, image_grid, percentile_window
from vce.io.atomic import atomic_file

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


# --------------------------------------------------------------------------------------------
# Figures of the study's ``compare`` step: per-patient boxplots, case montage, intensity profile,
# power-spectrum ratio. Each writes one PNG atomically (no matplotlib version in its metadata)
# and returns its path; NaN values are left out, empty inputs give a "no data" figure.
# --------------------------------------------------------------------------------------------

GROUND_TRUTH_COLOR = "#000000"
CONTOUR_COLOR = (0.0, 1.0, 1.0)  # cyan: visible on the grey images and on the magma error maps
_ROLE_PALETTES: dict[str, tuple[str, ...]] = {
    "main": ("#d62728", "#a50f15", "#fb6a4a", "#67000d"),
    "baseline": ("#1f77b4", "#08519c", "#6baed6", "#08306b"),
    "reference": ("#8c8c8c", "#636363", "#bdbdbd", "#404040"),
    "other": ("#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf"),
}
_LINESTYLES = ("-", "--", "-.", ":")


def role_family(role: str | None) -> str:
    """``"main"``, ``"baseline"``, ``"reference"`` or ``"other"`` for a role string (``Roles.of``'s text)."""
    first = str(role or "").split(",")[0].strip().lower()
    if first == "main":
        return "main"
    for family in ("baseline", "reference"):
        if family in str(role or "").lower():
            return family
    return "other"


def _rank_in_role(names: Sequence[str], roles: Mapping[str, str] | None) -> list[tuple[str, str, int]]:
    """``(name, role family, k)``: each model is the k-th of its role family, in ``names`` order."""
    roles = roles or {}
    seen: dict[str, int] = {}
    out = []
    for name in names:
        family = role_family(roles.get(name, ""))
        out.append((name, family, seen.get(family, 0)))
        seen[family] = out[-1][2] + 1
    return out


def model_colors(names: Sequence[str], roles: Mapping[str, str] | None = None) -> dict[str, str]:
    """Colour per model: red shades for main, blue for baselines, greys for references, others
    from a palette; the k-th model of a role takes the role's k-th shade (so colours stay the same
    in every figure given the same names and roles)."""
    return {n: _ROLE_PALETTES[f][k % len(_ROLE_PALETTES[f])] for n, f, k in _rank_in_role(names, roles)}


def _linestyles(names: Sequence[str], roles: Mapping[str, str] | None) -> dict[str, str]:
    """Line style per model: changes when a role's palette wraps around, so lines stay distinct."""
    return {n: _LINESTYLES[(k // len(_ROLE_PALETTES[f])) % len(_LINESTYLES)] for n, f, k in _rank_in_role(names, roles)}


def _save_atomic(fig: Figure, path: str | Path, dpi: int = 120) -> Path:
    """Write ``fig`` as a PNG at ``path`` atomically, without version metadata (same data, same bytes)."""
    FigureCanvasAgg(fig)
    with atomic_file(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=dpi, format="png", metadata={"Software": None})
    return Path(path)


def _placeholder(path: str | Path, title: str, message: str) -> Path:
    """A small PNG saying why there is nothing to plot (instead of failing the report)."""
    fig = Figure(figsize=(5.0, 2.0), layout="constrained")
    ax = fig.add_subplot()
    ax.axis("off")
    ax.set_title(title, fontsize=10)
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=9, transform=ax.transAxes)
    return _save_atomic(fig, path)


def _finite_values(df: pd.DataFrame, column: str) -> np.ndarray:
    """The finite values of ``df[column]`` as floats (empty when the column is missing)."""
    if column not in df:
        return np.empty(0)
    values = pd.to_numeric(df[column], errors="coerce").to_numpy(float)
    return values[np.isfinite(values)]


def _box_panel(ax, data: Sequence[np.ndarray], names: Sequence[str], colors: Mapping[str, str], label: str,
               rng: np.random.Generator) -> None:
    """One metric: a box per model (models without finite values marked n/a), patients as dots."""
    pos = [i for i, d in enumerate(data) if d.size]
    if pos:
        boxes = ax.boxplot([data[i] for i in pos], positions=pos, widths=0.6, patch_artist=True, showfliers=False,
                           manage_ticks=False, medianprops={"color": "black"})
        for i, patch in zip(pos, boxes["boxes"]):
            patch.set_facecolor(colors[names[i]])
            patch.set_alpha(0.35)
    for i, d in enumerate(data):
        if d.size:
            x = i + rng.uniform(-0.15, 0.15, d.size)
            ax.scatter(x, d, s=18, color=colors[names[i]], edgecolors="black", linewidths=0.5, zorder=3)
        else:
            ax.text(i, 0.5, "n/a", ha="center", va="center", fontsize=8, transform=ax.get_xaxis_transform())
    ax.set_xlim(-0.6, len(names) - 0.4)
    ax.set_xticks(range(len(names)), [f"{n}\n(n={d.size})" for n, d in zip(names, data)],
                  rotation=45, ha="right", fontsize=7)
    ax.set_title(label, fontsize=9)
    ax.set_ylabel(label, fontsize=8)
    ax.grid(axis="y", alpha=0.3)


def _role_legend(fig: Figure, names: Sequence[str], roles: Mapping[str, str] | None) -> None:
    """A figure legend with one entry per role family present (first shade of each)."""
    from matplotlib.patches import Patch

    families = list(dict.fromkeys(role_family((roles or {}).get(n, "")) for n in names))
    if len(families) > 1 or families != ["other"]:
        handles = [Patch(color=_ROLE_PALETTES[f][0], alpha=0.6, label=f) for f in families]
        fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=8, title="role")


def plot_boxplots(per_patient: Mapping[str, pd.DataFrame], metrics: Sequence[tuple[str, str]], path: str | Path,
                  roles: Mapping[str, str] | None = None) -> Path:
    """Per-patient metrics: one subplot per ``(column, label)`` of ``metrics``, one box per model.

    ``per_patient`` maps model names (in plot order) to one row per test patient; patients are drawn
    as jittered dots over the boxes, NaN values left out (``n=`` under each box counts the rest).
    ``roles`` (name -> "main" | "baseline" | "reference" | "") picks the colours (:func:`model_colors`).
    """
    names = [str(n) for n in per_patient]
    if not names or not metrics:
        return _placeholder(path, "Per-patient metrics", "no models or no metrics to plot")
    colors = model_colors(names, roles)
    ncol = min(len(metrics), 3)
    nrow = math.ceil(len(metrics) / ncol)
    fig = Figure(figsize=(ncol * max(3.4, 0.5 * len(names) + 1.6), 3.8 * nrow + 0.8), layout="constrained")
    rng = np.random.default_rng(0)  # fixed jitter: the same data give the same figure
    frames = list(per_patient.values())
    for k, (column, label) in enumerate(metrics):
        ax = fig.add_subplot(nrow, ncol, k + 1)
        _box_panel(ax, [_finite_values(df, column) for df in frames], names, colors, label, rng)
    fig.suptitle("Per-patient test metrics (box: median and quartiles, whiskers 1.5 IQR; dots: patients)",
                 fontsize=10)
    _role_legend(fig, names, roles)
    return _save_atomic(fig, path)


@dataclass
class Case:
    """One slice of one test patient for the montage and the profile: 2-D ``inputs`` ("T1", "T2"),
    the ground-truth T1C ``truth`` (scanner units), ``predictions`` (model label -> 2-D, same shape)
    and the boolean ``tumour`` mask. ``label`` names the row ("P0007 z=9")."""

    label: str
    inputs: dict[str, np.ndarray]
    truth: np.ndarray
    predictions: dict[str, np.ndarray]
    tumour: np.ndarray

    def __post_init__(self) -> None:
        self.truth = np.asarray(self.truth, dtype=float)
        if self.truth.ndim != 2 or self.truth.size == 0:
            raise ValueError(f"Case {self.label!r}: truth must be a non-empty 2-D array, got shape {self.truth.shape}")
        self.tumour = np.asarray(self.tumour, dtype=bool)
        self.inputs = {str(k): np.asarray(v, dtype=float) for k, v in self.inputs.items()}
        self.predictions = {str(k): np.asarray(v, dtype=float) for k, v in self.predictions.items()}
        arrays = {"tumour": self.tumour, **{f"input {k}": v for k, v in self.inputs.items()},
                  **{f"prediction {k}": v for k, v in self.predictions.items()}}
        for what, a in arrays.items():
            if a.shape != self.truth.shape:
                raise ValueError(f"Case {self.label!r}: {what} has shape {a.shape}, truth {self.truth.shape}")


def finite_window(image: np.ndarray, low: float = 1.0, high: float = 99.0) -> tuple[float, float]:
    """:func:`~vce.image_grid.percentile_window` of the finite values of ``image`` ((0, 1) when none)."""
    a = np.asarray(image, dtype=float)
    a = a[np.isfinite(a)]
    return percentile_window(a, low, high) if a.size else (0.0, 1.0)


def error_window(cases: Sequence[Case]) -> tuple[float, float]:
    """One window ``(0, hi)`` for every |prediction - truth| map of ``cases``: the 99th percentile
    of all their finite errors pooled (``hi > 0`` always)."""
    errors = [np.abs(p - c.truth).ravel() for c in cases for p in c.predictions.values()]
    pooled = np.concatenate(errors) if errors else np.empty(0)
    return 0.0, finite_window(pooled, 0.0, 99.0)[1]


def _edge(mask: np.ndarray) -> np.ndarray:
    """The inner boundary of ``mask``, about one displayed pixel wide (thicker for large images)."""
    from scipy.ndimage import binary_erosion

    if not mask.any():
        return mask
    width = max(1, round(max(mask.shape) / 200))
    return mask & ~binary_erosion(mask, iterations=width, border_value=0)


def montage_panels(cases: Sequence[Case]) -> tuple[list[list[Panel | None]], list[str]]:
    """The montage's grid and column titles: per case its inputs, the truth, each prediction (all of
    these in the window of the truth, :func:`finite_window`), then each |error| (all in
    :func:`error_window`), with the tumour boundary overlaid on every panel."""
    inputs = list(dict.fromkeys(k for c in cases for k in c.inputs))
    models = list(dict.fromkeys(k for c in cases for k in c.predictions))
    titles = [f"{k} (input)" for k in inputs] + ["Ground truth T1C"] + models + [f"|{m} − GT|" for m in models]
    _, err_hi = error_window(cases)
    grid: list[list[Panel | None]] = []
    for c in cases:
        lo, hi = finite_window(c.truth)
        edge = {"overlay": _edge(c.tumour), "overlay_color": CONTOUR_COLOR, "overlay_alpha": 0.9}
        row: list[Panel | None] = [Panel(c.inputs[k], *finite_window(c.inputs[k]), **edge) if k in c.inputs else None
                                   for k in inputs]
        row.append(Panel(c.truth, lo, hi, colorbar=True, **edge))
        row += [Panel(c.predictions[m], lo, hi, **edge) if m in c.predictions else None for m in models]
        row += [Panel(np.abs(c.predictions[m] - c.truth), 0.0, err_hi, cmap="magma", colorbar=m == models[-1], **edge)
                if m in c.predictions else None for m in models]
        grid.append(row)
    return grid, titles


def plot_case_montage(cases: Sequence[Case], path: str | Path) -> Path:
    """One row per case: T1, T2, ground truth, each prediction, then |error| of each prediction.

    The truth and the predictions of a row share one window (the truth's 1-99th percentiles), every
    error map of the figure shares one window (:func:`error_window`); the tumour boundary is drawn
    in cyan on every panel. Missing inputs/predictions of a case leave empty cells.
    """
    if not cases:
        return _placeholder(path, "Example cases", "no cases to show")
    grid, titles = montage_panels(cases)
    size = max(1.3, min(2.2, 26.0 / len(titles)))
    title = ("Ground truth and predictions share the truth's window per row; |error| maps share one window; "
             "intensities in scanner units; cyan: tumour boundary")
    return image_grid(grid, path, col_titles=titles, row_labels=[c.label for c in cases], title=title,
                      panel_size=size, dpi=100, fontsize=8)


def _profile_row(case: Case) -> int:
    """The row through the tumour centroid (the image centre without tumour)."""
    if case.tumour.any():
        return int(round(float(np.argwhere(case.tumour)[:, 0].mean())))
    return case.truth.shape[0] // 2


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """``(first, last)`` index of each run of True in a 1-D boolean array."""
    padded = np.concatenate([[False], flags, [False]]).astype(int)
    d = np.diff(padded)
    return list(zip(np.flatnonzero(d == 1), np.flatnonzero(d == -1) - 1))


def plot_intensity_profile(case: Case, path: str | Path, roles: Mapping[str, str] | None = None) -> Path:
    """Intensity along the horizontal line through the tumour centroid (image centre without
    tumour): the truth and each prediction, tumour extent on that line shaded; the left panel shows
    the truth with the line. x in pixels, y in scanner units; NaN pixels leave gaps."""
    row = _profile_row(case)
    models = list(case.predictions)
    colors, styles = model_colors(models, roles), _linestyles(models, roles)
    fig = Figure(figsize=(11.0, 3.8), layout="constrained")
    left, ax = fig.subplots(1, 2, width_ratios=[1, 2.6])
    lo, hi = finite_window(case.truth)
    left.imshow(case.truth, cmap="gray", vmin=lo, vmax=hi)
    if case.tumour.any():
        left.contour(case.tumour.astype(float), levels=[0.5], colors=[CONTOUR_COLOR], linewidths=0.8)
    left.axhline(row, color="yellow", linewidth=1.0)
    left.set_title(f"Ground truth T1C, row y={row}", fontsize=9)
    left.set_xticks([])
    left.set_yticks([])
    x = np.arange(case.truth.shape[1])
    for k, (first, last) in enumerate(_runs(case.tumour[row])):
        ax.axvspan(first - 0.5, last + 0.5, color="#ffd92f", alpha=0.35, label="tumour extent" if k == 0 else None)
    ax.plot(x, case.truth[row], color=GROUND_TRUTH_COLOR, linewidth=1.8, label="ground truth")
    for m in models:
        ax.plot(x, case.predictions[m][row], color=colors[m], linestyle=styles[m], linewidth=1.2, label=m)
    ax.set_xlabel("x (pixels)")
    ax.set_ylabel("intensity (scanner units)")
    where = "tumour centroid" if case.tumour.any() else "image centre (no tumour)"
    ax.set_title(f"{case.label}: intensity profile through the {where}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return _save_atomic(fig, path)


def _ratio(num: pd.Series, den: pd.Series) -> np.ndarray:
    """``num / den`` as floats, NaN where undefined or not positive (a log axis cannot show it)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        r = pd.to_numeric(num, errors="coerce").to_numpy(float) / pd.to_numeric(den, errors="coerce").to_numpy(float)
    r[~(np.isfinite(r) & (r > 0))] = np.nan
    return r


def plot_psd_ratio(psd: Mapping[str, pd.DataFrame], path: str | Path, roles: Mapping[str, str] | None = None) -> Path:
    """Radially averaged power spectrum of each model relative to the clean ground truth.

    Each frame has ``freq`` (cycles/pixel), ``pred``, ``gt``, ``gt_clean`` (means over slices); drawn:
    ``pred / gt_clean`` per model (log y), ``gt / gt_clean`` of the first frame as the noisy-truth
    line (the frames share the test slices), 1 dashed. Non-positive or NaN ratios leave gaps.
    """
    required = {"freq", "pred", "gt", "gt_clean"}
    frames = {str(k): df for k, df in psd.items() if required <= set(df.columns) and len(df)}
    if not frames:
        return _placeholder(path, "Power spectrum ratio", "no power spectra to plot")
    colors, styles = model_colors(list(frames), roles), _linestyles(list(frames), roles)
    fig = Figure(figsize=(7.5, 4.5), layout="constrained")
    ax = fig.add_subplot()
    first = next(iter(frames.values()))
    ax.plot(first["freq"].to_numpy(float), _ratio(first["gt"], first["gt_clean"]), color=GROUND_TRUTH_COLOR,
            linewidth=1.6, label="ground truth (noisy) / clean truth")
    for name, df in frames.items():
        ax.plot(df["freq"].to_numpy(float), _ratio(df["pred"], df["gt_clean"]), color=colors[name],
                linestyle=styles[name], linewidth=1.2, label=name)
    ax.axhline(1.0, color="#808080", linestyle="--", linewidth=1.0, label="1 (same power as clean truth)")
    if np.isfinite(np.concatenate([_ratio(df["pred"], df["gt_clean"]) for df in frames.values()])).any():
        from matplotlib.ticker import FuncFormatter, NullFormatter

        ax.set_yscale("log")
        plain = FuncFormatter(lambda v, _: f"{v:g}")
        lo, hi = ax.get_ylim()
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain if math.log10(hi / lo) < 1.5 else NullFormatter())
    ax.set_xlabel("spatial frequency (cycles/pixel)")
    ax.set_ylabel("power ratio to clean ground truth (log)")
    ax.set_title("Radially averaged power spectrum / clean ground truth's (mean over test slices)", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="best")
    return _save_atomic(fig, path)
