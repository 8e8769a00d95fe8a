"""Metrics of eq. 4-10 against values worked out by hand or computed independently."""

from __future__ import annotations

import math

import numpy as np
import pytest
from skimage.filters import sobel_h, sobel_v

from vce.metrics import (
    METRIC_KEYS,
    global_ssim,
    mae,
    mse,
    slice_metrics,
    ssim,
    tavpmi,
    texture_metrics,
    tfpmi,
    tmsvpmi,
    vfpmi,
)


def _rng_image(shape=(32, 40), seed=0):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[: shape[0], : shape[1]]
    img = 1500 + 800 * np.sin(x / 5.0) * np.cos(y / 7.0) + rng.normal(0, 60, shape)
    return np.clip(img, 0, 4095)


# --------------------------------------------------------------------------- similarity


def test_mae_mse_hand_values():
    pred = np.array([[1.0, 2.0], [3.0, 4.0]])
    gt = np.array([[2.0, 2.0], [1.0, 8.0]])
    # |diff| = 1, 0, 2, 4 -> 7/4 ; diff^2 = 1, 0, 4, 16 -> 21/4
    assert mae(pred, gt) == pytest.approx(7 / 4)
    assert mse(pred, gt) == pytest.approx(21 / 4)
    assert mae(gt, gt) == 0.0 and mse(gt, gt) == 0.0


def test_ssim_identical_and_noisy():
    img = _rng_image()
    assert ssim(img, img) == pytest.approx(1.0)
    noisy = img + np.random.default_rng(1).normal(0, 200, img.shape)
    s = ssim(noisy, img)
    assert 0 < s < 1
    # more noise -> lower SSIM
    noisier = img + np.random.default_rng(2).normal(0, 600, img.shape)
    assert ssim(noisier, img) < s


def test_ssim_uses_data_range():
    img = _rng_image()
    noisy = img + np.random.default_rng(1).normal(0, 200, img.shape)
    # a larger L gives larger c1/c2, hence SSIM closer to 1
    assert ssim(noisy, img, data_range=65535.0) > ssim(noisy, img, data_range=4095.0)


def test_global_ssim_matches_eq6_by_hand():
    img = _rng_image(seed=3)
    other = 0.8 * img + 100 + np.random.default_rng(4).normal(0, 100, img.shape)
    L = 4095.0
    c1, c2 = (0.01 * L) ** 2, (0.03 * L) ** 2
    y, g = other.ravel(), img.ravel()
    n = y.size
    mu_y, mu_g = y.sum() / n, g.sum() / n
    var_y = ((y - mu_y) ** 2).sum() / n
    var_g = ((g - mu_g) ** 2).sum() / n
    cov = ((y - mu_y) * (g - mu_g)).sum() / n
    expected = (2 * mu_y * mu_g + c1) * (2 * cov + c2) / ((mu_y**2 + mu_g**2 + c1) * (var_y + var_g + c2))
    assert global_ssim(other, img) == pytest.approx(expected, rel=1e-12)
    assert global_ssim(img, img) == pytest.approx(1.0)
    assert global_ssim(other, img) < 1


def test_similarity_bad_input():
    a = np.ones((8, 8))
    with pytest.raises(ValueError, match="shape"):
        mae(a, np.ones((8, 9)))
    with pytest.raises(ValueError, match="2D"):
        mse(np.ones((2, 8, 8)), np.ones((2, 8, 8)))
    with pytest.raises(ValueError, match="7x7"):
        ssim(np.ones((5, 5)), np.ones((5, 5)))
    with pytest.raises(ValueError, match="NaN"):
        mae(np.full((8, 8), np.nan), a)


# --------------------------------------------------------------------------- texture


def test_constant_image_has_zero_texture():
    img = np.full((16, 16), 1234.0)
    t = texture_metrics(img)
    assert t == pytest.approx({"tmsvpmi": 0.0, "tavpmi": 0.0, "tfpmi": 0.0, "vfpmi": 0.0}, abs=1e-12)
    # exactly zero without the division by ``scale`` (no rounding)
    assert texture_metrics(img, scale=1.0) == {"tmsvpmi": 0.0, "tavpmi": 0.0, "tfpmi": 0.0, "vfpmi": 0.0}


def test_step_edge_by_hand():
    # 4x4, columns 0-1 = 1, columns 2-3 = 3: a vertical edge of height 2; mu = 2.
    img = np.array([[1.0, 1.0, 3.0, 3.0]] * 4)
    # forward differences on the 3x3 region: dx = 0 everywhere, dy = 2 in column 1 only
    # -> 3 of 9 pixels have |grad| = 2 -> mean 2/3 -> / mu = 1/3 (for both eq. 7 and 8)
    assert tmsvpmi(img, scale=1) == pytest.approx(1 / 3)
    assert tavpmi(img, scale=1) == pytest.approx(1 / 3)
    # Sobel (nearest border): Gy = 0; Gx = 4 * (I[j+1] - I[j-1]) = 8 in columns 1 and 2
    # -> 8 of 16 pixels have magnitude 8 -> mean 4 -> / mu = 2
    assert tfpmi(img, scale=1) == pytest.approx(2.0)
    # deviations from mu are +-1 -> variance 1 -> / mu = 1/2; on img/s: (1/s^2)/(2/s) = 1/(2s)
    assert vfpmi(img, scale=1) == pytest.approx(0.5)
    assert vfpmi(img, scale=10) == pytest.approx(0.05)
    # the same edge transposed (horizontal) gives the same values
    t, tt = texture_metrics(img, scale=1), texture_metrics(img.T, scale=1)
    assert t == pytest.approx(tt)


