"""The evaluation protocol's tables, beyond the paper's: regions, both inversions, texture against the
noise-free truth, tumour enhancement, the air check, paired comparisons, seed spread.

Every table has one row per *model row*: the ground truth (where a metric has a truth value), the
references (oracle = resampling ceiling; learnability = what a voxelwise regressor gets from
T1/T2), then the evaluated variants in study order, each with its ``kind`` (paper variant, seed
replicate, reference) so nothing that is not the paper's passes for it. Values are mean ± sd over
test patients with ``n``; paired comparisons carry a bootstrap CI. Column names of the per-patient
files are defined in ``docs/metrics.md``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from vce.config import EvaluateConfig, Variant
from vce.reporting.ablations import Roles
from vce.reporting.stats import add_mean_sd, frame, paired, paired_difference

GT_ROW = "Ground truth"
CLEAN_ROW = "Ground truth (noise-free)"
NOISE_ROW = "Noise share (truth - noise-free truth)"
ORACLE = "oracle"
LEARNABILITY = "learnability"
REFERENCE_LABELS = {ORACLE: "Oracle (truth through the resampling: ceiling)",
                    LEARNABILITY: "Learnability (voxel regressor on T1/T2)"}

REGION_ACCURACY = (("mae", "MAE"), ("mae_body", "MAE body"), ("mae_tumour", "MAE tumour"),
                   ("mse_body", "MSE body"), ("ssim", "SSIM"), ("ssim_body", "SSIM body"))
TEXTURE_BODY = (("tmsvpmi_body", "TMSVPMI body"), ("tavpmi_body", "TAVPMI body"), ("tfpmi_body", "TFPMI body"),
                ("vfpmi_body", "VFPMI body"), ("grad_dir", "Gradient direction"))
ENHANCEMENT = (("enh_ratio_wm", "Tumour / WM"), ("enh_ratio_ring", "Tumour / ring"),
               ("enh_ratio_relerr", "Ratio rel. error"), ("enh_excess_relerr", "Enhancement rel. error"),
               ("enh_dice", "Dice (enhancing)"), ("mae_tumour", "MAE tumour"))
AIR = (("air_level", "Air level"), ("air_grad", "Air gradient"))
COMPARED = ("mae", "mae_body", "mae_tumour", "ssim", "ssim_body", "mae_cal", "mae_body_cal", "ssim_body_cal",
            "enh_ratio_ring", "enh_dice")


@dataclass
class StudyData:
    """Per-patient metrics of every evaluated variant and reference, with the study's roles and settings."""

    patients: dict[str, pd.DataFrame]  # variant name or reference name -> one row per test patient
    variants: list[Variant]
    roles: Roles
    cfg: EvaluateConfig
    seed: int = 0
    auc: pd.DataFrame | None = None
    fov: pd.DataFrame | None = None
    replicates: dict[str, list[str]] = field(default_factory=dict)  # variant -> its seed replicates (incl. itself)

    @property
    def names(self) -> list[str]:
        """Evaluated variants, main first, then the baseline, then study order."""
        names = [v.name for v in self.variants if v.name in self.patients]
        first = [n for n in (self.roles.main, self.roles.baseline) if n in names]
        return first + [n for n in names if n not in first]

    @property
    def references(self) -> list[str]:
        return [r for r in (ORACLE, LEARNABILITY) if r in self.patients]

    def kind(self, name: str) -> str:
        if name in REFERENCE_LABELS:
            return "reference (not a model)" if name == ORACLE else "reference (not the paper's; no deep learning)"
        v = next(v for v in self.variants if v.name == name)
        if not v.paper:
            return "beyond the paper (not in the paper)"
        return "seed replicate (not in the paper)" if v.seed_offset else "paper variant"

    def label(self, name: str) -> str:
        return REFERENCE_LABELS.get(name, name)

    def stats_kw(self) -> dict[str, Any]:
        return {"level": self.cfg.ci_level, "n_resamples": self.cfg.bootstrap, "seed": self.seed}


def _cols(df: pd.DataFrame, key: str) -> pd.Series:
    return df[key] if key in df else pd.Series(np.nan, index=df.index)


