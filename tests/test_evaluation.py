"""Evaluation: synthesisers, both inversions, the oracle ceiling, the reference rows (issue 9)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from vce.evaluation.run import evaluate_references, evaluate_synthesiser, load_case, load_test_set, logged_metrics
from vce.evaluation.synthesisers import GeneratorSynthesiser, Oracle
from vce.metrics.texture import texture_metrics
from vce.prep.slicing import body_mask


class ConstantGenerator(torch.nn.Module):
    """Outputs 0.5 everywhere: in sigmoid space that is z = 0, i.e. the inversion's T1C mean."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full((x.shape[0], 1, *x.shape[2:]), 0.5)


@pytest.fixture(scope="module")
def test_set(tiny_registered, tiny_split, tiny_normalized):
    return load_test_set(tiny_registered, tiny_split, tiny_normalized)


def test_both_inversions_use_their_own_t1c_statistics(test_set):
    variant = {"name": "const", "normalization": "sigmoid", "modalities": ["T1", "T2"]}
    case, truth, _ = load_case(test_set, test_set.patients[0])
    preds = GeneratorSynthesiser(ConstantGenerator(), variant)(case)
    mu_gt, mu_cal = case.t1c_stats["gt"][0], case.t1c_stats["cal"][0]
    assert mu_gt != pytest.approx(mu_cal)  # the calibration does not know the truth
    body = body_mask(case.volumes["T2"])  # inside the T2 body the constant, outside it air (0)
    assert body.any() and not body.all()
    assert np.all(preds["gt"][body] == np.rint(mu_gt)) and np.all(preds["cal"][body] == np.rint(mu_cal))
    assert np.all(preds["gt"][~body] == 0) and np.all(preds["cal"][~body] == 0)
    assert preds["gt"].shape == truth.t1c.shape  # on the T2 grid


def test_oracle_is_the_truth_when_the_model_grid_is_the_acquisition_grid(test_set):
    case, truth, _ = load_case(test_set, test_set.patients[0])
    assert case.geometry.square == case.geometry.size  # tiny: matrix 48 = image_size 48
    pred = Oracle()(case)["gt"]
    assert np.abs(pred - truth.t1c).max() <= 0.5 + 1e-4  # 12-bit rounding only
    z = int(test_set.geometry[case.pid]["z"][0])
    t_pred, t_gt = texture_metrics(pred[z]), texture_metrics(truth.t1c[z])
    for k in t_gt:
        assert t_pred[k] == pytest.approx(t_gt[k], rel=0.02)


def test_evaluation_scores_only_the_kept_slices(test_set, tiny_split, tmp_path, tiny_cfg):
    out = tmp_path / "oracle"
    patients = evaluate_synthesiser(Oracle(), test_set, out, tiny_cfg.evaluate)
    slices = pd.read_csv(out / "metrics_slices.csv", dtype={"patient": str})
    for pid in test_set.patients:
        assert slices.loc[slices.patient == pid, "slice"].tolist() == test_set.geometry[pid]["z"]
    manifest = pd.read_csv(tiny_split / "manifest.csv", dtype={"patient": str}).set_index("patient")
    assert (patients.set_index("patient")["n_slices"] == manifest.loc[test_set.patients, "n_slices"]).all()
    for f in ("pred", "pred_cal", "metrics_patients.csv", "summary.json", "variant.json", "cases.npz", "psd.csv",
              "montage.png"):
        assert (out / f).exists(), f
    assert {"mae", "mae_cal", "mae_body", "mae_tumour", "enh_ratio_ring", "gt_enh_ratio_ring", "gtclean_tmsvpmi"} <= set(patients)
    assert "gt_enh_ratio_ring_cal" not in patients and "n_tumour_voxels_cal" not in patients
    assert patients["mae"].max() < 1.0 and patients["enh_dice"].dropna().min() > 0.9
    logged = logged_metrics(json.loads((out / "summary.json").read_text())["mean_over_patients"])
    assert "mae_body" in logged and not any(k.startswith("gt") for k in logged)
    psd = pd.read_csv(out / "psd.csv")
    assert {"freq", "pred", "gt", "gt_clean"} <= set(psd) and (psd["gt"] > 0).all()
    cases = np.load(out / "cases.npz")
    pid = test_set.patients[0]
    assert cases[f"{pid}/pred"].shape == cases[f"{pid}/GT"].shape


def test_reference_rows(tiny_registered, tiny_split, tiny_normalized, tmp_path, tiny_cfg):
    out = evaluate_references(tiny_registered, tiny_split, tiny_normalized, tmp_path / "ref", tiny_cfg.evaluate,
                              seed=tiny_cfg.seed)
    assert {p.name for p in out.iterdir()} == {"oracle", "learnability", "learnability_auc.csv", "fov.csv", "split.json"}
    auc = pd.read_csv(out / "learnability_auc.csv")
    assert ((auc[["auc_t1", "auc_t2", "auc_t1c"]] >= 0.5) & (auc[["auc_t1", "auc_t2", "auc_t1c"]] <= 1)).all().all()
    assert (auc["auc_t1c"] > auc[["auc_t1", "auc_t2"]].max(axis=1)).all()  # contrast separates the tumour best
    learn = pd.read_csv(out / "learnability" / "metrics_patients.csv")
    oracle = pd.read_csv(out / "oracle" / "metrics_patients.csv")
    assert (learn["mae"] > oracle["mae"]).all()
    assert "n_slices_fov_excluded" in pd.read_csv(out / "fov.csv")


def test_checkpoint_of_another_image_size_is_refused(tiny_registered, tiny_split, tiny_normalized, tmp_path, tiny_cfg):
    from vce.evaluation import evaluate_variant
    from vce.io.errors import VCEInputError
    from vce.steps import train

    cfg = tiny_cfg
    run = train(tiny_normalized, tmp_path / "run", cfg, "pgmgvce_main")
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    ckpt["metadata"]["image_size"] = cfg.split.image_size * 2
    torch.save(ckpt, run / "checkpoint.pt")
    big = cfg.split.image_size * 2
    with pytest.raises(VCEInputError, match=rf"trained at {big}x{big} but the split"):
        evaluate_variant(run, tiny_registered, tiny_split, tiny_normalized, tmp_path / "eval", cfg.evaluate)
    assert not (tmp_path / "eval").exists()
