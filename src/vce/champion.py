"""Which trained variant the registry's ``champion`` alias points to: the one with the best evidence.

``study.champion_metric`` (``params.yaml``) names a per-patient score column of each variant's
``metrics_patients.csv`` (default ``mae_body_cal``: the deployable inversion, what ``vce predict``
gives users); ``study.champion_goal`` says whether lower (``min``) or higher (``max``) is better.
A variant's value is the mean of that column over the test patients (undefined patients left out,
as in ``metrics.json``). :func:`choose_champion` is pure: per-variant values in, a
:class:`Champion` out (winner, its mean and bootstrap CI, the ranking, what was skipped and why,
and a one-line reason). Ties go to the alphabetically first name; NaN never wins. Every variant
is eligible, single-modality ones included (``vce predict`` reads the modalities from the
checkpoint). :func:`vce.steps.compare` feeds it from the evaluation directories and hands the
winner to :func:`vce.tracking.promote_champion`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vce.config import CHAMPION_GOALS, ConfigError
from vce.metrics.scoring import GT_METRICS, PATIENT_METRICS

logger = logging.getLogger(__name__)

CHAMPION_JSON = "champion.json"
#: Metric column suffix of each inversion: ``vce.evaluation.synthesisers.INVERSIONS``'s values
#: (not imported from there: that module needs torch; a test checks they agree).
INVERSION_SUFFIXES = ("", "_cal")
#: Patient columns that are counts, not scores of a prediction.
_COUNTS = ("n_slices", "n_tumour_voxels")


def champion_metrics() -> tuple[str, ...]:
    """Every column of ``metrics_patients.csv`` that scores a prediction (the ground-truth and count
    columns left out), for each inversion: the valid values of ``study.champion_metric``."""
    base = [k for k in PATIENT_METRICS if k not in GT_METRICS and k not in _COUNTS]
    return tuple(k + s for s in INVERSION_SUFFIXES for k in base)


def check_metric(metric: str) -> None:
    """Raise :class:`ConfigError` unless ``metric`` is one of :func:`champion_metrics`."""
    if metric not in champion_metrics():
        raise ConfigError(f"study.champion_metric {metric!r} is not a score the evaluation writes; "
                          f"one of {list(champion_metrics())}")


@dataclass(frozen=True)
class Candidate:
    """One variant's mean of the champion metric over ``n`` test patients, with its bootstrap CI."""

    variant: str
    mean: float
    n: int
    ci_low: float = math.nan
    ci_high: float = math.nan


@dataclass(frozen=True)
class Champion:
    """The chosen variant; ``ranking`` holds every eligible variant, best first (the winner first)."""

    metric: str
    goal: str
    ranking: tuple[Candidate, ...]
    skipped: dict[str, str] = field(default_factory=dict)
    level: float = 0.95

    @property
    def best(self) -> Candidate:
        return self.ranking[0]

    @property
    def variant(self) -> str:
        return self.best.variant

    @property
    def value(self) -> float:
        return self.best.mean

    @property
    def runner_up(self) -> Candidate | None:
        return self.ranking[1] if len(self.ranking) > 1 else None

    @property
    def reason(self) -> str:
        b, r = self.best, self.runner_up
        ci = (f" ({self.level * 100:g} % CI {b.ci_low:.4g} to {b.ci_high:.4g})"
              if math.isfinite(b.ci_low) and math.isfinite(b.ci_high) else "")
        text = (f"{'lowest' if self.goal == 'min' else 'highest'} mean {self.metric} over {b.n} test "
                f"patient{'s' if b.n != 1 else ''}: {b.mean:.4g}{ci}")
        if r is None:
            text += ", the only variant with this metric"
        else:
            text += f" vs runner-up {r.variant} {r.mean:.4g}"
            if r.mean == b.mean:
                text += " (tie broken by name)"
        if self.skipped:
            text += f"; not eligible: {', '.join(sorted(self.skipped))}"
        return text

    def tags(self) -> dict[str, str]:
        """What the registry version and the study's parent run are tagged with: which variant and why."""
        return {"vce.variant": self.variant, "vce.champion_metric": self.metric, "vce.champion_goal": self.goal,
                "vce.champion_value": f"{self.value:.6g}", "vce.champion_reason": self.reason}

    def to_dict(self) -> dict[str, Any]:
        """``champion.json``: JSON-safe (undefined numbers are ``null``)."""
        def num(x: float) -> float | None:
            return float(x) if math.isfinite(x) else None

        return {"variant": self.variant, "metric": self.metric, "goal": self.goal, "value": num(self.value),
                "n": self.best.n, "ci_low": num(self.best.ci_low), "ci_high": num(self.best.ci_high),
                "ci_level": self.level, "reason": self.reason,
                "runner_up": self.runner_up.variant if self.runner_up else None,
                "ranking": [{"variant": c.variant, "mean": num(c.mean), "n": c.n, "ci_low": num(c.ci_low),
                             "ci_high": num(c.ci_high)} for c in self.ranking],
                "skipped": dict(sorted(self.skipped.items()))}


