"""Pixelwise gradient loss (paper eq. 1-2), LSGAN losses, the R1 and the WGAN-GP penalties."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vce.losses import (
    image_gradients,
    l1_loss,
    lsgan_d_loss,
    lsgan_g_loss,
    normalized_gradients,
    pixelwise_gradient_loss,
    r1_penalty,
    wgan_gp_penalty,
)

EPS = 1e-3


def _textured(seed: int = 0, b: int = 2, s: int = 32) -> torch.Tensor:
    """Smooth-ish textured images in [0, 1] whose gradients are far above eps."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, s), torch.linspace(0, 1, s), indexing="ij")
    phase = torch.rand(b, 1, 1, 1, generator=g) * 6.28
    base = 0.5 + 0.3 * torch.sin(9 * xx + 5 * yy + phase) + 0.2 * torch.cos(7 * yy - 3 * xx)
    return base + 0.05 * torch.rand(b, 1, s, s, generator=g)


def _numpy_pg(out: np.ndarray, gt: np.ndarray, eps: float) -> float:
    """Independent reference: explicit loops over pixels of eq. 1-2 (smooth norm, mean)."""
    total, count = 0.0, 0
    for b in range(out.shape[0]):
        for c in range(out.shape[1]):
            o, t = out[b, c].astype(np.float64), gt[b, c].astype(np.float64)
            h, w = o.shape
            for i in range(h - 1):
                for j in range(w - 1):
                    go = np.array([o[i + 1, j] - o[i, j], o[i, j + 1] - o[i, j]])
                    gt_ = np.array([t[i + 1, j] - t[i, j], t[i, j + 1] - t[i, j]])
                    no = go / np.sqrt(go @ go + eps**2)
                    nt = gt_ / np.sqrt(gt_ @ gt_ + eps**2)
                    total += float(no @ nt) ** 2
                    count += 1
    return -total / count


def test_gradients_are_forward_differences_cropped() -> None:
    x = torch.arange(12.0).reshape(1, 1, 3, 4)  # x(i, j) = 4 i + j
    gx, gy = image_gradients(x)
    assert gx.shape == gy.shape == (1, 1, 2, 3)
    assert torch.all(gx == 4.0) and torch.all(gy == 1.0)


def test_identical_textured_images_give_about_minus_one() -> None:
    z = _textured()
    loss = pixelwise_gradient_loss(z, z, EPS)
    assert -1.0 <= loss.item() < -0.99


def test_identical_is_minimal_among_perturbations() -> None:
    z = _textured(1)
    same = pixelwise_gradient_loss(z, z, EPS).item()
    g = torch.Generator().manual_seed(3)
    for scale in (0.01, 0.05, 0.2):
        noisy = z + scale * torch.randn(z.shape, generator=g)
        assert pixelwise_gradient_loss(noisy, z, EPS).item() > same
    assert pixelwise_gradient_loss(_textured(7), z, EPS).item() > same
    assert pixelwise_gradient_loss(torch.rand(z.shape, generator=g), z, EPS).item() > same + 0.2
    # a shifted copy has misaligned edges
    assert pixelwise_gradient_loss(torch.roll(z, 3, dims=-1), z, EPS).item() > same


def test_invariant_to_positive_scaling_and_sign() -> None:
    out, gt = _textured(2), _textured(5)
    ref = pixelwise_gradient_loss(out, gt, EPS).item()
    # only the eps regularisation depends on the scale (pixels with |g| ~ eps): small tolerance
    for c in (0.5, 3.0):
        assert pixelwise_gradient_loss(out, c * gt, EPS).item() == pytest.approx(ref, abs=5e-3)
        assert pixelwise_gradient_loss(c * out, gt, EPS).item() == pytest.approx(ref, abs=5e-3)
    # n -> -n (contrast inversion) leaves the squared dot product unchanged exactly
    assert pixelwise_gradient_loss(-out, gt, EPS).item() == pytest.approx(ref, abs=1e-6)
    assert pixelwise_gradient_loss(out, -gt, EPS).item() == pytest.approx(ref, abs=1e-6)
    # an intensity offset has no effect on gradients at all
    assert pixelwise_gradient_loss(out + 7.0, gt, EPS).item() == pytest.approx(ref, abs=1e-5)


