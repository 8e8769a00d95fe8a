"""Statistics over test patients, and the table cells built from them.

Every "mean ± sd" is the mean and the sample standard deviation (``ddof=1``) of per-patient
values; paired tests join two variants' frames on the ``patient`` id.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats


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


def paired(a: pd.DataFrame, b: pd.DataFrame, col_a: str, col_b: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Values ``a[col_a]``, ``b[col_b]`` (default ``col_a``) of the patients in both frames, aligned by patient id."""
    col_b = col_b or col_a
    j = a[["patient", col_a]].merge(b[["patient", col_b]], on="patient", suffixes=("_a", "_b"))
    ca = f"{col_a}_a" if col_a == col_b else col_a
    cb = f"{col_b}_b" if col_a == col_b else col_b
    return j[ca].to_numpy(float), j[cb].to_numpy(float)


def add_mean_sd(row: dict[str, Any], group: str, values: Sequence[float] | np.ndarray | pd.Series) -> None:
    """Set ``row["<group> mean"]`` and ``row["<group> sd"]`` to the :func:`mean_sd` of ``values``."""
    row[f"{group} mean"], row[f"{group} sd"] = mean_sd(values)


def add_paired_tests(row: dict[str, Any], a: pd.DataFrame, b: pd.DataFrame, key: str) -> None:
    """Set ``row["n"]`` (patients in both frames) and ``row["p_wilcoxon"]``, ``row["p_ttest"]`` of ``key``, a vs b."""
    x, y = paired(a, b, key)
    row["n"] = len(x)
    row["p_wilcoxon"], row["p_ttest"] = paired_pvalues(x, y)


def frame(rows: dict[str, dict[str, Any]], index_name: str, **attrs: Any) -> pd.DataFrame:
    """A table with one row per ``rows`` item (in order), index named ``index_name``, ``attrs`` in ``DataFrame.attrs``."""
    df = pd.DataFrame.from_dict(rows, orient="index")
    df.index.name = index_name
    df.attrs.update(attrs)
    return df
