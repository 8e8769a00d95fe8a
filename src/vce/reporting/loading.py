"""The per-variant evaluation files the report reads, and the metric columns it shows.

One evaluation directory per variant holds ``metrics_patients.csv`` (one row per test patient:
the mean of that patient's slice metrics) and ``metrics_slices.csv`` (one row per slice).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from vce.io.errors import VCEInputError
from vce.metrics import METRIC_KEYS

PATIENTS_CSV = "metrics_patients.csv"
SLICES_CSV = "metrics_slices.csv"
PATIENT_COLUMNS = ("patient", *METRIC_KEYS)
SLICE_COLUMNS = ("patient", "slice", *METRIC_KEYS)

#: (metric column, report label): the accuracy metrics of paper Table 1 and the ablations.
ACCURACY = (("mae", "MAE"), ("mse", "MSE"), ("ssim", "SSIM"))
#: (metric column, report label): the texture indices of paper Table 2 (eq. 7-10).
TEXTURE = (("tmsvpmi", "TMSVPMI"), ("tavpmi", "TAVPMI"), ("tfpmi", "TFPMI"), ("vfpmi", "VFPMI"))


def _numeric_columns(df: pd.DataFrame, path: Path, columns: Sequence[str]) -> None:
    """Convert ``columns`` (all but ``patient``) of ``df`` to float in place; raises on bad values."""
    for c in columns:
        if c == "patient":
            continue
        try:
            df[c] = pd.to_numeric(df[c], errors="raise").astype(float)
        except (ValueError, TypeError) as exc:
            raise VCEInputError(f"metrics file {path}: column {c!r} is not numeric: {exc}") from exc
        if df[c].isna().any():
            raise VCEInputError(f"metrics file {path}: column {c!r} has missing values")


def _read_metrics_csv(path: Path, columns: Sequence[str]) -> pd.DataFrame:
    """The CSV at ``path`` with ``columns`` present, non-empty and numeric; raises VCEInputError naming it."""
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
    _numeric_columns(df, path, columns)
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
