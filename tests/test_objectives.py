"""The two weighted objectives of training (vce.losses.generator_objective / discriminator_objective).

Every expected value is computed here from the formulas themselves (float64, no call into
vce.losses), so the test checks the objectives against the paper's definitions, not against
the functions they are built from.
"""

from __future__ import annotations

from functools import partial

import pytest
import torch

from vce.losses import LossWeights, discriminator_objective, generator_objective, r1_penalty, wgan_gp_penalty

EPS = 1e-3


# --------------------------------------------------------------------------- independent formulas


def _pg(out: torch.Tensor, gt: torch.Tensor, eps: float) -> torch.Tensor:
    """Eq. 1-2 (smooth norm, mean over the cropped pixels and the batch), written out again."""

    def n(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gx = x[..., 1:, :-1] - x[..., :-1, :-1]
        gy = x[..., :-1, 1:] - x[..., :-1, :-1]
        norm = torch.sqrt(gx**2 + gy**2 + eps**2)
        return gx / norm, gy / norm

    (ox, oy), (tx, ty) = n(out), n(gt)
    return -((ox * tx + oy * ty) ** 2).mean()


def _lsgan_g(d_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * ((d_fake - 1.0) ** 2).mean()


def _lsgan_d(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * ((d_real - 1.0) ** 2).mean() + 0.5 * (d_fake**2).mean()


def _l1(out: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    return (out - gt).abs().mean()


# --------------------------------------------------------------------------- fixtures


class _Spy:
    """A callable that counts its calls (and may refuse to be called)."""

    def __init__(self, fn=None) -> None:
        self.fn, self.calls = fn, 0

    def __call__(self) -> torch.Tensor:
        self.calls += 1
        if self.fn is None:
            raise AssertionError("must not be called")
        return self.fn()


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(2, 2, 12, 12, generator=g)  # conditioning T1/T2
    fake = torch.rand(2, 1, 12, 12, generator=g).requires_grad_(True)
    target = torch.rand(2, 1, 12, 12, generator=g)
    D = torch.nn.Conv2d(3, 1, 3)
    with torch.no_grad():
        D.weight.copy_(torch.randn(D.weight.shape, generator=g))
        D.bias.fill_(0.1)
    return x, fake, target, D


def _expected_g(fake: torch.Tensor, target: torch.Tensor, x: torch.Tensor, D: torch.nn.Module, w: LossWeights):
    """The weighted sum of the non-zero terms, in float64, on a fresh leaf copy of ``fake``."""
    f64 = fake.detach().double().requires_grad_(True)
    t64 = target.double()
    terms = []
    if w.gan > 0:
        D64 = torch.nn.Conv2d(3, 1, 3).double()
        D64.load_state_dict({k: v.double() for k, v in D.state_dict().items()})
        terms.append(w.gan * _lsgan_g(D64(torch.cat([x.double(), f64], dim=1))))
    if w.pg > 0:
        terms.append(w.pg * _pg(f64, t64, EPS))
    if w.l1 > 0:
        terms.append(w.l1 * _l1(f64, t64))
    total = sum(terms[1:], terms[0])
    (grad,) = torch.autograd.grad(total, f64)
    return total.detach(), grad


# --------------------------------------------------------------------------- generator objective


def test_generator_objective_is_the_weighted_sum_of_the_three_terms() -> None:
    x, fake, target, D = _batch(1)
    weights = LossWeights(pg=2.0, gan=0.5, l1=3.0)
    d_of_fake = _Spy(lambda: D(torch.cat([x, fake], dim=1)))
    seen = torch.full((2, 1, 10, 10), 123.0)  # would give a very different GAN term if it were used
    out = generator_objective(fake, target, d_of_fake, seen, weights, EPS)

    assert d_of_fake.calls == 1
    assert set(out) == {"loss_g", "loss_pg", "loss_gan", "loss_l1"}
    assert all(v.dtype == torch.float32 and v.dim() == 0 for v in out.values())
    d64 = torch.nn.functional.conv2d(torch.cat([x, fake.detach()], 1).double(), D.weight.double(), D.bias.double())
    gan, pg, l1 = _lsgan_g(d64), _pg(fake.detach().double(), target.double(), EPS), _l1(fake.detach().double(), target.double())
    assert out["loss_gan"].item() == pytest.approx(gan.item(), rel=1e-5)
    assert out["loss_pg"].item() == pytest.approx(pg.item(), rel=1e-5)
    assert out["loss_l1"].item() == pytest.approx(l1.item(), rel=1e-5)
    assert out["loss_g"].item() == pytest.approx((0.5 * gan + 2.0 * pg + 3.0 * l1).item(), rel=1e-5)
    assert out["loss_g"].requires_grad
    want, want_grad = _expected_g(fake, target, x, D, weights)
    assert out["loss_g"].item() == pytest.approx(want.item(), rel=1e-5)
    (grad,) = torch.autograd.grad(out["loss_g"], fake)
    torch.testing.assert_close(grad.double(), want_grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "pg,gan,l1",
    [(0.0, 1.0, 2.0), (1.0, 0.0, 2.0), (1.5, 2.0, 0.0), (0.0, 0.0, 3.0), (0.0, 1.0, 0.0), (2.0, 0.0, 0.0)],
)
def test_zero_weight_terms_get_no_gradient(pg: float, gan: float, l1: float) -> None:
    x, fake, target, D = _batch(2)
    weights = LossWeights(pg=pg, gan=gan, l1=l1)
    # with lambda_gan == 0 the spy raises when called
    d_of_fake = _Spy((lambda: D(torch.cat([x, fake], dim=1))) if gan > 0 else None)
    # the D step's scores of the detached fake, still attached to D's parameters
    seen = D(torch.cat([x, fake.detach()], dim=1))
    out = generator_objective(fake, target, d_of_fake, seen, weights, EPS)

    assert d_of_fake.calls == (1 if gan > 0 else 0)
    want, want_grad = _expected_g(fake, target, x, D, weights)
    assert out["loss_g"].item() == pytest.approx(want.item(), rel=1e-5)
    (grad,) = torch.autograd.grad(out["loss_g"], fake, retain_graph=True)
    torch.testing.assert_close(grad.double(), want_grad, rtol=1e-4, atol=1e-6)
    # a zero-weight term is still reported, with its value, but computed without a graph
    f64, t64 = fake.detach().double(), target.double()
    assert out["loss_pg"].item() == pytest.approx(_pg(f64, t64, EPS).item(), rel=1e-5)
    assert out["loss_l1"].item() == pytest.approx(_l1(f64, t64).item(), rel=1e-5)
    for key, w in (("loss_pg", pg), ("loss_gan", gan), ("loss_l1", l1)):
        if w == 0:
            assert not out[key].requires_grad and out[key].grad_fn is None, key
    if gan == 0:
        # the GAN term is reported from the D step's scores, and loss_g does not reach D at all
        assert out["loss_gan"].item() == pytest.approx(_lsgan_g(seen.detach().double()).item(), rel=1e-5)
        assert torch.autograd.grad(out["loss_g"], [D.weight, D.bias], allow_unused=True) == (None, None)


def test_all_generator_weights_zero_is_an_error() -> None:
    x, fake, target, D = _batch(3)
    spy = _Spy()
    with pytest.raises(ValueError, match="weights are 0"):
        generator_objective(fake, target, spy, torch.zeros(2, 1, 10, 10), LossWeights(0.0, 0.0, 0.0), EPS)
    assert spy.calls == 0


# --------------------------------------------------------------------------- discriminator objective


def _scores(seed: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(3, 1, 4, 4, generator=g), torch.randn(3, 1, 4, 4, generator=g)


def test_discriminator_objective_without_penalty_never_calls_it() -> None:
    d_real, d_fake = _scores()
    spy = _Spy()
    out = discriminator_objective(d_real, d_fake, spy, 0.0)
    assert spy.calls == 0
    assert set(out) == {"loss_d", "gp"} and out["gp"].item() == 0.0
    assert out["loss_d"].item() == pytest.approx(_lsgan_d(d_real.double(), d_fake.double()).item(), rel=1e-6)
    # low-precision scores: the objective is evaluated in float32
    low = discriminator_objective(d_real.bfloat16(), d_fake.bfloat16(), spy, 0.0)
    assert low["loss_d"].dtype == torch.float32 and spy.calls == 0


@pytest.mark.parametrize("gp_weight", [0.01, 0.25, 10.0])
def test_discriminator_objective_adds_the_weighted_penalty(gp_weight: float) -> None:
    d_real, d_fake = _scores(5)
    spy = _Spy(lambda: torch.tensor(0.8))
    out = discriminator_objective(d_real, d_fake, spy, gp_weight)
    assert spy.calls == 1
    assert out["gp"].item() == pytest.approx(0.8)
    want = _lsgan_d(d_real.double(), d_fake.double()).item() + gp_weight * 0.8
    assert out["loss_d"].item() == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("kind", ["r1", "wgan_gp"])
def test_discriminator_objective_with_a_real_penalty_matches_the_analytic_gradient(kind: str) -> None:
    """Linear D(img) = sum(w * img): R1 = ||w||^2 and WGAN-GP = (||w|| - 1)^2 whatever the input."""
    g = torch.Generator().manual_seed(6)
    real = torch.rand(3, 1, 5, 5, generator=g).requires_grad_(kind == "r1")
    fake = torch.rand(3, 1, 5, 5, generator=g)
    w = torch.nn.Parameter(torch.rand(1, 1, 5, 5, generator=g))
    D = lambda img: (w * img).sum(dim=(1, 2, 3))  # noqa: E731
    d_real, d_fake = D(real), D(fake)
    if kind == "r1":
        penalty = partial(r1_penalty, d_real, real)
    else:
        penalty = partial(wgan_gp_penalty, D, real, fake, torch.rand(3, 1, 1, 1, generator=g))
    gp_weight = 0.5
    out = discriminator_objective(d_real, d_fake, penalty, gp_weight)

    # independent: the same loss with the penalty written in closed form, in float64
    w64 = w.detach().double().requires_grad_(True)
    r64, f64 = real.detach().double(), fake.double()
    closed = (w64**2).sum() if kind == "r1" else (w64.norm() - 1.0) ** 2
    want = _lsgan_d((w64 * r64).sum(dim=(1, 2, 3)), (w64 * f64).sum(dim=(1, 2, 3))) + gp_weight * closed
    assert out["gp"].item() == pytest.approx(closed.item(), rel=1e-5)
    assert out["loss_d"].item() == pytest.approx(want.item(), rel=1e-5)
    # the penalty is back-propagated into D's parameters
    (grad,) = torch.autograd.grad(out["loss_d"], w)
    (want_grad,) = torch.autograd.grad(want, w64)
    torch.testing.assert_close(grad.double(), want_grad, rtol=1e-4, atol=1e-6)
