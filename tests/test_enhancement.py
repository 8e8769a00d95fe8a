"""vce.metrics.enhancement on hand-made phantoms whose answers are known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vce.metrics.enhancement import (
    ENHANCEMENT_KEYS,
    dice,
    dilate,
    enhancement_ratio,
    enhancing_region,
    patient_enhancement,
    ring,
)

Z, H, W = 3, 48, 48
LEVEL = 1000.0


def _disc(r, cy=24, cx=24):
    y, x = np.mgrid[:H, :W]
    return np.broadcast_to((y - cy) ** 2 + (x - cx) ** 2 < r**2, (Z, H, W)).copy()


@pytest.fixture
def phantom():
    """A head (disc r=20) of 1000, a tumour (disc r=5) of 1.8x, normal white matter away from it."""
    body, tumour = _disc(20), _disc(5, cx=26)
    wm = body & ~_disc(12, cx=26)
    gt = np.where(body, LEVEL, 0.0) + np.where(tumour, 0.8 * LEVEL, 0.0)
    return gt, body, tumour, wm


def test_ring_is_an_in_plane_diamond_within_the_body():
    t = np.zeros((3, 9, 9), dtype=bool)
    t[1, 4, 4] = True
    r1 = ring(t, 1)
    assert r1.sum() == 4 and not r1[0].any() and not r1[2].any()  # 4-neighbours, never across slices
    assert r1[1, 3, 4] and r1[1, 5, 4] and r1[1, 4, 3] and r1[1, 4, 5] and not r1[1, 4, 4]
    assert ring(t, 2).sum() == 12  # city-block distance 1 or 2: 4 + 8
    body = np.zeros_like(t)
    body[:, :, :5] = True  # columns 0-4 only
    assert ring(t, 2, body).sum() == 12 - 4  # the 4 ring pixels in columns 5-6 are outside the body
    np.testing.assert_array_equal(dilate(t, 0), t)
    with pytest.raises(ValueError, match="px"):
        ring(t, -1)


def test_dice_hand_values():
    a = np.array([1, 1, 0, 0], dtype=bool)
    b = np.array([1, 0, 1, 0], dtype=bool)
    assert dice(a, b) == pytest.approx(0.5)  # 2*1 / (2 + 2)
    assert dice(a, a) == 1.0 and dice(a, ~a) == 0.0
    assert math.isnan(dice(np.zeros(4, bool), np.zeros(4, bool)))
    assert dice(a, np.zeros(4, bool)) == 0.0


def test_enhancement_ratio_and_region(phantom):
    gt, body, tumour, wm = phantom
    assert enhancement_ratio(gt, tumour, wm) == pytest.approx(1.8)
    assert enhancement_ratio(gt, tumour, ring(tumour, 3, body)) == pytest.approx(1.8)
    assert math.isnan(enhancement_ratio(gt, np.zeros_like(tumour), wm))
    assert math.isnan(enhancement_ratio(gt, tumour, np.zeros_like(wm)))
    assert math.isnan(enhancement_ratio(gt, tumour, ~body))  # reference mean 0
    np.testing.assert_array_equal(enhancing_region(gt, body, LEVEL, 1.3), tumour)
    assert not enhancing_region(gt, body, math.nan, 1.3).any()


def test_perfect_prediction(phantom):
    gt, body, tumour, wm = phantom
    out = patient_enhancement(gt, gt, tumour, body, wm, ring_px=3, threshold=1.3)
    assert tuple(out) == ENHANCEMENT_KEYS
    assert out["enh_ratio_wm"] == pytest.approx(1.8) and out["enh_ratio_ring"] == pytest.approx(1.8)
    assert out["gt_enh_ratio_wm"] == pytest.approx(1.8) and out["gt_enh_ratio_ring"] == pytest.approx(1.8)
    assert out["enh_ratio_relerr"] == 0.0 and out["enh_excess_relerr"] == 0.0
    assert out["enh_dice"] == 1.0 and out["mae_tumour"] == 0.0
    assert out["n_tumour_voxels"] == int(tumour.sum())


def test_prediction_without_enhancement(phantom):
    gt, body, tumour, wm = phantom
    flat = np.where(body, LEVEL, 0.0)  # the tumour looks like normal tissue
    out = patient_enhancement(flat, gt, tumour, body, wm, ring_px=3, threshold=1.3)
    assert out["enh_ratio_ring"] == pytest.approx(1.0) and out["enh_ratio_wm"] == pytest.approx(1.0)
    assert out["gt_enh_ratio_ring"] == pytest.approx(1.8)
    assert out["enh_ratio_relerr"] == pytest.approx((1.0 - 1.8) / 1.8)
    assert out["enh_excess_relerr"] == pytest.approx(-1.0)
    assert out["enh_dice"] == 0.0  # nothing enhances in pred, the whole tumour in gt
    assert out["mae_tumour"] == pytest.approx(0.8 * LEVEL)


def test_half_the_enhancement_and_no_white_matter(phantom):
    gt, body, tumour, _ = phantom
    half = np.where(body, LEVEL, 0.0) + np.where(tumour, 0.4 * LEVEL, 0.0)
    out = patient_enhancement(half, gt, tumour, body, None, ring_px=2, threshold=1.3)
    assert math.isnan(out["enh_ratio_wm"]) and math.isnan(out["gt_enh_ratio_wm"])
    assert out["enh_ratio_ring"] == pytest.approx(1.4)
    assert out["enh_excess_relerr"] == pytest.approx(-0.5)
    assert out["enh_dice"] == 1.0  # 1.4x still clears 1.3x the ring level (the reference without wm)
    assert patient_enhancement(half, gt, tumour, body, None, 2, 1.5)["enh_dice"] == 0.0


def test_no_tumour_gives_nan_not_an_error(phantom):
    gt, body, _, wm = phantom
    out = patient_enhancement(gt, gt, np.zeros_like(body), body, wm, ring_px=3, threshold=1.3)
    assert out["n_tumour_voxels"] == 0
    for k in ENHANCEMENT_KEYS[:-1]:
        assert math.isnan(out[k]), k


def test_bad_input(phantom):
    gt, body, tumour, wm = phantom
    with pytest.raises(ValueError, match="shape"):
        patient_enhancement(gt[:2], gt, tumour, body, wm, 3, 1.3)
    with pytest.raises(ValueError, match="boolean"):
        patient_enhancement(gt, gt, tumour * 2, body, wm, 3, 1.3)
    with pytest.raises(ValueError, match="NaN"):
        enhancement_ratio(np.full(gt.shape, np.nan), tumour, wm)