def test_finite_gradients_on_constant_images() -> None:
    out = torch.full((2, 1, 16, 16), 0.3, requires_grad=True)
    gt = torch.full((2, 1, 16, 16), 0.7)
    loss = pixelwise_gradient_loss(out, gt, EPS)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() == 0.0
    assert out.grad is not None and torch.isfinite(out.grad).all()
    # also finite when only the output is flat and the target is textured
    out2 = torch.zeros(1, 1, 16, 16, requires_grad=True)
    pixelwise_gradient_loss(out2, _textured(b=1, s=16), EPS).backward()
    assert torch.isfinite(out2.grad).all()


def test_matches_independent_numpy_computation() -> None:
    rng = np.random.default_rng(11)
    out = rng.random((2, 1, 9, 11)).astype(np.float32)
    gt = rng.random((2, 1, 9, 11)).astype(np.float32)
    gt[0, 0, :3, :3] = 0.25  # a flat patch where the eps regularisation matters
    out[1, 0, 4:, 5:] = 0.5
    for eps in (1e-3, 0.1):
        got = pixelwise_gradient_loss(torch.from_numpy(out), torch.from_numpy(gt), eps).item()
        assert got == pytest.approx(_numpy_pg(out, gt, eps), rel=1e-5, abs=1e-6)


def test_pg_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        pixelwise_gradient_loss(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 9))
    with pytest.raises(ValueError):
        pixelwise_gradient_loss(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8), eps=0.0)


def test_lsgan_values() -> None:
    d_real = torch.tensor([1.0, 0.0, 2.0, 1.0])  # (d-1)^2 = 0, 1, 1, 0 -> mean 0.5
    d_fake = torch.tensor([0.0, 1.0, -1.0, 2.0])  # d^2 = 0, 1, 1, 4 -> mean 1.5
    assert lsgan_d_loss(d_real, d_fake).item() == pytest.approx(0.5 * 0.5 + 0.5 * 1.5)
    assert lsgan_g_loss(d_fake).item() == pytest.approx(0.5 * (1 + 0 + 4 + 1) / 4)
    assert lsgan_d_loss(torch.ones(3), torch.zeros(3)).item() == 0.0
    assert lsgan_g_loss(torch.ones(2, 1, 3, 3)).item() == 0.0
    assert l1_loss(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 4.0])).item() == pytest.approx(1.5)


def test_r1_zero_for_input_independent_discriminator() -> None:
    x = torch.randn(3, 2, 8, 8, requires_grad=True)
    bias = torch.nn.Parameter(torch.tensor(0.7))
    d_out = bias.expand(3, 1, 2, 2) + 0.0 * x[:, :1, :2, :2]  # depends on x only through a 0 weight
    assert r1_penalty(d_out, x).item() == 0.0
    assert r1_penalty(bias.expand(3, 1, 2, 2), x).item() == 0.0  # not connected to x at all


def test_r1_matches_analytic_linear_discriminator() -> None:
    # D(x) = sum(w * x) per sample -> grad = w, ||grad||^2 = sum(w^2) for every sample
    w = torch.randn(1, 1, 4, 4)
    x = torch.randn(5, 1, 4, 4, requires_grad=True)
    d_out = (w * x).sum(dim=(1, 2, 3))
    pen = r1_penalty(d_out, x)
    assert pen.item() == pytest.approx(float((w**2).sum()), rel=1e-5)
    # differentiable w.r.t. discriminator parameters (create_graph)
    wp = torch.nn.Parameter(w.clone())
    r1_penalty((wp * x).sum(dim=(1, 2, 3)), x).backward()
    assert torch.allclose(wp.grad, 2 * wp.detach(), atol=1e-5)


def test_r1_requires_grad_on_inputs() -> None:
    with pytest.raises(ValueError):
        r1_penalty(torch.zeros(2), torch.zeros(2, 1, 4, 4))


def test_sign_flip_flips_normalized_gradients_exactly() -> None:
    z = _textured(4)
    nx, ny = normalized_gradients(z, EPS)
    mx, my = normalized_gradients(-z, EPS)
    assert torch.equal(mx, -nx) and torch.equal(my, -ny)  # n -> -n, so (n_o . n_t)^2 is unchanged
    ref = pixelwise_gradient_loss(z, _textured(9), EPS)
    assert pixelwise_gradient_loss(-z, -_textured(9), EPS).item() == pytest.approx(ref.item(), abs=1e-7)


