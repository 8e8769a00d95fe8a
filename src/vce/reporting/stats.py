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


def bootstrap_ci(x: Sequence[float] | np.ndarray, level: float = 0.95, n_resamples: int = 2000,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of ``x`` (NaNs dropped; NaN, NaN for fewer than 2 values).

    :func:`scipy.stats.bootstrap`, ``method="percentile"`` (BCa is unstable at the handful of
    test patients a study has), seeded: the same values give the same interval.
    """
    a = np.asarray(x, dtype=float)
    a = a[np.isfinite(a)]
    if a.size < 2 or np.all(a == a[0]):
        v = float(a[0]) if a.size else math.nan
        return (v, v) if a.size >= 2 else (math.nan, math.nan)
    res = stats.bootstrap((a,), np.mean, confidence_level=level, n_resamples=n_resamples, method="percentile",
                          rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def tost_paired(x: Sequence[float], y: Sequence[float], margin: float) -> float:
    """Two one-sided paired t-tests (TOST) of equivalence: p that ``|mean(x - y)| < margin`` is NOT true.

    Small p (< 0.05) = equivalent within ``±margin``: both ``mean(x - y) > -margin`` and
    ``mean(x - y) < margin`` are supported. NaN for fewer than 2 pairs or ``margin <= 0``.
    """
    d = np.asarray(x, dtype=float) - np.asarray(y, dtype=float)
    d = d[np.isfinite(d)]
    if d.size < 2 or not margin > 0:
        return math.nan
    if np.all(d == d[0]):
        return 0.0 if abs(d[0]) < margin else 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p_low = stats.ttest_1samp(d, -margin, alternative="greater").pvalue
        p_high = stats.ttest_1samp(d, margin, alternative="less").pvalue
    return float(max(p_low, p_high))


def paired_difference(x: Sequence[float], y: Sequence[float], *, level: float = 0.95, n_resamples: int = 2000,
                      seed: int = 0, margin: float | None = None) -> dict[str, float]:
    """Paired ``x - y`` over patients: ``diff`` (mean), its bootstrap CI (``ci_low``, ``ci_high``),
    ``p_wilcoxon`` (two-sided; exact for small n), ``n``; with ``margin`` also ``p_tost`` and ``margin``."""
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    d = a - b
    lo, hi = bootstrap_ci(d, level, n_resamples, seed)
    out = {"diff": float(d.mean()) if d.size else math.nan, "ci_low": lo, "ci_high": hi,
           "p_wilcoxon": paired_pvalues(a, b)[0], "n": int(d.size)}
    if margin is not None:
        out["margin"] = float(margin)
        out["p_tost"] = tost_paired(a, b, margin)
    return out


def summarise(x: Sequence[float] | np.ndarray, *, level: float = 0.95, n_resamples: int = 2000,
              seed: int = 0) -> dict[str, float]:
    """``{"mean", "sd", "n", "ci_low", "ci_high"}`` of per-patient values (NaNs dropped): a metrics.json entry."""
    a = np.asarray(x, dtype=float)
    a = a[np.isfinite(a)]
    m, s = mean_sd(a)
    lo, hi = bootstrap_ci(a, level, n_resamples, seed)
    return {"mean": m, "sd": s, "n": int(a.size), "ci_low": lo, "ci_high": hi}
