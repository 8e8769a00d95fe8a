"""vce.metrics.batched against the per-slice definitions (whole slice) and independent loops (masks)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage
from skimage.metrics import structural_similarity

from vce.metrics import batched
from vce.metrics.similarity import mae as mae_2d
from vce.metrics.similarity import mse as mse_2d
from vce.metrics.similarity import ssim as ssim_2d
from vce.metrics.texture import TEXTURE_KEYS, sobel_xy as sobel_2d, texture_metrics

L = 4095.0


def _random(shape=(5, 23, 31), seed=0):
    """Noise in scanner units (the hardest case for rounding: no two pixels alike)."""
    return np.random.default_rng(seed).uniform(0, L, shape)


def _structured(shape=(4, 40, 36), seed=1):
    """A bright disc on a smooth head-like background with noise, and a dark border (air)."""
    n, h, w = shape
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:h, :w]
    head = ((y - h / 2) / (0.42 * h)) ** 2 + ((x - w / 2) / (0.4 * w)) ** 2 < 1
    disc = (y - h / 2) ** 2 + (x - w / 2 - 3) ** 2 < (h / 8) ** 2
    out = np.empty(shape)
    for k in range(n):
        out[k] = head * (900 + 200 * np.sin(x / (3 + k)) * np.cos(y / 5)) + 700 * disc * (k % 2 == 0)
    return np.clip(out + rng.normal(0, 25, shape), 0, L)


def _body(img):
    return ndimage.binary_fill_holes(img > 300, structure=np.ones((1, 3, 3)))


@pytest.fixture(params=["random", "structured"])
def pair(request):
    if request.param == "random":
        gt = _random()
        return np.clip(gt + np.random.default_rng(5).normal(0, 300, gt.shape), 0, L), gt
    gt = _structured()
    return gt * 0.9 + 60 + np.random.default_rng(6).normal(0, 40, gt.shape), gt


# --------------------------------------------------------------------------- whole slices


def test_whole_slice_similarity_equals_per_slice(pair):
    pred, gt = pair
    n = pred.shape[0]
    np.testing.assert_allclose(batched.mae(pred, gt), [mae_2d(pred[i], gt[i]) for i in range(n)], rtol=1e-12)
    np.testing.assert_allclose(batched.mse(pred, gt), [mse_2d(pred[i], gt[i]) for i in range(n)], rtol=1e-12)
    expected = [ssim_2d(pred[i], gt[i], data_range=L) for i in range(n)]
    np.testing.assert_allclose(batched.ssim(pred, gt, L), expected, rtol=0, atol=1e-10)
    for i in range(n):  # the map itself is skimage's, cropped by 3 pixels
        full = structural_similarity(pred[i], gt[i], data_range=L, K1=0.01, K2=0.03, win_size=7, full=True)[1]
        np.testing.assert_allclose(batched.ssim_map(pred, gt, L)[i], full[3:-3, 3:-3], rtol=0, atol=1e-10)


def test_whole_slice_texture_equals_per_slice(pair):
    pred, gt = pair
    for img in pair:
        got = batched.texture(img, L)
        for i in range(img.shape[0]):
            ref = texture_metrics(img[i], scale=L)
            for k in TEXTURE_KEYS:
                assert got[k][i] == pytest.approx(ref[k], rel=1e-10, abs=1e-12)


def test_sobel_equals_per_slice():
    img = _structured()
    gx, gy = batched.sobel_xy(img)
    for i in range(img.shape[0]):
        rx, ry = sobel_2d(img[i])
        np.testing.assert_allclose(gx[i], rx, rtol=0, atol=1e-9)
        np.testing.assert_allclose(gy[i], ry, rtol=0, atol=1e-9)


def test_uniform_filter_on_the_stack_is_skimages_per_slice_filter():
    """The border claim: size (1, 7, 7) on the stack = size 7 per slice (reflect), so cropping
    after it (skimage) and summing valid windows only (batched) give the same interior."""
    img = _random((3, 20, 17), seed=2)
    stack = ndimage.uniform_filter(img, size=(1, 7, 7))
    for i in range(3):
        np.testing.assert_array_equal(stack[i], ndimage.uniform_filter(img[i], size=7))
    ws = batched._Workspace(3, 20, 17)
    sums = batched._box_sum(img.reshape(-1), 7, 17, ws("out", img.size - 6 * 18), ws)
    box = batched._grid(np.concatenate([sums, np.zeros(6 * 18)]), img.shape, 14, 11) / 49
    np.testing.assert_allclose(box, stack[:, 3:-3, 3:-3], rtol=1e-12)


def test_window_sums_of_any_width():
    x = np.random.default_rng(8).normal(size=50)
    ws = batched._Workspace(1, 50, 1)
    for w in range(1, 10):
        for step in (1, 3):
            n_out = x.size - (w - 1) * step
            got = batched._shifted_sum(x, w, step, np.empty(n_out), ws)
            np.testing.assert_allclose(got, [x[i : i + w * step : step].sum() for i in range(n_out)], rtol=1e-12)


def test_dtypes_and_memory_layouts_give_the_same_values():
    gt = _structured((3, 20, 24))
    pred = np.rint(gt * 0.9 + 50)
    ref = batched.ssim(pred, gt, L)
    np.testing.assert_allclose(batched.ssim(pred.astype(np.float32), gt.astype(np.float32), L), ref, rtol=1e-6)
    np.testing.assert_array_equal(batched.ssim(pred.astype(np.int16), gt, L), ref)
    t = np.ascontiguousarray(gt.transpose(0, 2, 1)).transpose(0, 2, 1)  # same values, column-major slices
    assert not t.flags.c_contiguous
    for k, v in batched.texture(t, L).items():
        np.testing.assert_array_equal(v, batched.texture(gt, L)[k])


def test_results_do_not_depend_on_the_block_size(monkeypatch, pair):
    pred, gt = pair
    body = _body(gt)

    def everything():
        tex = batched.texture(pred, L, body)
        return [batched.mae(pred, gt), batched.mse(pred, gt, body), batched.ssim(pred, gt, L), batched.ssim(pred, gt, L, body),
                *batched.texture(pred, L).values(), *tex.values()]  # fmt: skip

    monkeypatch.setattr(batched, "BLOCK_PIXELS", 1)  # one slice per block
    one = everything()
    monkeypatch.setattr(batched, "BLOCK_PIXELS", 10**9)  # the whole stack in one block
    whole = everything()
    for a, b in zip(one, whole):
        np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------- masks: independent loops


def _loop_texture(img, mask, scale=L):
    """Masked texture of one slice, written out pixel by pixel."""
    a = img / scale
    h, w = a.shape
    mu = a[mask].mean()
    grad, absv, ten = [], [], []
    for i in range(h - 1):
        for j in range(w - 1):
            if mask[i, j] and mask[i + 1, j] and mask[i, j + 1]:
                dx, dy = a[i + 1, j] - a[i, j], a[i, j + 1] - a[i, j]
                grad.append(math.hypot(dx, dy))
                absv.append(abs(dx) + abs(dy))
    gx, gy = sobel_2d(a)
    for i in range(1, h - 1):
        for j in range(1, w - 1):
            if mask[i - 1 : i + 2, j - 1 : j + 2].all():
                ten.append(math.hypot(gx[i, j], gy[i, j]))
    var = ((a[mask] - mu) ** 2).mean()
    return {"tmsvpmi": np.mean(grad) / mu, "tavpmi": np.mean(absv) / mu, "tfpmi": np.mean(ten) / mu, "vfpmi": var / mu}


def test_masked_similarity_against_loops():
    gt = _structured()
    pred = gt + np.random.default_rng(3).normal(0, 80, gt.shape)
    body = _body(gt)
    smap_full = [structural_similarity(pred[i], gt[i], data_range=L, win_size=7, full=True)[1] for i in range(len(gt))]
    for i in range(len(gt)):
        m = body[i]
        assert batched.mae(pred, gt, body)[i] == pytest.approx(np.abs(pred[i] - gt[i])[m].mean(), rel=1e-12)
        assert batched.mse(pred, gt, body)[i] == pytest.approx(((pred[i] - gt[i]) ** 2)[m].mean(), rel=1e-12)
        inner = smap_full[i][3:-3, 3:-3][m[3:-3, 3:-3]]
        assert batched.ssim(pred, gt, L, body)[i] == pytest.approx(inner.mean(), abs=1e-10)


def test_masked_texture_against_loops():
    img = _structured((3, 24, 22))
    body = _body(img)
    got = batched.texture(img, L, body)
    for i in range(img.shape[0]):
        ref = _loop_texture(img[i], body[i])
        for k in TEXTURE_KEYS:
            assert got[k][i] == pytest.approx(ref[k], rel=1e-10), k
    # the whole-slice mask is not the unmasked definition: border pixels lack a full 3x3 neighbourhood
    every = np.ones_like(body)
    assert batched.texture(img, L, every)["vfpmi"] == pytest.approx(batched.texture(img, L)["vfpmi"], rel=1e-12)


def test_level_and_gradient_in_the_air_against_loops():
    img = _structured((3, 20, 20))
    air = ~ndimage.binary_dilation(_body(img), structure=np.ones((1, 3, 3)), iterations=2)
    level = batched.mean_in(img, air)
    grad = batched.gradient_magnitude(img, air)
    for k in range(3):
        vals = [math.hypot(img[k, i + 1, j] - img[k, i, j], img[k, i, j + 1] - img[k, i, j])
                for i in range(19) for j in range(19) if air[k, i, j] and air[k, i + 1, j] and air[k, i, j + 1]]  # fmt: skip
        assert grad[k] == pytest.approx(np.mean(vals), rel=1e-12)
        assert level[k] == pytest.approx(img[k][air[k]].mean(), rel=1e-12)
    assert batched.mean_in(img, None) == pytest.approx(img.mean(axis=(1, 2)))


def _loop_direction(pred, ref, mask, q):
    px, py = sobel_2d(pred)
    rx, ry = sobel_2d(ref)
    rmag = np.hypot(rx, ry)
    thr = np.quantile(rmag[mask], q)
    cos2 = []
    for i, j in zip(*np.nonzero(mask & (rmag >= thr) & (rmag > 0))):
        if px[i, j] == 0 and py[i, j] == 0:
            cos2.append(0.0)
        else:
            cos2.append(math.cos(math.atan2(py[i, j], px[i, j]) - math.atan2(ry[i, j], rx[i, j])) ** 2)
    return np.mean(cos2) if cos2 else math.nan


def test_direction_agreement_against_loops():
    ref = _structured((3, 30, 30))
    body = _body(ref)
    pred = ndimage.gaussian_filter(ref, (0, 1, 1)) + np.random.default_rng(4).normal(0, 30, ref.shape)
    for q in (0.0, 0.5, 0.9):
        got = batched.direction_agreement(pred, ref, body, q)
        for k in range(3):
            assert got[k] == pytest.approx(_loop_direction(pred[k], ref[k], body[k], q), rel=1e-10)
    assert batched.direction_agreement(ref, ref, body) == pytest.approx(1.0)
    assert batched.direction_agreement(-ref, ref, body) == pytest.approx(1.0)  # sign-free
    # the transposed image turns the edges: a disc's gradients stay radial, a ramp's turn by 90 degrees
    ramp = np.broadcast_to(np.arange(30.0) * 10, (1, 30, 30)).copy()
    every = np.ones_like(ramp, dtype=bool)
    assert batched.direction_agreement(ramp.transpose(0, 2, 1), ramp, every) == pytest.approx(0.0, abs=1e-12)
    flat = np.full_like(ramp, 500.0)
    assert batched.direction_agreement(flat, ramp, every) == 0.0  # no gradient in pred counts as 0
    assert np.isnan(batched.direction_agreement(ramp, flat, every)[0])  # no edge in the reference


def test_masked_quantile_is_numpys():
    rng = np.random.default_rng(7)
    values = rng.normal(size=(4, 9, 11))
    mask = rng.random((4, 9, 11)) < 0.4
    mask[2] = False
    mask[3] = False
    mask[3, 4, 4] = True
    for q in (0.0, 0.33, 0.9, 1.0):
        got = batched.masked_quantile(values, mask, q)
        for k in (0, 1, 3):
            assert got[k] == pytest.approx(np.quantile(values[k][mask[k]], q), rel=1e-12)
        assert np.isnan(got[2])


def _loop_psd(img, mask=None):
    h, w = img.shape
    c = img - (img.mean() if mask is None else img[mask].mean())
    if mask is not None:
        c = np.where(mask, c, 0.0)
    power = np.abs(np.fft.fft2(c)) ** 2 / (h * w)
    side = min(h, w)
    sums, counts = np.zeros(side // 2 + 1), np.zeros(side // 2 + 1)
    for i in range(h):
        for j in range(w):
            k = int(round(math.hypot(np.fft.fftfreq(h)[i], np.fft.fftfreq(w)[j]) * side))
            if k <= side // 2:
                sums[k] += power[i, j]
                counts[k] += 1
    return sums / counts


def test_radial_psd_against_loops_and_parseval():
    img = _structured((2, 16, 20))
    body = _body(img)
    freq, psd = batched.radial_psd(img)
    np.testing.assert_allclose(freq, np.arange(9) / 16)
    _, psd_body = batched.radial_psd(img, body)
    for k in range(2):
        np.testing.assert_allclose(psd[k], _loop_psd(img[k]), rtol=1e-10)
        np.testing.assert_allclose(psd_body[k], _loop_psd(img[k], body[k]), rtol=1e-10)
    # Parseval: the mean of |FFT|^2 / (H W) over all frequencies is the variance
    full = np.abs(np.fft.fft2(img[0] - img[0].mean())) ** 2 / img[0].size
    assert full.mean() == pytest.approx(img[0].var(), rel=1e-12)
    # a pure cosine of 0.25 cycles/pixel puts its power in that bin
    wave = np.broadcast_to(1000 + 100 * np.cos(2 * np.pi * 0.25 * np.arange(32)), (1, 32, 32))
    f, p = batched.radial_psd(wave)
    assert f[np.argmax(p[0])] == pytest.approx(0.25)


# --------------------------------------------------------------------------- empty regions, bad input


def test_empty_regions_give_nan():
    gt = _structured((3, 20, 20))
    pred = gt + 10
    mask = _body(gt)
    mask[1] = False
    checks = {
        "mae": batched.mae(pred, gt, mask),
        "mse": batched.mse(pred, gt, mask),
        "ssim": batched.ssim(pred, gt, L, mask),
        "mean_in": batched.mean_in(pred, mask),
        "gradient_magnitude": batched.gradient_magnitude(pred, mask),
        "direction_agreement": batched.direction_agreement(pred, gt, mask),
        "psd": batched.radial_psd(pred, mask)[1][:, 3],
        **batched.texture(pred, L, mask),
    }
    for name, v in checks.items():
        assert v.shape == (3,) and v.dtype == np.float64, name
        assert np.isnan(v[1]) and np.isfinite(v[[0, 2]]).all(), name
    # an all-zero slice has mu = 0: its texture is NaN (the per-slice function raises)
    zero = np.zeros((2, 8, 8))
    zero[1] = 5.0
    assert np.isnan(batched.texture(zero)["tfpmi"][0]) and batched.texture(zero)["tfpmi"][1] == 0.0


def test_bad_input_raises_clear_errors():
    a = np.ones((2, 8, 8))
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        batched.mae(np.ones((8, 8)), np.ones((8, 8)))
    with pytest.raises(ValueError, match="differ in shape"):
        batched.mse(a, np.ones((2, 8, 9)))
    with pytest.raises(ValueError, match="7x7"):
        batched.ssim(np.ones((2, 6, 8)), np.ones((2, 6, 8)), L)
    with pytest.raises(ValueError, match="data_range"):
        batched.ssim(a, a, 0.0)
    with pytest.raises(ValueError, match="NaN"):
        batched.texture(np.full((1, 4, 4), np.nan))
    with pytest.raises(ValueError, match="mask has shape"):
        batched.mae(a, a, np.ones((2, 8, 7), dtype=bool))
    with pytest.raises(ValueError, match="boolean"):
        batched.mean_in(a, np.full((2, 8, 8), 2))
    with pytest.raises(ValueError, match="scale"):
        batched.texture(a, scale=-1)
    with pytest.raises(ValueError, match="quantile"):
        batched.direction_agreement(a, a, a.astype(bool), quantile=1.5)
    with pytest.raises(ValueError, match="needs a mask"):
        batched.direction_agreement(a, a, None)
    with pytest.raises(ValueError, match="2x2"):
        batched.texture(np.ones((2, 1, 8)))
    # 0/1 integer masks are accepted
    assert batched.mean_in(a * 3, np.ones((2, 8, 8), dtype=np.uint8)).tolist() == [3.0, 3.0]