def no_champion(metric: str, goal: str, skipped: Mapping[str, str]) -> dict[str, Any]:
    """``champion.json`` when no variant is eligible (the registry is left as it is)."""
    return {"variant": None, "metric": metric, "goal": goal, "value": None, "ranking": [],
            "skipped": dict(sorted(skipped.items())),
            "reason": f"no evaluated variant has a finite {metric}; the registry's champion is unchanged"}


def choose_champion(
    values: Mapping[str, Sequence[float] | np.ndarray | None], metric: str, goal: str = "min",
    skipped: Mapping[str, str] | None = None, level: float = 0.95, n_resamples: int = 2000, seed: int = 0,
) -> Champion | None:
    """The best variant by the mean of its per-patient ``values`` (``None``: the metric is absent).

    ``goal``: ``"min"`` or ``"max"``. Variants in ``skipped`` (name -> why), without values or with
    no finite value are not eligible (each logged); NaN patients are left out of a mean. Ties go to
    the alphabetically first name. ``None`` when no variant is eligible. The CIs are the report's
    percentile bootstrap (``level``, ``n_resamples``, ``seed``).
    """
    from vce.reporting.stats import bootstrap_ci

    if goal not in CHAMPION_GOALS:
        raise ValueError(f"champion goal must be one of {CHAMPION_GOALS} (got {goal!r})")
    out_skipped = dict(skipped or {})
    candidates = []
    for name in sorted(values):
        if name in out_skipped:
            continue
        v = values[name]
        if v is None:
            out_skipped[name] = f"no {metric} column"
            continue
        a = np.asarray(v, dtype=float)
        a = a[np.isfinite(a)]
        if a.size == 0:
            out_skipped[name] = f"no finite {metric}"
            continue
        lo, hi = bootstrap_ci(a, level, n_resamples, seed)
        candidates.append(Candidate(name, float(a.mean()), int(a.size), lo, hi))
    for name, why in sorted(out_skipped.items()):
        logger.info("champion: %s is not eligible (%s)", name, why)
    if not candidates:
        logger.warning("champion: no variant has a finite %s; nothing to promote", metric)
        return None
    sign = 1.0 if goal == "min" else -1.0
    ranking = tuple(sorted(candidates, key=lambda c: (sign * c.mean, c.variant)))
    champ = Champion(metric, goal, ranking, out_skipped, level)
    logger.info("champion: %s, %s", champ.variant, champ.reason)
    return champ


def read_metric(eval_dirs: Mapping[str, str | Path], metric: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Each evaluation directory's per-patient ``metric`` (``metrics_patients.csv``); and the
    variants that lack it (name -> why), to pass to :func:`choose_champion` as ``skipped``."""
    values: dict[str, np.ndarray] = {}
    missing: dict[str, str] = {}
    for name, d in eval_dirs.items():
        path = Path(d) / "metrics_patients.csv"
        if not path.is_file():
            missing[name] = f"no {path.name}"
            continue
        try:
            df = pd.read_csv(path, dtype={"patient": str})
        except Exception as exc:  # noqa: BLE001 - unreadable: not eligible, the report names the file
            missing[name] = f"unreadable {path.name}: {exc}"
            continue
        if metric not in df.columns:
            missing[name] = f"no {metric} column in {path.name}"
            continue
        values[name] = pd.to_numeric(df[metric], errors="coerce").to_numpy(float)
    return values, missing