def test_2x2_worked_example():
    img = np.array([[1.0, 2.0], [3.0, 5.0]])
    mu = 11 / 4
    # one pixel in the (H-1)x(W-1) region: dx = 3 - 1 = 2 (down), dy = 2 - 1 = 1 (right)
    assert tmsvpmi(img, scale=1) == pytest.approx(math.sqrt(5) / mu)
    assert tavpmi(img, scale=1) == pytest.approx(3 / mu)
    # nearest-padded image [[1,1,2,2],[1,1,2,2],[3,3,5,5],[3,3,5,5]] ->
    # (Gx, Gy) = (5,-9), (5,-11), (7,-9), (7,-11) at (0,0), (0,1), (1,0), (1,1)
    mags = [math.sqrt(106), math.sqrt(146), math.sqrt(130), math.sqrt(170)]
    assert tfpmi(img, scale=1) == pytest.approx(sum(mags) / 4 / mu)
    # deviations -1.75, -0.75, 0.25, 2.25 -> variance 8.75/4
    assert vfpmi(img, scale=1) == pytest.approx((8.75 / 4) / mu)


def test_first_three_invariant_to_intensity_scaling():
    img = _rng_image(seed=5)
    a = texture_metrics(img)
    b = texture_metrics(img * 3.7)
    c = texture_metrics(img, scale=1.0)
    for k in ("tmsvpmi", "tavpmi", "tfpmi"):
        assert a[k] == pytest.approx(b[k], rel=1e-12)
        assert a[k] == pytest.approx(c[k], rel=1e-12)
    # eq. 10 is not scale-invariant: it scales linearly with the intensity unit
    assert b["vfpmi"] == pytest.approx(3.7 * a["vfpmi"], rel=1e-12)
    assert c["vfpmi"] == pytest.approx(4095.0 * a["vfpmi"], rel=1e-12)


def _tenengrad_loops(img):
    """Explicit-loop Sobel with replicated borders, kernels as printed in the paper."""
    kx = [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]
    ky = [[1, 2, 1], [0, 0, 0], [-1, -2, -1]]
    h, w = img.shape
    total = 0.0
    for i in range(h):
        for j in range(w):
            gx = gy = 0.0
            for u in range(3):
                for v in range(3):
                    ii = min(max(i + u - 1, 0), h - 1)
                    jj = min(max(j + v - 1, 0), w - 1)
                    gx += kx[u][v] * img[ii, jj]
                    gy += ky[u][v] * img[ii, jj]
            total += math.sqrt(gx * gx + gy * gy)
    return total / (h * w) / img.mean()


def test_tfpmi_matches_independent_computations():
    img = _rng_image(shape=(12, 15), seed=6)
    assert tfpmi(img, scale=1) == pytest.approx(_tenengrad_loops(img), rel=1e-10)
    # skimage's Sobel kernels are the same up to a factor 1/4 (and sign); compare the interior
    # (skimage treats the border differently)
    gh, gv = sobel_h(img), sobel_v(img)
    mag_sk = 4 * np.sqrt(gh**2 + gv**2)[1:-1, 1:-1]
    from vce.metrics.texture import sobel_xy

    gx, gy = sobel_xy(img)
    np.testing.assert_allclose(np.sqrt(gx**2 + gy**2)[1:-1, 1:-1], mag_sk, rtol=1e-10, atol=1e-8)


def test_texture_bad_input():
    with pytest.raises(ValueError, match="2D"):
        texture_metrics(np.ones((4, 4, 4)))
    with pytest.raises(ValueError, match="2D"):
        tmsvpmi(np.ones(10))
    with pytest.raises(ValueError, match="mean intensity"):
        texture_metrics(np.zeros((8, 8)))
    with pytest.raises(ValueError, match="mean intensity"):
        vfpmi(-np.ones((8, 8)))
    with pytest.raises(ValueError, match="2x2"):
        tfpmi(np.ones((1, 8)))
    with pytest.raises(ValueError, match="scale"):
        texture_metrics(np.ones((4, 4)), scale=0)


# --------------------------------------------------------------------------- slice_metrics


def test_slice_metrics_keys_and_values():
    gt = _rng_image(seed=7)
    pred = gt + np.random.default_rng(8).normal(0, 50, gt.shape)
    m = slice_metrics(pred, gt)
    assert tuple(m) == METRIC_KEYS
    assert set(m) == {
        "mae", "mse", "ssim", "tmsvpmi", "tavpmi", "tfpmi", "vfpmi",
        "gt_tmsvpmi", "gt_tavpmi", "gt_tfpmi", "gt_vfpmi",
    }  # fmt: skip
    assert all(isinstance(v, float) for v in m.values())
    assert m["mae"] == pytest.approx(mae(pred, gt))
    assert m["ssim"] == pytest.approx(ssim(pred, gt))
    assert m["tfpmi"] == pytest.approx(tfpmi(pred))
    assert m["gt_vfpmi"] == pytest.approx(vfpmi(gt))
    # added noise roughens the texture
    assert m["tmsvpmi"] > m["gt_tmsvpmi"]
