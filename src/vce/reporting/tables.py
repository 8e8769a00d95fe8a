"""The study's comparison tables: paper Table 1 (accuracy), Table 2 (texture), the section 3.2
ablations and an overview of every variant.

Input: one evaluation directory per variant (:mod:`vce.reporting.loading`). Every statistic
here is over TEST PATIENTS: "mean ± sd" is the mean and the sample standard deviation
(``ddof=1``) of the per-patient values; p-values pair the two variants' values of the same
patients (:mod:`vce.reporting.stats`).

Roles come from the variants' attributes relative to the main variant, the only one named
(:func:`~vce.reporting.ablations.derive_roles`); the ablations are the entries of
:data:`~vce.reporting.ablations.ABLATIONS`. A table whose variants are absent is left out.

Each table is a DataFrame with numeric ``"<group> mean"`` / ``"<group> sd"`` column pairs (and
plain columns such as ``n`` or p-values); :func:`~vce.reporting.rendering.to_markdown` renders
each pair as one ``"mean ± sd"`` column. ``DataFrame.attrs`` carries ``title``,
``description`` and ``variants``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from vce.config import Variant
from vce.reporting import ablations
from vce.reporting.ablations import Roles, derive_roles
from vce.reporting.loading import ACCURACY, TEXTURE, load_patient_metrics, load_slice_metrics
from vce.reporting.paper import BASELINE_LABEL, GT_LABEL, MAIN_LABEL, OVERVIEW, TABLE1, TABLE2
from vce.reporting.rendering import write_report
from vce.reporting.stats import add_mean_sd, add_paired_tests, frame

__all__ = ["build_tables", "compare"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MainVsBaseline:
    """A table shaped like paper Tables 1-2: one row per metric, main vs baseline, paired p-values.

    ``metrics`` are (metric column, row label); ``columns`` are (column label, whose metrics
    file, source column with ``{}`` for the metric column). The p-values pair main's and the
    baseline's values of each metric.
    """

    name: str
    metrics: tuple[tuple[str, str], ...]
    columns: tuple[tuple[str, Literal["main", "baseline", "oracle", "learnability"], str], ...]
    title: str
    description: str

    def build(self, data: Mapping[str, pd.DataFrame], names: Mapping[str, str]) -> pd.DataFrame:
        """The table from ``data`` and ``names``, each keyed ``"main"`` / ``"baseline"`` (metrics, variant name)."""
        rows = {}
        for key, label in self.metrics:
            row: dict[str, Any] = {}
            for col, who, source in self.columns:
                if who in data:  # the reference columns only when the reference rows were computed
                    add_mean_sd(row, col, data[who][source.format(key)])
            add_paired_tests(row, data["main"], data["baseline"], key)
            rows[label] = row
        variants = {col: names[who] for col, who, _ in self.columns if who in names}
        return frame(rows, "metric", title=self.title, description=self.description, variants=variants)


ORACLE_LABEL = "Oracle (ceiling)"
LEARNABILITY_LABEL = "Learnability (reference)"

ACCURACY_TABLE = MainVsBaseline(
    TABLE1,
    ACCURACY,
    ((MAIN_LABEL, "main", "{}"), (BASELINE_LABEL, "baseline", "{}"), (ORACLE_LABEL, "oracle", "{}"),
     (LEARNABILITY_LABEL, "learnability", "{}")),
    title="Table 1 - accuracy: PGMGVCE vs Li et al. MMgSN-Net",
    description=(
        "MAE, MSE (scanner units) and SSIM between synthetic and real T1C over the whole slice, as in the paper "
        "(paper inversion: ground-truth T1C statistics); mean ± sd over test patients; paired p-values "
        "(Wilcoxon signed-rank, paired t-test) of PGMGVCE vs Li et al. over the n common patients. Oracle = the "
        "truth through the prediction's resampling (the ceiling); learnability = a voxelwise regressor on T1/T2 "
        "(a reference, not the paper's)."
    ),
)
TEXTURE_TABLE = MainVsBaseline(
    TABLE2,
    TEXTURE,
    ((GT_LABEL, "main", "gt_{}"), (BASELINE_LABEL, "baseline", "{}"), (MAIN_LABEL, "main", "{}"),
     (ORACLE_LABEL, "oracle", "{}"), (LEARNABILITY_LABEL, "learnability", "{}")),
    title="Table 2 - texture: ground truth vs Li et al. MMgSN-Net vs PGMGVCE",
    description=(
        "Texture indices of eq. 7-10 as printed, over the whole slice (smaller = smoother); ground truth from "
        "the main variant's test slices; p-values pair PGMGVCE with Li et al. over the n common patients. The "
        "oracle column is the truth through the prediction's resampling: equal to the ground truth when the "
        "model grid is the acquisition grid."
    ),
)


def _kind(v: Variant | None) -> str:
    """Whether a row is the paper's: paper variant, seed replicate or beyond the paper; '' for a reference."""
    if v is None:
        return "reference (not a model of the paper)"
    if not v.paper:
        return "beyond the paper (not in the paper)"
    return "seed replicate (not in the paper)" if v.seed_offset else "paper variant"


