"""The study's comparison tables (paper Tables 1-2 and the section 3.2 ablations).

Input: one evaluation directory per variant, holding ``metrics_patients.csv`` (one row per
test patient: the mean of that patient's slice metrics) and ``metrics_slices.csv`` (one row
per slice). Every statistic here is over TEST PATIENTS: "mean ± sd" is the mean and the
sample standard deviation (``ddof=1``) of the per-patient values; p-values pair the two
variants' values of the same patients.

Roles come from the variants' attributes relative to the main variant (only ``main`` is
named): the baseline is the ``mmgsn`` variant; an ablation group holds the variants equal to
main except in the ablated attribute(s). A table whose variants are absent is left out.

Each table is a DataFrame with numeric ``"<group> mean"`` / ``"<group> sd"`` column pairs (and
plain columns such as ``n`` or p-values); :func:`to_markdown` renders each pair as one
``"mean ± sd"`` column. ``DataFrame.attrs`` carries ``title``, ``description`` and ``variants``.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from vce.config import MODALITIES, NORMALIZATIONS, Variant
from vce.io.atomic import atomic_dir
from vce.io.errors import VCEInputError
from vce.metrics import METRIC_KEYS

log = logging.getLogger(__name__)

PATIENTS_CSV = "metrics_patients.csv"
SLICES_CSV = "metrics_slices.csv"
PATIENT_COLUMNS = ("patient", *METRIC_KEYS)
SLICE_COLUMNS = ("patient", "slice", *METRIC_KEYS)

MAIN_LABEL = "PGMGVCE"
BASELINE_LABEL = "Li et al. MMgSN-Net"
GT_LABEL = "Ground truth"

ACCURACY = (("mae", "MAE"), ("mse", "MSE"), ("ssim", "SSIM"))
TEXTURE = (("tmsvpmi", "TMSVPMI"), ("tavpmi", "TAVPMI"), ("tfpmi", "TFPMI"), ("vfpmi", "VFPMI"))
MODALITY_LABELS = {("T1",): "T1 only", ("T2",): "T2 only", ("T1", "T2"): "T1 + T2"}

#: Table names in report order.
TABLE_ORDER = (
    "table1_accuracy",
    "table2_texture",
    "ablation_ratio",
    "ablation_normalization",
    "ablation_modality",
    "variants_overview",
)

# The paper's values (Cheng et al. 2024), for comparison only: {table: {row: {column: text}}}.
PAPER_REFERENCE: dict[str, dict[str, dict[str, str]]] = {
    "table1_accuracy": {
        "MAE": {MAIN_LABEL: "8.56 ± 0.45", BASELINE_LABEL: "8.72 ± 0.48"},
        "MSE": {MAIN_LABEL: "12.43 ± 0.67", BASELINE_LABEL: "12.81 ± 0.73"},
        "SSIM": {MAIN_LABEL: "0.71 ± 0.08", BASELINE_LABEL: "0.73 ± 0.12"},
    },
    "table2_texture": {
        "TMSVPMI": {GT_LABEL: "0.124 ± 0.022", BASELINE_LABEL: "0.079 ± 0.024", MAIN_LABEL: "0.120 ± 0.027"},
        "TAVPMI": {GT_LABEL: "0.159 ± 0.031", BASELINE_LABEL: "0.100 ± 0.032", MAIN_LABEL: "0.153 ± 0.029"},
        "TFPMI": {GT_LABEL: "1.222 ± 0.241", BASELINE_LABEL: "0.981 ± 0.213", MAIN_LABEL: "1.194 ± 0.223"},
        "VFPMI": {GT_LABEL: "0.0811 ± 0.005", BASELINE_LABEL: "0.0667 ± 0.006", MAIN_LABEL: "0.0761 ± 0.006"},
    },
    "ablation_ratio": {
        "10:1": {"MAE": "10.517 ± 0.247", "MSE": "14.008 ± 0.284"},
        "1:1": {"MAE": "9.904 ± 0.178", "MSE": "12.866 ± 0.197"},
        "1:10": {"MAE": "10.517 ± 0.231", "MSE": "13.811 ± 0.273"},
    },
    "ablation_normalization": {
        "zscore": {"MAE": "4.222 ± 0.843", "MSE": "4.662 ± 0.918"},
        "sigmoid": {"MAE": "3.814 ± 0.612", "MSE": "4.213 ± 0.726"},
        "tanh": {"MAE": "3.932 ± 0.672", "MSE": "4.175 ± 0.892"},
    },
    "ablation_modality": {
        "T1 only": {"MAER": "0.456 ± 0.102", "MSER": "0.447 ± 0.146", "SSIMR": "0.283 ± 0.103"},
        "T2 only": {"MAER": "0.389 ± 0.098", "MSER": "0.413 ± 0.161", "SSIMR": "0.241 ± 0.112"},
    },
}

PAPER_NOTES: dict[str, str] = {
    "table1_accuracy": (
        "Paper Table 1 as printed. Its abstract gives the two columns the other way round "
        "(Li et al. MAE 8.56, SSIM 0.71; PGMGVCE MAE 8.72, SSIM 0.73). The paper's intensity unit "
        "is not stated, so its MAE/MSE are not directly comparable with ours (12-bit scanner units)."
    ),
    "table2_texture": "Paper Table 2 (texture of 2D slices; our VFPMI is computed on intensities / 4095).",
    "ablation_ratio": "Paper section 3.2.1 (lambda_pg : lambda_gan); SSIM not reported there.",
    "ablation_normalization": "Paper section 3.2.2; SSIM not reported there.",
    "ablation_modality": (
        "Paper section 3.2.3. By eq. 16 a worse single-modality SSIM gives a negative SSIMR; the "
        "paper reports positive SSIMR values, so compare magnitudes."
    ),
}


# --------------------------------------------------------------------------- loading


def _read_metrics_csv(path: Path, columns: Sequence[str]) -> pd.DataFrame:
    if not path.is_file():
        raise VCEInputError(f"metrics file not found: {path}")
    try:
        df = pd.read_csv(path, dtype={"patient": str})
    except Exception as exc:  # empty, not CSV, unreadable, ...
        raise VCEInputError(f"cannot read metrics file {path}: {exc}") from exc
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise VCEInputError(f"metrics file {path} lacks column(s) {missing}; has {list(df.columns)}")
    if df.empty:
        raise VCEInputError(f"metrics file {path} has no rows")
    for c in columns:
        if c == "patient":
            continue
        try:
            df[c] = pd.to_numeric(df[c], errors="raise").astype(float)
        except (ValueError, TypeError) as exc:
            raise VCEInputError(f"metrics file {path}: column {c!r} is not numeric: {exc}") from exc
        if df[c].isna().any():
            raise VCEInputError(f"metrics file {path}: column {c!r} has missing values")
    if df["patient"].isna().any():
        raise VCEInputError(f"metrics file {path}: column 'patient' has missing values")
    return df


def load_patient_metrics(eval_dir: str | Path) -> pd.DataFrame:
    """``<eval_dir>/metrics_patients.csv``, validated (one row per patient, numeric metrics)."""
    path = Path(eval_dir) / PATIENTS_CSV
    df = _read_metrics_csv(path, PATIENT_COLUMNS)
    dup = df["patient"][df["patient"].duplicated()].tolist()
    if dup:
        raise VCEInputError(f"metrics file {path}: duplicate patient row(s) {dup}")
    return df.reset_index(drop=True)


def load_slice_metrics(eval_dir: str | Path) -> pd.DataFrame:
    """``<eval_dir>/metrics_slices.csv``, validated."""
    return _read_metrics_csv(Path(eval_dir) / SLICES_CSV, SLICE_COLUMNS)


# --------------------------------------------------------------------------- roles


@dataclass(frozen=True)
class Roles:
    """Which variant plays which part; ablation groups map row label -> variant name."""

    main: str
    baseline: str | None = None
    ratio: dict[str, str] = field(default_factory=dict)
    normalization: dict[str, str] = field(default_factory=dict)
    modality: dict[str, str] = field(default_factory=dict)

    def of(self, name: str) -> str:
        """Human-readable role(s) of a variant (empty when it has none)."""
        if name == self.main:
            return "main"
        out = []
        if name == self.baseline:
            out.append("baseline")
        for group, members in (("ratio", self.ratio), ("normalization", self.normalization), ("modality", self.modality)):
            out += [f"{group} {label}" for label, n in members.items() if n == name]
        return ", ".join(out)


def _fmt_num(x: float) -> str:
    return f"{x:g}"


def ratio_label(lambda_pg: float, lambda_gan: float) -> str:
    """``lambda_pg : lambda_gan`` reduced so the smaller side is 1 (10:1, 1:1, 1:10, 2.5:1)."""
    if lambda_pg == 0 and lambda_gan == 0:
        return "0:0"
    if lambda_gan == 0:
        return "1:0"
    if lambda_pg == 0:
        return "0:1"
    r = lambda_pg / lambda_gan
    if r >= 1:
        return f"{_fmt_num(round(r, 6))}:1"
    return f"1:{_fmt_num(round(1 / r, 6))}"


def _same_except(v: Variant, main: Variant, fields: set[str]) -> bool:
    a, b = v.to_dict(), main.to_dict()
    keys = set(a) - {"name"} - fields
    return all(a[k] == b[k] for k in keys)


def _group(
    variants: Sequence[Variant], main: Variant, fields: set[str], label, order_key
) -> dict[str, str]:
    members = [v for v in variants if _same_except(v, main, fields)]
    members.sort(key=lambda v: (order_key(v), v.name != main.name, v.name))
    out: dict[str, str] = {}
    for v in members:
        lab = label(v)
        if lab in out:  # e.g. 2:2 next to 1:1: keep both, tell them apart by name
            lab = f"{lab} ({v.name})"
        out[lab] = v.name
    return out if len(out) >= 2 else {}


def derive_roles(variants: Sequence[Variant], main: str = "pgmgvce_main", available: set[str] | None = None) -> Roles:
    """Roles of ``variants`` relative to the variant named ``main``.

    Only variants in ``available`` (default: all) are considered. An ablation group is empty
    unless it has the main variant and at least one other member.
    """
    variants = [Variant.from_any(v) for v in variants]
    by_name = {v.name: v for v in variants}
    if main not in by_name:
        raise VCEInputError(f"main variant {main!r} is not among the variants {sorted(by_name)}")
    m = by_name[main]
    if available is not None:
        variants = [v for v in variants if v.name in available]
        if main not in available:
            raise VCEInputError(f"main variant {main!r} has no evaluation directory")

    baselines = [v for v in variants if v.model == "mmgsn" and v.name != main]
    if len(baselines) > 1:
        log.warning("several mmgsn variants %s; using %s as the baseline", [v.name for v in baselines], baselines[0].name)
    baseline = baselines[0].name if baselines else None

    if m.model != "pgmgvce":
        log.warning("main variant %s is not a pgmgvce model; ablation groups are built around it anyway", main)

    ratio = _group(
        variants,
        m,
        {"lambda_pg", "lambda_gan"},
        lambda v: ratio_label(v.lambda_pg, v.lambda_gan),
        lambda v: -(v.lambda_pg / v.lambda_gan) if v.lambda_gan else -math.inf,
    )
    normalization = _group(
        variants, m, {"normalization"}, lambda v: v.normalization, lambda v: NORMALIZATIONS.index(v.normalization)
    )
    modality: dict[str, str] = {}
    if m.modalities == MODALITIES:  # eq. 14-16 are relative to the dual-modality model
        modality = _group(
            variants,
            m,
            {"modalities"},
            lambda v: MODALITY_LABELS.get(v.modalities, " + ".join(v.modalities)),
            lambda v: (len(v.modalities), v.modalities),
        )
    return Roles(main=main, baseline=baseline, ratio=ratio, normalization=normalization, modality=modality)


# --------------------------------------------------------------------------- statistics


def mean_sd(x: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; NaN for fewer than 2 values)."""
    a = np.asarray(x, dtype=float)
    if a.size == 0:
        return math.nan, math.nan
    sd = float(a.std(ddof=1)) if a.size >= 2 else math.nan
    return float(a.mean()), sd


