"""The development targets of a finished study (issue 10), from its own outputs.

    .venv/bin/python scripts/study_targets.py outputs/study_mid        # the mid study
    .venv/bin/python scripts/study_targets.py outputs/study --demo     # the demo's target

Reads the newest kfp run under ``<study>/kfp`` (every ``evaluate-op/evaluation`` directory and
``reference-op/reference``) and prints a markdown table: each target, the measured value with its
95 % bootstrap CI over test patients, and met / not met. Paper inversion (``gt``) unless noted.
Nothing here is a new metric: the values are the per-patient columns of ``metrics_patients.csv``
(docs/metrics.md), summarised with the report's own statistics (``vce.reporting.stats``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import pandas as pd

from vce.config import Variant
from vce.reporting.stats import bootstrap_ci, paired_difference

RATIO, DICE, MAE = "enh_ratio_ring", "enh_dice", "mae_body"


def load(study: Path) -> tuple[dict[str, pd.DataFrame], dict[str, Variant], pd.DataFrame | None]:
    runs = sorted((study / "kfp").glob("vce-study-*"), key=lambda p: p.stat().st_mtime)
    if not runs:
        sys.exit(f"{study}/kfp: no kfp run found")
    root = runs[-1]
    patients, variants = {}, {}
    for d in sorted(root.glob("for-loop-*/evaluate-op/evaluation")):
        v = Variant.from_json((d / "variant.json").read_text())
        patients[v.name], variants[v.name] = pd.read_csv(d / "metrics_patients.csv"), v
    ref = next(iter(root.glob("reference-op/reference/learnability/metrics_patients.csv")), None)
    return patients, variants, pd.read_csv(ref) if ref else None


def ci(x: pd.Series) -> str:
    lo, hi = bootstrap_ci(x.dropna().to_numpy(), 0.95, 2000, 0)
    return f"{x.mean():.3f} [{lo:.3f}, {hi:.3f}]"


def enhancement_row(name: str, df: pd.DataFrame, learn: pd.DataFrame | None) -> list[str]:
    gt = df[f"gt_{RATIO}"].mean()
    ratio, dice = df[RATIO].mean(), df[DICE].mean()
    direct = abs(ratio / gt - 1) <= 0.15 and dice >= 0.5
    text = f"{name}: tumour/ring {ci(df[RATIO])} vs truth {gt:.3f}; Dice {ci(df[DICE])}"
    if learn is not None:
        l_ratio, l_dice = learn[RATIO].mean(), learn[DICE].mean()
        vs_ref = (ratio - 1) >= 0.8 * (l_ratio - 1) and dice >= 0.8 * l_dice
        text += (f"; learnability reference tumour/ring {l_ratio:.3f}, Dice {l_dice:.3f} "
                 f"(excess {ratio - 1:.3f} = {100 * (ratio - 1) / (l_ratio - 1):.0f} % of its {l_ratio - 1:.3f})")
    else:
        vs_ref = False
    status = "met (within 15 % and Dice >= 0.5)" if direct else (
        "met against the learnability reference (>= 80 % of its excess and Dice)" if vs_ref else "not met")
    return ["best model: tumour/ring within 15 % of the truth and Dice >= 0.5, or >= 80 % of the learnability reference",
            text, status]


def equivalence_row(patients: dict[str, pd.DataFrame], variants: dict[str, Variant], baseline: str) -> list[str]:
    family = [n for n, v in variants.items() if v.model == "pgmgvce"]
    best = min(family, key=lambda n: patients[n][MAE].mean())
    a = patients[best].set_index("patient")[MAE]
    b = patients[baseline].set_index("patient")[MAE]
    common = a.index.intersection(b.index)
    margin = 0.1 * float(b.loc[common].mean())
    d = paired_difference(a.loc[common], b.loc[common], margin=margin)
    kind = "paper" if variants[best].paper else "beyond the paper"
    ok = d["ci_low"] > -margin and d["ci_high"] < margin and d.get("p_tost", 1.0) < 0.05
    text = (f"{best} ({kind}) {a.loc[common].mean():.1f} vs {baseline} {b.loc[common].mean():.1f}: "
            f"difference {d['diff']:.1f} [{d['ci_low']:.1f}, {d['ci_high']:.1f}], margin ±{margin:.1f}, "
            f"TOST p = {d.get('p_tost', math.nan):.3g}, n = {d['n']}")
    return ["best PGMGVCE-family body MAE within 10 % of the baseline's (equivalence)", text,
            "met" if ok else "not met"]


def tanh_row(patients: dict[str, pd.DataFrame], variants: dict[str, Variant], main: Variant) -> list[str]:
    def like(norm: str) -> str | None:
        return next((n for n, v in variants.items() if v.normalization == norm and v.paper == (norm != "tanh_f1")
                     and v.model == main.model and v.seed_offset == 0 and v.lambda_l1 == main.lambda_l1
                     and v.modalities == main.modalities), None)

    tanh, z = like("tanh"), like("zscore")
    if not (tanh and z):
        return ["tanh (eq. 13) no worse than z-score by more than 2x (body MAE)", "not run in this study", "n/a"]
    r = patients[tanh][MAE].mean() / patients[z][MAE].mean()
    text = f"{tanh} {ci(patients[tanh][MAE])} / {z} {ci(patients[z][MAE])} = {r:.2f}x"
    f1 = like("tanh_f1")
    if f1:
        text += f"; tanh factor 1 ({f1}, not the paper's) {patients[f1][MAE].mean():.1f}"
    return ["tanh (eq. 13) no worse than z-score by more than 2x (body MAE)", text, "met" if r <= 2 else "not met"]


def closest(patients: dict[str, pd.DataFrame]) -> str:
    """The variant whose tumour/ring ratio is closest to the truth's (mean |relative error|), among
    those with a finite ratio for every test patient (a broken model's NaNs never win)."""
    ok = [n for n, df in patients.items() if df[RATIO].notna().all()]
    return min(ok, key=lambda n: float((patients[n][RATIO] / patients[n][f"gt_{RATIO}"] - 1).abs().mean()))


def demo_row(patients: dict[str, pd.DataFrame]) -> list[str]:
    best = closest(patients)
    df = patients[best]
    gt = df[f"gt_{RATIO}"].mean()
    need = 1 + 0.5 * (gt - 1)
    return ["demo: best variant's tumour/ring at least halfway from 1 to the truth's",
            f"{best}: {ci(df[RATIO])} vs truth {gt:.3f} (halfway: {need:.3f})",
            "met" if df[RATIO].mean() >= need else "not met"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study", type=Path, help="a study's --out directory (holds kfp/ and report/)")
    ap.add_argument("--demo", action="store_true", help="the demo's target only")
    args = ap.parse_args(argv)
    patients, variants, learn = load(args.study)
    metrics = json.loads((args.study / "report" / "metrics.json").read_text())
    champion = json.loads((args.study / "report" / "champion.json").read_text()).get("variant")
    main_v = variants[metrics["main"]]
    rows = [demo_row(patients)] if args.demo else [
        enhancement_row(f"champion {champion}", patients[champion], learn),
        enhancement_row(f"closest to the truth's enhancement {closest(patients)}", patients[closest(patients)], learn),
        equivalence_row(patients, variants, metrics["baseline"]),
        tanh_row(patients, variants, main_v),
    ]
    print("| target | measured (mean [95 % CI] over test patients) | status |\n|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print(f"\nn = {len(next(iter(patients.values())))} test patients; {len(patients)} variants; "
          f"commit {metrics['provenance'].get('git_commit')}; split {metrics['provenance'].get('split_id')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