def _overview(
    roles: Roles, names: Sequence[str], data: Mapping[str, pd.DataFrame], n_slices: Mapping[str, int],
    variants: Mapping[str, Variant] | None = None,
) -> pd.DataFrame:
    """One row per evaluated variant: its role and kind (paper variant, seed replicate, beyond the
    paper, reference), every metric's mean ± sd, n patients, n slices."""
    rows = {}
    variants = variants or {}
    for name in names:
        row: dict[str, Any] = {"role": "reference" if name in ("oracle", "learnability") else roles.of(name),
                               "kind": _kind(variants.get(name))}
        for key, col in (*ACCURACY, *TEXTURE):
            add_mean_sd(row, col, data[name][key])
        row["n"] = len(data[name])
        row["n_slices"] = n_slices[name]
        rows[name] = row
    return frame(
        rows,
        "variant",
        title="All variants",
        description="Every evaluated variant: mean ± sd over its test patients (n patients, n_slices slices).",
        variants={n: n for n in names},
    )


def build_tables(
    eval_dirs: Mapping[str, str | Path], variants: Sequence[Variant | dict[str, Any] | str], *, main: str,
    references: Mapping[str, pd.DataFrame] | None = None,
) -> dict[str, pd.DataFrame]:
    """Build the study's tables from per-variant evaluation directories; returns ``{name: table}`` in report order.

    ``eval_dirs`` maps variant name -> directory with ``metrics_patients.csv`` and
    ``metrics_slices.csv``; ``main`` names the main variant. Only variants present in both
    ``eval_dirs`` and ``variants`` are used; the tables are those of
    :func:`~vce.reporting.paper.table_order` that they support. Raises
    :class:`~vce.io.errors.VCEInputError` naming a missing or unreadable file. ``references``
    (``"oracle"``, ``"learnability"`` -> per-patient metrics) add their columns to Tables 1-2.
    """
    variants = [Variant.from_any(v) for v in variants]
    extra = sorted(set(eval_dirs) - {v.name for v in variants})
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
        pair = {"main": main, "baseline": roles.baseline}
        refs = dict(references or {})
        for spec in (ACCURACY_TABLE, TEXTURE_TABLE):
            tables[spec.name] = spec.build({**{who: data[n] for who, n in pair.items()}, **refs}, {**pair, **{r: r for r in refs}})
    else:
        log.info("no mmgsn baseline evaluated: Tables 1 and 2 are left out")
    for ablation in ablations.ABLATIONS:
        if roles.groups[ablation.name]:
            group = dict(roles.groups[ablation.name])
            if not ablation.relative and "oracle" in (references or {}):
                group[ORACLE_LABEL] = "oracle"  # the ceiling beside every accuracy table
            tables[ablation.table] = ablation.build(group, main, {**data, **dict(references or {})})
    refs = dict(references or {})
    tables[OVERVIEW] = _overview(roles, [*refs, *names], {**refs, **data}, {**{r: int(d["n_slices"].sum()) if "n_slices" in d else 0 for r, d in refs.items()}, **n_slices},
                                 {v.name: v for v in variants})
    return tables


def compare(
    eval_dirs: Mapping[str, str | Path],
    variants: Sequence[Variant | dict[str, Any] | str],
    out_dir: str | Path,
    *,
    main: str,
) -> dict[str, pd.DataFrame]:
    """Build the tables (:func:`build_tables`) and write the report to ``out_dir``; returns the tables."""
    tables = build_tables(eval_dirs, variants, main=main)
    write_report(tables, out_dir)
    return tables