def _model_rows(data: StudyData, metrics: Sequence[tuple[str, str]], suffix: str = "",
                truth: Mapping[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """Ground-truth rows (``truth``: row label -> column prefix), then references and variants."""
    rows: dict[str, dict[str, Any]] = {}
    main = data.patients[data.roles.main]
    for label, prefix in (truth or {}).items():
        row: dict[str, Any] = {"kind": "ground truth", "role": ""}
        for key, col in metrics:
            add_mean_sd(row, col, _cols(main, prefix + key) if prefix != "noise" else
                        _cols(main, "gt_" + key) - _cols(main, "gtclean_" + key))
        row["n"] = len(main)
        rows[label] = row
    for name in data.references + data.names:
        df = data.patients[name]
        row = {"kind": data.kind(name), "role": data.roles.of(name) if name in data.names else "reference"}
        for key, col in metrics:
            add_mean_sd(row, col, _cols(df, key + suffix))
        row["n"] = len(df)
        rows[data.label(name)] = row
    return rows


def accuracy_regions(data: StudyData, suffix: str = "") -> pd.DataFrame:
    """MAE / MSE / SSIM over the whole slice (the paper's), the body and the tumour, one inversion."""
    inv = "deployable calibration" if suffix else "paper inversion (ground-truth T1C statistics)"
    return frame(_model_rows(data, REGION_ACCURACY, suffix), "model",
                 title=f"Accuracy by region - {inv}",
                 description=("Scanner units on the T2 grid, each patient's scored slices (complete field of view). "
                              f"Inversion: {inv}. Oracle = the ceiling the resampling leaves; learnability = a "
                              "voxelwise regressor on T1/T2 (not a model of the paper). Mean ± sd over test patients."))


def texture_protocol(data: StudyData) -> pd.DataFrame:
    """Texture inside the body at the model grid, against the noisy and the noise-free truth, and gradient direction."""
    truth = {GT_ROW: "gt_", CLEAN_ROW: "gtclean_", NOISE_ROW: "noise"}
    return frame(_model_rows(data, TEXTURE_BODY, truth=truth), "model",
                 title="Texture inside the body (eq. 7-10 over body pixels) and gradient direction",
                 description=("Indices of eq. 7-10 restricted to the body (docs/metrics.md); the noise-free truth "
                              "is the same synthetic T1C without noise; the noise share is what i.i.d. noise adds "
                              "to the truth's index (no deterministic model can reproduce it). Gradient direction: "
                              "mean cos² between the prediction's and the noise-free truth's gradients where the "
                              "latter has an edge (1 = aligned, 0.5 = random). Paper inversion."))


def enhancement_table(data: StudyData) -> pd.DataFrame:
    """Tumour enhancement per model against the truth's own ratios."""
    rows = _model_rows(data, ENHANCEMENT)
    main = data.patients[data.roles.main]
    gt: dict[str, Any] = {"kind": "ground truth", "role": ""}
    for key, col in ENHANCEMENT:
        add_mean_sd(gt, col, _cols(main, "gt_" + key))
    gt["n"] = len(main)
    rows = {GT_ROW: gt, **rows}
    return frame(rows, "model", title="Tumour enhancement",
                 description=(f"Per patient over the scored slices: mean in the tumour / mean in normal white matter "
                              f"and / mean in a {data.cfg.ring_px}-pixel ring; relative errors against the truth's "
                              f"ratio (ratio, and the enhancement above 1: -1 = none synthesised); Dice of the "
                              f"enhancing region (intensity >= {data.cfg.enh_threshold:g} x the image's WM level, "
                              "within the tumour and its ring); MAE in the tumour (scanner units). Paper inversion."))


def air_table(data: StudyData) -> pd.DataFrame:
    """Hallucination check outside the body."""
    return frame(_model_rows(data, AIR, truth={GT_ROW: "gt_"}), "model", title="Air (outside the dilated body)",
                 description=("Mean level and mean gradient magnitude (scanner units) outside the body dilated by "
                              "2 pixels: a model that paints texture into the air has a larger gradient than the truth."))


def comparisons(data: StudyData) -> pd.DataFrame:
    """Main minus baseline per metric: paired difference, bootstrap CI, Wilcoxon p, TOST p (margin in params)."""
    main, base = data.roles.main, data.roles.baseline
    rows = {}
    for key in COMPARED:
        if key not in data.patients[main] or key not in data.patients[base]:
            continue
        a, b = paired(data.patients[main], data.patients[base], key)
        fin = b[np.isfinite(b)]
        margin = data.cfg.equivalence_margin * abs(float(fin.mean())) if fin.size else np.nan
        rows[key] = paired_difference(a, b, margin=margin, **data.stats_kw())
    return frame(rows, "metric", title=f"Paired comparison - {main} minus {base}",
                 description=(f"Per-patient difference, mean and {data.cfg.ci_level:.0%} bootstrap CI (patients "
                              "resampled), Wilcoxon signed-rank p, and the TOST equivalence p with margin "
                              f"±{data.cfg.equivalence_margin:g} x the baseline's mean (small p = equivalent)."))


def texture_closer(data: StudyData) -> pd.DataFrame:
    """Is main's texture closer to the truth than the baseline's? Per patient |T_model - T_truth|, paired."""
    main, base = data.roles.main, data.roles.baseline
    rows = {}
    for key, col in TEXTURE_BODY[:4]:
        for ref, prefix in (("noise-free truth", "gtclean_"), ("truth", "gt_")):
            dm = (data.patients[main][key] - data.patients[main][prefix + key]).abs()
            db = (data.patients[base][key] - data.patients[base][prefix + key]).abs()
            a, b = paired(data.patients[main].assign(d=dm), data.patients[base].assign(d=db), "d")
            row = {f"{main} |Δ|": float(np.nanmean(a)), f"{base} |Δ|": float(np.nanmean(b))}
            row.update(paired_difference(a, b, **data.stats_kw()))
            rows[f"{col} vs {ref}"] = row
    return frame(rows, "index", title="Texture: closer to the truth?",
                 description=(f"Per patient |T_model - T_truth| of each body texture index; diff = {main} minus "
                              f"{base} (negative = {main} closer), bootstrap CI and Wilcoxon p."))


def seed_spread(data: StudyData) -> pd.DataFrame:
    """Each seed replicate's mean over patients, and the sd over seeds of main's and the baseline's groups."""
    rows: dict[str, dict[str, Any]] = {}
    for name, group in data.replicates.items():
        means = {n: data.patients[n] for n in group if n in data.patients}
        for n, df in means.items():
            rows[n] = {"of": name, **{col: float(df[k].mean()) for k, col in REGION_ACCURACY + ENHANCEMENT[1:2]}}
        if len(means) >= 2:
            rows[f"sd over seeds ({name})"] = {"of": name, **{
                col: float(np.std([df[k].mean() for df in means.values()], ddof=1))
                for k, col in REGION_ACCURACY + ENHANCEMENT[1:2]}}
    return frame(rows, "run", title="Seed replicates",
                 description="Mean over test patients per training seed; the sd over seeds is the scale against "
                             "which the ablation differences are read (seed replicates are not in the paper).")


def seed_sd(data: StudyData, key: str) -> float:
    """The sd over seeds of main's mean ``key`` (NaN with fewer than two replicates)."""
    group = [n for n in data.replicates.get(data.roles.main, []) if n in data.patients]
    if len(group) < 2:
        return float("nan")
    return float(np.std([data.patients[n][key].mean() for n in group], ddof=1))


def ablation_effects(data: StudyData) -> pd.DataFrame:
    """Each ablation member minus main (MAE, paired), against main's seed-to-seed sd."""
    main = data.roles.main
    sd = seed_sd(data, "mae")
    rows = {}
    for ablation, group in data.roles.groups.items():
        for label, name in group.items():
            if name == main or name not in data.patients:
                continue
            a, b = paired(data.patients[name], data.patients[main], "mae")
            row = {"ablation": ablation, "variant": name, **paired_difference(a, b, **data.stats_kw())}
            row["seed_sd"] = sd
            row["diff_over_seed_sd"] = abs(row["diff"]) / sd if sd and np.isfinite(sd) and sd > 0 else np.nan
            rows[f"{ablation} {label}"] = row
    return frame(rows, "member", title="Ablations against the seed spread (MAE)",
                 description=(f"MAE of each ablation member minus {main} (paired, bootstrap CI); seed_sd = sd over "
                              "seeds of main's mean MAE; a difference within ~2 seed sd is not a finding at this scale."))


def learnability_auc(auc: pd.DataFrame) -> pd.DataFrame:
    """Tumour vs ring separability from each input, per cohort (mean ± sd over test patients)."""
    row: dict[str, Any] = {}
    for key, col in (("auc_t1", "AUC T1"), ("auc_t2", "AUC T2"), ("auc_t1c", "AUC T1C (after contrast)")):
        add_mean_sd(row, col, _cols(auc, key))
    row["n"] = len(auc)
    return frame({"test patients": row}, "cohort", title="Learnability - tumour vs ring separability",
                 description="Direction-free AUC (max(AUC, 1 - AUC)) of tumour vs ring voxels by one image's "
                             "intensity: 0.5 = the input carries no trace of the tumour, 1 = perfect.")


def fov_table(fov: pd.DataFrame) -> pd.DataFrame:
    """Slices per patient kept and left out for an incomplete field of view."""
    df = fov.set_index("patient")
    df.attrs.update(title="Field-of-view completeness",
                    description="Slices per patient kept by the split, and left out because a registered modality "
                                "did not cover the body (split.max_fov_missing); left out of training and scoring.")
    return df
