"""The evaluation protocol's statistics, tables, verdicts and metrics.json (issue 9)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from vce.config import EvaluateConfig, Variant, load_config
from vce.reporting import protocol, verdicts
from vce.reporting.ablations import derive_roles
from vce.reporting.stats import bootstrap_ci, paired_difference, summarise, tost_paired
from vce.reporting.study import metrics_document, replicate_groups

PIDS = [f"P{i:03d}" for i in range(8)]


def test_bootstrap_ci_matches_a_hand_percentile_bootstrap():
    x = np.random.default_rng(0).normal(10, 2, size=12)
    lo, hi = bootstrap_ci(x, 0.95, 4000, seed=1)
    rng = np.random.default_rng(5)
    means = x[rng.integers(0, len(x), size=(20000, len(x)))].mean(axis=1)
    hlo, hhi = np.percentile(means, [2.5, 97.5])
    assert lo < x.mean() < hi
    assert lo == pytest.approx(hlo, abs=0.1 * (hhi - hlo)) and hi == pytest.approx(hhi, abs=0.1 * (hhi - hlo))
    assert bootstrap_ci(x, 0.95, 4000, seed=1) == (lo, hi)  # seeded
    assert all(math.isnan(v) for v in bootstrap_ci([1.0]))


def test_tost_against_two_t_tests_by_hand():
    rng = np.random.default_rng(2)
    a = rng.normal(100, 5, 10)
    b = a + rng.normal(0.5, 1.0, 10)
    d = a - b
    se = d.std(ddof=1) / math.sqrt(len(d))
    margin = 3.0
    p1 = 1 - sps.t.cdf((d.mean() + margin) / se, len(d) - 1)
    p2 = sps.t.cdf((d.mean() - margin) / se, len(d) - 1)
    assert tost_paired(a, b, margin) == pytest.approx(max(p1, p2), rel=1e-9)
    assert tost_paired(a, b, margin) < 0.05  # equivalent within ±3
    assert tost_paired(a, b + 10, margin) > 0.5  # 10 units apart: not equivalent
    assert math.isnan(tost_paired([1.0], [2.0], 1.0))


def test_paired_difference_signs_and_fields():
    a = np.arange(8, dtype=float)
    r = paired_difference(a + 5, a, margin=1.0, n_resamples=500)
    assert r["diff"] == pytest.approx(5.0) and r["ci_low"] == pytest.approx(5.0) and r["n"] == 8
    assert r["p_tost"] == 1.0 and r["p_wilcoxon"] < 0.01
    s = summarise([1.0, 2.0, np.nan, 3.0])
    assert s["n"] == 3 and s["mean"] == pytest.approx(2.0) and s["ci_low"] <= 2.0 <= s["ci_high"]


def _patients(rng: np.random.Generator, mae: float, enh: float = 1.0) -> pd.DataFrame:
    n = len(PIDS)
    df = pd.DataFrame({"patient": PIDS})
    for k in ("mae", "mae_body", "mae_tumour", "mae_cal", "mae_body_cal"):
        df[k] = mae + rng.normal(0, 1, n)
    for k in ("ssim", "ssim_body", "ssim_body_cal", "mse_body"):
        df[k] = 0.8 + rng.normal(0, 0.01, n)
    for k in ("tmsvpmi_body", "tavpmi_body", "tfpmi_body", "vfpmi_body"):
        df[k] = 0.1 + rng.normal(0, 0.001, n)
        df["gt_" + k] = 0.2
        df["gtclean_" + k] = 0.12
    df["enh_ratio_ring"] = enh
    df["gt_enh_ratio_ring"] = 1.8
    df["enh_dice"] = np.nan  # a metric undefined for every patient must not break anything
    df["n_slices"] = 5
    return df


@pytest.fixture
def data():
    cfg = load_config(profile="tiny")
    variants = list(cfg.variants)
    rng = np.random.default_rng(0)
    maes = {"pgmgvce_main": 100, "pgmgvce_main_seed1": 100.5, "ratio_10to1": 120, "ratio_1to10": 121,
            "norm_zscore": 90, "norm_tanh": 130, "t1_only": 140, "t2_only": 150, "baseline_mmgsn": 100.2,
            "baseline_mmgsn_seed1": 100.1, "norm_tanh_f1": 95, "pgmgvce_pg_gan_l1": 98}
    patients = {v.name: _patients(rng, maes[v.name]) for v in variants}
    patients["oracle"] = _patients(rng, 1.0, 1.8)
    names = [v.name for v in variants]
    roles = derive_roles(variants, main="pgmgvce_main", available=set(names))
    return protocol.StudyData(patients, variants, roles, EvaluateConfig(bootstrap=500), 0,
                              replicates=replicate_groups(variants, names))


def test_replicates_and_baseline_ignore_seed_copies(data):
    assert data.roles.baseline == "baseline_mmgsn"
    assert data.replicates == {"pgmgvce_main": ["pgmgvce_main", "pgmgvce_main_seed1"],
                               "baseline_mmgsn": ["baseline_mmgsn", "baseline_mmgsn_seed1"]}
    assert "pgmgvce_main_seed1" not in {n for g in data.roles.groups.values() for n in g.values()}
    assert data.kind("pgmgvce_main_seed1").startswith("seed replicate")
    assert data.kind("oracle").startswith("reference")
    # extras are beyond the paper: labelled so and never in the paper's ablation groups
    in_groups = {n for g in data.roles.groups.values() for n in g.values()}
    for extra in ("norm_tanh_f1", "pgmgvce_pg_gan_l1"):
        assert data.kind(extra) == "beyond the paper (not in the paper)" and extra not in in_groups
    assert protocol.accuracy_regions(data).loc["norm_tanh_f1", "kind"].startswith("beyond the paper")


def test_tables_label_every_row_and_carry_the_oracle(data):
    t = protocol.accuracy_regions(data)
    assert t.index[0].startswith("Oracle") and "MAE body mean" in t and (t["n"] == len(PIDS)).all()
    assert t.loc["pgmgvce_main_seed1", "kind"].startswith("seed replicate")
    tex = protocol.texture_protocol(data)
    assert tex.loc[protocol.NOISE_ROW, "TMSVPMI body mean"] == pytest.approx(0.08)
    closer = protocol.texture_closer(data)
    assert {"diff", "ci_low", "ci_high", "p_wilcoxon"} <= set(closer.columns)


def test_verdicts(data):
    comp = {k: dict(r) for k, r in protocol.comparisons(data).iterrows()}
    rows = {r["claim"]: r["status"] for r in verdicts.verdicts(data, comp)}
    assert rows["Similar accuracy to Li et al. (MAE)"] == verdicts.REPRODUCED  # 100 vs 100.2 within ±10 %
    assert rows["Loss ratio 1:1 is the best (lowest MAE)"] == verdicts.REPRODUCED
    assert rows["Both modalities beat either one alone (MAE)"] == verdicts.REPRODUCED
    # z-score (90) beats sigmoid (100) here: the ordering claim is contradicted
    assert rows["Sigmoid > tanh > z-score normalisation (MAE)"] == verdicts.NOT_REPRODUCED
    assert rows["Texture closer to the ground truth than Li et al."] == verdicts.INCONCLUSIVE


def test_verdict_inconclusive_within_seed_spread(data):
    data.patients["pgmgvce_main_seed1"]["mae"] += 40  # seeds disagree by 40: no 20-unit ablation effect is a finding
    rows = {r["claim"]: r["status"] for r in verdicts.verdicts(data, {})}
    assert rows["Loss ratio 1:1 is the best (lowest MAE)"] == verdicts.INCONCLUSIVE


def test_metrics_json_shape(data):
    doc = metrics_document(data, {}, [], {"split_id": "x"})
    entry = doc["variants"]["pgmgvce_main"]["mae_body"]
    assert set(entry) == {"mean", "sd", "n", "ci_low", "ci_high"} and entry["n"] == len(PIDS)
    assert doc["variants"]["pgmgvce_main"]["enh_dice"]["mean"] is None  # NaN -> null, valid JSON
    assert "gt_enh_ratio_ring" not in doc["variants"]["pgmgvce_main"]
    assert doc["reference"]["ground_truth"]["enh_ratio_ring"]["mean"] == pytest.approx(1.8)
    assert doc["reference"]["ground_truth_clean"]["tmsvpmi_body"]["mean"] == pytest.approx(0.12)
    assert doc["reference"]["oracle"]["mae"]["mean"] < 5
    json.loads(json.dumps(doc, allow_nan=False))


def test_seed_offset_trains_with_another_seed():
    v = Variant(name="x", seed_offset=1)
    assert v.seed_offset == 1 and Variant.from_json(v.to_json()) == v
