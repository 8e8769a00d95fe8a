"""The paper's claims, each marked reproduced / not reproduced / inconclusive at this study's scale.

A claim is *reproduced* only when the confidence interval of the paired per-patient difference
(bootstrap over test patients) lies on the claimed side of zero (or, for "similar accuracy",
the TOST test shows equivalence within the margin declared in ``params.yaml``) and, where seed
replicates exist, the difference is larger than twice the seed-to-seed sd; *not reproduced* when
the interval lies on the other side (or outside the margin); *inconclusive* otherwise.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from vce.reporting.protocol import StudyData, seed_sd
from vce.reporting.stats import paired, paired_difference

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive"


def _side(d: dict[str, float]) -> int:
    """+1 when the CI is above 0, -1 when below, 0 when it contains 0 (or is undefined)."""
    if not (math.isfinite(d["ci_low"]) and math.isfinite(d["ci_high"])):
        return 0
    return 1 if d["ci_low"] > 0 else -1 if d["ci_high"] < 0 else 0


def _fmt(d: dict[str, float], what: str) -> str:
    return f"{what} = {d['diff']:.4g} [{d['ci_low']:.4g}, {d['ci_high']:.4g}], Wilcoxon p = {d['p_wilcoxon']:.3g}, n = {int(d['n'])}"


def _diff(data: StudyData, a: str, b: str, key: str) -> dict[str, float]:
    x, y = paired(data.patients[a], data.patients[b], key)
    return paired_difference(x, y, **data.stats_kw())


def _ordered_claim(data: StudyData, claim: str, pairs: list[tuple[str, str]], key: str = "mae") -> dict[str, str]:
    """Claim "each first of ``pairs`` is worse (higher ``key``) than its second"."""
    if any(a not in data.patients or b not in data.patients for a, b in pairs) or not pairs:
        return {"claim": claim, "status": INCONCLUSIVE, "evidence": "the variants it needs were not evaluated"}
    diffs = [(_diff(data, a, b, key), a, b) for a, b in pairs]
    sides = [_side(d) for d, _, _ in diffs]
    sd = seed_sd(data, key)
    small = [abs(d["diff"]) < 2 * sd for d, _, _ in diffs] if math.isfinite(sd) else [False] * len(diffs)
    if any(s < 0 for s in sides):
        status = NOT_REPRODUCED
    elif all(s > 0 for s in sides) and not any(small):
        status = REPRODUCED
    else:
        status = INCONCLUSIVE
    ev = "; ".join(_fmt(d, f"{key.upper()} {a} - {b}") for d, a, b in diffs)
    if math.isfinite(sd):
        ev += f"; seed sd of {data.roles.main} = {sd:.4g}"
    return {"claim": claim, "status": status, "evidence": ev}


def similar_accuracy(data: StudyData, comparisons: dict[str, dict[str, float]]) -> dict[str, str]:
    """Paper: PGMGVCE and Li et al. have similar accuracy (MAE, whole slice, paper inversion): TOST."""
    claim = "Similar accuracy to Li et al. (MAE)"
    d = comparisons.get("mae")
    if d is None:
        return {"claim": claim, "status": INCONCLUSIVE, "evidence": "no baseline evaluated"}
    m = d["margin"]
    if math.isfinite(d["p_tost"]) and d["p_tost"] < 0.05:
        status = REPRODUCED
    elif math.isfinite(d["ci_low"]) and (d["ci_low"] > m or d["ci_high"] < -m):
        status = NOT_REPRODUCED
    else:
        status = INCONCLUSIVE
    return {"claim": claim, "status": status,
            "evidence": _fmt(d, "MAE PGMGVCE - Li") + f"; TOST margin ±{m:.4g}, p = {d['p_tost']:.3g}"}


def texture_closer(data: StudyData) -> dict[str, str]:
    """Paper: PGMGVCE's texture is closer to the truth than Li et al.'s (body indices vs the noise-free truth)."""
    claim = "Texture closer to the ground truth than Li et al."
    main, base = data.roles.main, data.roles.baseline
    if base is None:
        return {"claim": claim, "status": INCONCLUSIVE, "evidence": "no baseline evaluated"}
    diffs = []
    for key in ("tmsvpmi_body", "tavpmi_body", "tfpmi_body", "vfpmi_body"):
        dm = (data.patients[main][key] - data.patients[main]["gtclean_" + key]).abs()
        db = (data.patients[base][key] - data.patients[base]["gtclean_" + key]).abs()
        x, y = paired(data.patients[main].assign(d=dm), data.patients[base].assign(d=db), "d")
        diffs.append((key, paired_difference(x, y, **data.stats_kw())))
    sides = [_side(d) for _, d in diffs]
    status = REPRODUCED if all(s < 0 for s in sides) else NOT_REPRODUCED if any(s > 0 for s in sides) else INCONCLUSIVE
    if all(not np.isfinite(d["diff"]) for _, d in diffs):
        status = INCONCLUSIVE
    ev = "; ".join(_fmt(d, f"|Δ{k}| main - baseline") for k, d in diffs)
    return {"claim": claim, "status": status, "evidence": ev + " (vs the noise-free truth, inside the body)"}


def verdicts(data: StudyData, comparisons: dict[str, dict[str, float]]) -> list[dict[str, str]]:
    """Each paper claim with its status and the numbers behind it."""
    main = data.roles.main
    groups = data.roles.groups
    ratio = [(n, main) for label, n in groups.get("ratio", {}).items() if n != main]
    norm = groups.get("normalization", {})
    norm_pairs = [(norm[a], norm[b]) for a, b in (("tanh", "sigmoid"), ("zscore", "tanh")) if a in norm and b in norm]
    modality = [(n, main) for label, n in groups.get("modality", {}).items() if n != main]
    out = [similar_accuracy(data, comparisons), texture_closer(data) if data.roles.baseline else
           {"claim": "Texture closer to the ground truth than Li et al.", "status": INCONCLUSIVE, "evidence": "no baseline"}]
    out.append(_ordered_claim(data, "Loss ratio 1:1 is the best (lowest MAE)", ratio))
    out.append(_ordered_claim(data, "Sigmoid > tanh > z-score normalisation (MAE)", norm_pairs if len(norm_pairs) == 2 else []))
    out.append(_ordered_claim(data, "Both modalities beat either one alone (MAE)", modality))
    return out


def as_dicts(rows: list[dict[str, Any]]) -> list[dict[str, str]]:
    return [{k: str(v) for k, v in r.items()} for r in rows]