def paired_pvalues(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """(Wilcoxon signed-rank p, paired t-test p) of paired samples; NaN when not computable.

    Needs at least 2 pairs and not all differences zero. With few pairs the Wilcoxon p
    cannot be small (its exact minimum is 2 / 2**n), so read it with n in mind.
    """
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if a.size < 2 or a.size != b.size or np.all(a - b == 0):
        return math.nan, math.nan
    out = []
    for test in (stats.wilcoxon, stats.ttest_rel):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                p = float(test(a, b).pvalue)
        except (ValueError, ZeroDivisionError, FloatingPointError):
            p = math.nan
        out.append(p if math.isfinite(p) else math.nan)
    return out[0], out[1]


def _paired(a: pd.DataFrame, b: pd.DataFrame, col_a: str, col_b: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Values of the patients present in both frames, aligned by patient id."""
    col_b = col_b or col_a
    j = a[["patient", col_a]].merge(b[["patient", col_b]], on="patient", suffixes=("_a", "_b"))
    ca = f"{col_a}_a" if col_a == col_b else col_a
    cb = f"{col_b}_b" if col_a == col_b else col_b
    return j[ca].to_numpy(float), j[cb].to_numpy(float)


def _add(row: dict[str, Any], group: str, values) -> None:
    row[f"{group} mean"], row[f"{group} sd"] = mean_sd(values)


def _frame(rows: dict[str, dict[str, Any]], index_name: str, **attrs: Any) -> pd.DataFrame:
    df = pd.DataFrame.from_dict(rows, orient="index")
    df.index.name = index_name
    df.attrs.update(attrs)
    return df


# --------------------------------------------------------------------------- tables


def _add_paired_tests(row: dict[str, Any], main: pd.DataFrame, base: pd.DataFrame, key: str) -> None:
    """n common patients and the paired Wilcoxon / t-test p-values of ``key``, main vs baseline."""
    x, y = _paired(main, base, key)
    row["n"] = len(x)
    row["p_wilcoxon"], row["p_ttest"] = paired_pvalues(x, y)


def _table1(main: pd.DataFrame, base: pd.DataFrame, names: dict[str, str]) -> pd.DataFrame:
    rows = {}
    for key, label in ACCURACY:
        row: dict[str, Any] = {}
        _add(row, MAIN_LABEL, main[key])
        _add(row, BASELINE_LABEL, base[key])
        _add_paired_tests(row, main, base, key)
        rows[label] = row
    return _frame(
        rows,
        "metric",
        title="Table 1 - accuracy: PGMGVCE vs Li et al. MMgSN-Net",
        description=(
            "MAE, MSE (scanner units) and SSIM between synthetic and real T1C; mean ± sd over test "
            "patients; paired p-values (Wilcoxon signed-rank, paired t-test) over the n common patients."
        ),
        variants=names,
    )


def _table2(main: pd.DataFrame, base: pd.DataFrame, names: dict[str, str]) -> pd.DataFrame:
    rows = {}
    for key, label in TEXTURE:
        row: dict[str, Any] = {}
        _add(row, GT_LABEL, main[f"gt_{key}"])
        _add(row, BASELINE_LABEL, base[key])
        _add(row, MAIN_LABEL, main[key])
        _add_paired_tests(row, main, base, key)
        rows[label] = row
    return _frame(
        rows,
        "metric",
        title="Table 2 - texture: ground truth vs Li et al. MMgSN-Net vs PGMGVCE",
        description=(
            "Texture indices of eq. 7-10 (smaller = smoother); ground truth from the main variant's "
            "test slices; p-values pair PGMGVCE with Li et al. over the n common patients."
        ),
        variants=names,
    )


def _ablation(
    group: dict[str, str], data: dict[str, pd.DataFrame], index_name: str, title: str, description: str
) -> pd.DataFrame:
    rows = {}
    for label, name in group.items():
        row: dict[str, Any] = {"variant": name}
        for key, col in ACCURACY:
            _add(row, col, data[name][key])
        row["n"] = len(data[name])
        rows[label] = row
    return _frame(rows, index_name, title=title, description=description, variants=dict(group))


def _modality(group: dict[str, str], main: str, data: dict[str, pd.DataFrame]) -> pd.DataFrame:
    rows = {}
    for label, name in group.items():
        if name == main:
            continue
        row: dict[str, Any] = {"variant": name}
        n = 0
        for key, col in ACCURACY:
            single, dual = _paired(data[name], data[main], key)
            # eq. 14-16, per patient: (metric_single - metric_dual) / metric_dual
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = (single - dual) / dual
            _add(row, f"{col}R", ratio)
            n = len(single)
        row["n"] = n
        rows[label] = row
    return _frame(
        rows,
        "modality",
        title="Ablation - single modality vs T1 + T2 (eq. 14-16)",
        description=(
            "MAER, MSER, SSIMR = (metric with one modality - metric with T1 + T2) / metric with T1 + T2, "
            f"computed per test patient against the main variant ({main}), then mean ± sd over the n paired patients."
        ),
        variants=dict(group),
    )


def _overview(roles: Roles, names: Sequence[str], data: dict[str, pd.DataFrame], slices: dict[str, int]) -> pd.DataFrame:
    rows = {}
    for name in names:
        row: dict[str, Any] = {"role": roles.of(name)}
        for key, col in (*ACCURACY, *TEXTURE):
            _add(row, col, data[name][key])
        row["n"] = len(data[name])
        row["n_slices"] = slices[name]
        rows[name] = row
    return _frame(
        rows,
        "variant",
        title="All variants",
        description="Every evaluated variant: mean ± sd over its test patients (n patients, n_slices slices).",
        variants={n: n for n in names},
    )


def build_tables(
    eval_dirs: Mapping[str, str | Path], variants: Sequence[Variant], main: str = "pgmgvce_main"
) -> dict[str, pd.DataFrame]:
    """Build the study's tables from per-variant evaluation directories.

    ``eval_dirs`` maps variant name -> directory with ``metrics_patients.csv`` and
    ``metrics_slices.csv``. Only variants present in both ``eval_dirs`` and ``variants`` are
    used. Returns the tables of :data:`TABLE_ORDER` that the available variants support.
    Raises :class:`~vce.io.errors.VCEInputError` naming a missing or unreadable file.
    """
    variants = [Variant.from_any(v) for v in variants]
    known = {v.name for v in variants}
    extra = sorted(set(eval_dirs) - known)
    if extra:
        log.warning("evaluation directories for unknown variants are ignored: %s", extra)
    names = [v.name for v in variants if v.name in eval_dirs]
    roles = derive_roles(variants, main=main, available=set(names))

    data: dict[str, pd.DataFrame] = {}
    n_slices: dict[str, int] = {}
    for name in names:
        data[name] = load_patient_metrics(eval_dirs[name])
        n_slices[name] = len(load_slice_metrics(eval_dirs[name]))

    tables: dict[str, pd.DataFrame] = {}
    if roles.baseline is not None:
        pair = {MAIN_LABEL: main, BASELINE_LABEL: roles.baseline}
        tables["table1_accuracy"] = _table1(data[main], data[roles.baseline], pair)
        tables["table2_texture"] = _table2(
            data[main], data[roles.baseline], {GT_LABEL: main, BASELINE_LABEL: roles.baseline, MAIN_LABEL: main}
        )
    else:
        log.info("no mmgsn baseline evaluated: Tables 1 and 2 are left out")
    if roles.ratio:
        tables["ablation_ratio"] = _ablation(
            roles.ratio,
            data,
            "ratio",
            "Ablation - pixelwise-gradient : GAN loss ratio",
            "MAE, MSE, SSIM for each lambda_pg : lambda_gan (other settings as the main variant); mean ± sd over test patients.",
        )
    if roles.normalization:
        tables["ablation_normalization"] = _ablation(
            roles.normalization,
            data,
            "normalization",
            "Ablation - intensity normalisation",
            "MAE, MSE, SSIM for z-score, sigmoid and tanh normalisation (other settings as the main variant); mean ± sd over test patients.",
        )
    if roles.modality:
        tables["ablation_modality"] = _modality(roles.modality, main, data)
    tables["variants_overview"] = _overview(roles, names, data, n_slices)
    return tables


# --------------------------------------------------------------------------- rendering


def _decimals(mean: float) -> int:
    if not math.isfinite(mean) or mean == 0:
        return 4
    return int(min(8, max(0, 3 - math.floor(math.log10(abs(mean))))))


def format_mean_sd(mean: float, sd: float) -> str:
    """``"8.564 ± 0.451"``: four significant digits of the mean, the sd to the same decimals."""
    if not math.isfinite(mean):
        return "n/a"
    d = _decimals(mean)
    if not math.isfinite(sd):
        return f"{mean:.{d}f} ± n/a"
    return f"{mean:.{d}f} ± {sd:.{d}f}"


def _format_cell(col: str, x: Any) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if col == "n" or col.startswith("n_"):
        return str(int(x))
    if col.startswith("p_"):
        return "<0.001" if x < 0.001 else f"{x:.3f}"
    if isinstance(x, (float, np.floating)):
        return f"{x:.4g}"
    return str(x)


def display_frame(df: pd.DataFrame) -> pd.DataFrame:
    """String version of a table: each ``X mean``/``X sd`` pair becomes one ``X`` column."""
    cols = list(df.columns)
    out: dict[str, list[str]] = {}
    for c in cols:
        if c.endswith(" sd") and f"{c[:-3]} mean" in cols:
            continue
        if c.endswith(" mean") and f"{c[:-5]} sd" in cols:
            g = c[:-5]
            out[g] = [format_mean_sd(m, s) for m, s in zip(df[c], df[f"{g} sd"])]
        else:
            out[c] = [_format_cell(c, x) for x in df[c]]
    res = pd.DataFrame(out, index=[str(i) for i in df.index])
    res.index.name = df.index.name
    return res


def _md_escape(s: Any) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub-flavoured markdown table of a frame of strings (index as first column)."""
    header = [df.index.name or ""] + [str(c) for c in df.columns]
    lines = ["| " + " | ".join(_md_escape(h) for h in header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    for idx, row in df.iterrows():
        lines.append("| " + " | ".join(_md_escape(x) for x in [idx, *row.tolist()]) + " |")
    return "\n".join(lines) + "\n"


def reference_frame(name: str, df: pd.DataFrame) -> pd.DataFrame | None:
    """The paper's values for the rows/columns of table ``name`` (None when it has none)."""
    ref = PAPER_REFERENCE.get(name)
    if not ref:
        return None
    disp = display_frame(df)
    groups = [c for c in disp.columns if any(c in r for r in ref.values())]
    rows = [str(i) for i in disp.index if str(i) in ref]
    if not groups or not rows:
        return None
    out = pd.DataFrame({g: [ref[r].get(g, "–") for r in rows] for g in groups}, index=rows)
    out.index.name = df.index.name
    return out


def to_markdown(name: str, df: pd.DataFrame, level: int = 2, reference: bool = True) -> str:
    """Heading, one-line explanation, the table, and the paper's values below it."""
    title = df.attrs.get("title", name)
    parts = [f"{'#' * level} {title}\n"]
    if df.attrs.get("description"):
        parts.append(f"{df.attrs['description']}\n")
    parts.append(markdown_table(display_frame(df)))
    if reference:
        ref = reference_frame(name, df)
        if ref is not None:
            parts.append(f"Paper (Cheng et al. 2024) for comparison. {PAPER_NOTES.get(name, '')}\n".rstrip() + "\n")
            parts.append(markdown_table(ref))
    return "\n".join(parts)


def _ordered(tables: Mapping[str, pd.DataFrame]) -> list[str]:
    return [n for n in TABLE_ORDER if n in tables] + [n for n in tables if n not in TABLE_ORDER]


def summary_markdown(tables: Mapping[str, pd.DataFrame]) -> str:
    parts = [
        "# VCE study: comparison report\n",
        "All values are mean ± sd (sample sd) over test patients, each patient being the mean over "
        "its test slices. MAE/MSE are in 12-bit scanner units; texture indices follow eq. 7-10 of "
        "the paper (docs/metrics.md). Tables left out had no evaluated variants.\n",
    ]
    for name in _ordered(tables):
        parts.append(to_markdown(name, tables[name], level=2))
    return "\n".join(parts)


def format_console(tables: Mapping[str, pd.DataFrame]) -> str:
    """All tables as plain text (for printing at the end of the study)."""
    parts = []
    for name in _ordered(tables):
        df = tables[name]
        title = df.attrs.get("title", name)
        parts.append(f"{title}\n{'=' * len(title)}\n{display_frame(df).to_string()}\n")
    return "\n".join(parts)


# --------------------------------------------------------------------------- writing


def write_report(tables: Mapping[str, pd.DataFrame], out_dir: str | Path) -> Path:
    """Write ``<name>.csv``/``<name>.md`` per table, ``summary.md`` and the figures, atomically.

    ``out_dir`` is complete or absent: everything is written into a temporary sibling that
    replaces ``out_dir`` only when all files were written.
    """
    from vce.reporting import figures  # late import: keeps matplotlib off the table-only path

    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        for name in _ordered(tables):
            df = tables[name]
            df.to_csv(tmp / f"{name}.csv", index=True)
            (tmp / f"{name}.md").write_text(to_markdown(name, df, level=1), encoding="utf-8")
        (tmp / "summary.md").write_text(summary_markdown(tables), encoding="utf-8")
        if "variants_overview" in tables:
            figures.plot_metrics_by_variant(tables["variants_overview"], tmp / figures.METRICS_BY_VARIANT_PNG)
        if "table2_texture" in tables:
            figures.plot_texture(tables["table2_texture"], tmp / figures.TEXTURE_PNG)
    return out_dir


def compare(
    eval_dirs: Mapping[str, str | Path],
    variants: Sequence[Variant],
    out_dir: str | Path,
    main: str = "pgmgvce_main",
) -> dict[str, pd.DataFrame]:
    """Build the tables and write the report to ``out_dir``; returns the tables."""
    tables = build_tables(eval_dirs, variants, main=main)
    write_report(tables, out_dir)
    return tables
