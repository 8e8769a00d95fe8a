"""Comparison tables, figures and the study report (paper Tables 1-2 and the ablations)."""

from __future__ import annotations

from vce.reporting.tables import (
    PATIENTS_CSV,
    SLICES_CSV,
    TABLE_ORDER,
    Roles,
    build_tables,
    compare,
    derive_roles,
    format_console,
    load_patient_metrics,
    load_slice_metrics,
    write_report,
)

__all__ = [
    "PATIENTS_CSV",
    "SLICES_CSV",
    "TABLE_ORDER",
    "Roles",
    "build_tables",
    "compare",
    "derive_roles",
    "format_console",
    "load_patient_metrics",
    "load_slice_metrics",
    "write_report",
]
