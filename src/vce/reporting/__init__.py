"""Comparison tables, figures and the study report (paper Tables 1-2 and the ablations).

Modules: :mod:`~vce.reporting.loading` (the evaluation files), :mod:`~vce.reporting.stats`
(mean ± sd, paired tests), :mod:`~vce.reporting.ablations` (the ``ABLATIONS`` table and the
variants' roles), :mod:`~vce.reporting.paper` (the paper's printed values, report order),
:mod:`~vce.reporting.tables` (building the tables), :mod:`~vce.reporting.rendering` (Markdown,
console text, the report files).
"""

from __future__ import annotations

from vce.reporting.ablations import ABLATIONS, Ablation, Roles, derive_roles
from vce.reporting.loading import PATIENTS_CSV, SLICES_CSV, load_patient_metrics, load_slice_metrics
from vce.reporting.paper import TABLE_ORDER
from vce.reporting.rendering import format_console, write_report
from vce.reporting.tables import build_tables, compare

__all__ = [
    "ABLATIONS",
    "PATIENTS_CSV",
    "SLICES_CSV",
    "TABLE_ORDER",
    "Ablation",
    "Roles",
    "build_tables",
    "compare",
    "derive_roles",
    "format_console",
    "load_patient_metrics",
    "load_slice_metrics",
    "write_report",
]