def test_identical_images_reach_the_bound_when_gradients_dominate_eps() -> None:
    # |n|^2 = g^2 / (g^2 + eps^2) -> 1, so the loss tends to its lower bound -1 for identical images;
    # a positive rescaling of one copy keeps it there (eps small against every gradient)
    z = _textured(5)
    for c in (0.5, 2.0, 10.0):
        assert pixelwise_gradient_loss(c * z, z, EPS).item() == pytest.approx(-1.0, abs=5e-3)
    # and no image pair goes below -1
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        a, b = torch.rand(2, 1, 12, 12, generator=g), torch.rand(2, 1, 12, 12, generator=g)
        assert pixelwise_gradient_loss(a, b, EPS).item() >= -1.0


def _linear_d(w: torch.Tensor):
    return lambda img: (w * img).sum(dim=(1, 2, 3))


def test_wgan_gp_matches_independent_computation() -> None:
    g = torch.Generator().manual_seed(2)
    real = torch.rand(4, 1, 6, 6, generator=g)
    fake = torch.rand(4, 1, 6, 6, generator=g)
    alpha = torch.rand(4, 1, 1, 1, generator=g)
    # linear D: the input gradient is w everywhere -> (||w|| - 1)^2 whatever the interpolate
    w = torch.rand(1, 1, 6, 6, generator=g)
    expected = (float(np.linalg.norm(w.numpy().ravel())) - 1.0) ** 2
    assert wgan_gp_penalty(_linear_d(w), real, fake, alpha).item() == pytest.approx(expected, rel=1e-5)
    # quadratic D(x) = sum x^2: gradient 2 x_hat with x_hat = alpha real + (1 - alpha) fake (numpy, float64)
    r, f, a = real.double().numpy(), fake.double().numpy(), alpha.double().numpy()
    x_hat = a * r + (1 - a) * f
    norms = np.sqrt(((2 * x_hat) ** 2).reshape(4, -1).sum(axis=1))
    want = float(np.mean((norms - 1.0) ** 2))
    got = wgan_gp_penalty(lambda img: (img**2).sum(dim=(1, 2, 3)), real, fake, alpha)
    assert got.item() == pytest.approx(want, rel=1e-5)
    # differentiable w.r.t. D's parameters: d/dw (||w|| - 1)^2 = 2 (||w|| - 1) w / ||w||
    wp = torch.nn.Parameter(w.clone())
    wgan_gp_penalty(_linear_d(wp), real, fake, alpha).backward()
    nw = w.norm()
    assert torch.allclose(wp.grad, 2 * (nw - 1) * w / nw, atol=1e-5)


def test_wgan_gp_draws_alpha_and_checks_shapes() -> None:
    real, fake = torch.rand(3, 1, 5, 5), torch.rand(3, 1, 5, 5)
    torch.manual_seed(0)
    v = wgan_gp_penalty(lambda img: (img**2).sum(dim=(1, 2, 3)), real, fake)
    assert torch.isfinite(v) and v.item() > 0
    with pytest.raises(ValueError):
        wgan_gp_penalty(lambda img: img.sum(), real, torch.rand(3, 1, 5, 4))
    # a D that ignores its input has zero gradient: penalty (0 - 1)^2 = 1
    const = torch.nn.Parameter(torch.tensor(1.0))
    assert wgan_gp_penalty(lambda img: const.expand(img.shape[0]), real, fake).item() == 1.0


def test_penalties_are_unchanged_by_grad_scale() -> None:
    # the fp16 recipe: gradient of (scale * D), divided by scale -> same penalty (exact for powers of 2)
    w = torch.randn(1, 1, 4, 4)
    x = torch.randn(5, 1, 4, 4, requires_grad=True)
    base = r1_penalty((w * x).sum(dim=(1, 2, 3)), x)
    scaled = r1_penalty((w * x).sum(dim=(1, 2, 3)), x, grad_scale=65536.0)
    assert scaled.item() == pytest.approx(base.item(), rel=1e-6)
    real, fake, alpha = torch.rand(2, 1, 4, 4), torch.rand(2, 1, 4, 4), torch.rand(2, 1, 1, 1)
    d = lambda img: (img**3).sum(dim=(1, 2, 3))  # noqa: E731
    assert wgan_gp_penalty(d, real, fake, alpha, grad_scale=1024.0).item() == pytest.approx(
        wgan_gp_penalty(d, real, fake, alpha).item(), rel=1e-6
    )
