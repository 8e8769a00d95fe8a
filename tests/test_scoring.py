"""vce.metrics.scoring.score_patient: the column contract and the values of known cases."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest

from vce.metrics import GT_METRICS, PATIENT_METRICS, SLICE_METRICS, score_patient, slice_metrics
from vce.metrics.enhancement import ENHANCEMENT_KEYS
from vce.metrics.texture import TEXTURE_KEYS

Z, H, W = 4, 40, 40


def _patient(seed=0, tumour=True):
    """A head of ~1000 with a 1.8x tumour on slices 1-3, noise on the ground truth, and its clean version."""
    y, x = np.mgrid[:H, :W]
    body = np.broadcast_to((y - 20) ** 2 + (x - 20) ** 2 < 16**2, (Z, H, W)).copy()
    tum = np.broadcast_to((y - 20) ** 2 + (x - 23) ** 2 < 5**2, (Z, H, W)).copy()
    tum[0] = False
    if not tumour:
        tum[:] = False
    wm = body & ~np.broadcast_to((y - 20) ** 2 + (x - 23) ** 2 < 10**2, (Z, H, W))
    clean = np.where(body, 1000.0 + 80 * np.sin(x / 4.0), 0.0) + np.where(tum, 800.0, 0.0)
    noisy = np.clip(clean + np.random.default_rng(seed).normal(0, 15, clean.shape), 0, None)
    return noisy, clean, body, tum, wm


def test_contract_names():
    assert len(set(SLICE_METRICS)) == len(SLICE_METRICS)
    assert PATIENT_METRICS == (*SLICE_METRICS, *ENHANCEMENT_KEYS, "n_slices")
    assert set(GT_METRICS) == {k for k in PATIENT_METRICS if k.startswith(("gt_", "gtclean_"))}
    for k in TEXTURE_KEYS:
        assert {k, f"{k}_body", f"gt_{k}", f"gt_{k}_body", f"gtclean_{k}", f"gtclean_{k}_body"} <= set(SLICE_METRICS)
    assert {"gt_enh_ratio_wm", "gt_enh_ratio_ring", "gt_grad_dir", "gt_air_level"} <= set(GT_METRICS)
    assert not {"mae", "grad_dir", "enh_dice", "air_grad"} & set(GT_METRICS)


def test_perfect_prediction():
    gt, _, body, tum, wm = _patient()
    slices, row = score_patient(gt, gt, body=body, tumour=tum, wm=wm, gt_clean=gt)
    assert isinstance(slices, pd.DataFrame) and tuple(slices.columns) == SLICE_METRICS and len(slices) == Z
    assert tuple(row) == PATIENT_METRICS and row["n_slices"] == Z
    for k in ("mae", "mse", "mae_body", "mse_body"):
        assert (slices[k] == 0).all() and row[k] == 0
    assert row["mae_tumour_slice"] == 0 and row["mae_tumour"] == 0
    assert slices["ssim"].to_numpy() == pytest.approx(1.0) and row["ssim_body"] == pytest.approx(1.0)
    assert row["grad_dir"] == pytest.approx(1.0) and row["gt_grad_dir"] == pytest.approx(1.0)
    for k in (*TEXTURE_KEYS, *(f"{t}_body" for t in TEXTURE_KEYS)):
        np.testing.assert_array_equal(slices[k], slices[f"gt_{k}"])
        np.testing.assert_array_equal(slices[k], slices[f"gtclean_{k}"])
    assert row["enh_ratio_relerr"] == 0 and row["enh_excess_relerr"] == 0 and row["enh_dice"] == 1.0
    assert row["enh_ratio_ring"] == pytest.approx(row["gt_enh_ratio_ring"]) and row["enh_ratio_ring"] > 1.6
    assert row["air_level"] == row["gt_air_level"] > 0 and row["air_grad"] == row["gt_air_grad"] > 0  # noise in the air
    assert math.isnan(slices["mae_tumour_slice"][0]) and slices["mae_tumour_slice"][1:].notna().all()


def test_whole_slice_columns_are_the_papers_per_slice_metrics():
    gt, clean, body, tum, wm = _patient()
    pred = 0.95 * gt + 40 + np.random.default_rng(1).normal(0, 30, gt.shape)
    slices, row = score_patient(pred, gt, body=body, tumour=tum, wm=wm)
    for z in range(Z):
        ref = slice_metrics(pred[z], gt[z])
        for k, v in ref.items():
            assert slices[k][z] == pytest.approx(v, rel=1e-10, abs=1e-12), k
    for k in SLICE_METRICS:  # the patient row is the mean over slices
        assert row[k] == pytest.approx(slices[k].mean(), nan_ok=True), k
    # without a clean ground truth: the gtclean_ columns and the ceiling are NaN, grad_dir uses gt
    assert slices[[c for c in SLICE_METRICS if c.startswith("gtclean_")]].isna().all().all()
    assert math.isnan(row["gt_grad_dir"]) and 0.5 < row["grad_dir"] < 1
    # a noisy prediction scores worse than the truth's own agreement with its clean version
    _, with_clean = score_patient(pred, gt, body=body, tumour=tum, wm=wm, gt_clean=clean)
    assert with_clean["grad_dir"] < with_clean["gt_grad_dir"] <= 1


def test_patient_without_tumour():
    gt, clean, body, tum, wm = _patient(tumour=False)
    pred = gt + 20
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "mean of empty slice" spam
        slices, row = score_patient(pred, gt, body=body, tumour=tum, wm=wm, gt_clean=clean)
    assert slices["mae_tumour_slice"].isna().all()
    for k in ("mae_tumour_slice", *ENHANCEMENT_KEYS[:-1]):
        assert math.isnan(row[k]), k
    assert row["n_tumour_voxels"] == 0
    for k in ("mae", "mse", "ssim", "mae_body", "ssim_body", "tfpmi", "tfpmi_body", "grad_dir", "air_level"):
        assert np.isfinite(slices[k]).all() and math.isfinite(row[k]), k
    assert row["mae"] == pytest.approx(20.0)


def test_bad_input():
    gt, _, body, tum, wm = _patient()
    with pytest.raises(ValueError, match="shape"):
        score_patient(gt, gt[:, :30], body=body, tumour=tum)
    with pytest.raises(ValueError, match="body has shape"):
        score_patient(gt, gt, body=body[:2], tumour=tum)
    with pytest.raises(ValueError, match="tumour"):
        score_patient(gt, gt, body=body, tumour=None)
