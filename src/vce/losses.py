"""Loss functions of the study: pixelwise gradient (paper eq. 1-2), LSGAN (eq. 3), R1 and WGAN-GP,
and the two weighted objectives the trainer minimises (:func:`generator_objective`,
:func:`discriminator_objective`).

All functions take and return ``torch`` tensors and are differentiable. The trainer casts
network outputs to float32 before calling them (the losses are never evaluated in fp16/bf16).

Choice of ``eps`` (``TrainConfig.pg_eps``, default ``1e-3``): it is the gradient magnitude, in
normalised intensity units per pixel, below which an edge counts as "flat". Normalised images span
about 1 unit (sigmoid: (0, 1), tanh: (-1, 1), z-score: a few units), so real anatomical edges
have ``||g|| >> 1e-3`` and are normalised to unit length, while the flat background (exactly 0
after zero padding) and float32 round-off noise (~1e-7) give ``n ~ 0`` instead of a random unit
vector. ``eps`` must stay well above float32 resolution of the differences and well below the
smallest edge contrast one cares about.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = [
    "image_gradients",
    "normalized_gradients",
    "pixelwise_gradient_loss",
    "lsgan_d_loss",
    "lsgan_g_loss",
    "r1_penalty",
    "wgan_gp_penalty",
    "l1_loss",
    "NORMALIZATION_SLOPES",
    "pg_eps_for",
    "effective_pg_eps",
    "LossWeights",
    "generator_objective",
    "discriminator_objective",
]


def image_gradients(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward differences of eq. 1 on ``(B, C, H, W)`` images.

    ``gx(i, j) = x(i+1, j) - x(i, j)`` (along rows, dim -2) and ``gy(i, j) = x(i, j+1) - x(i, j)``
    (along columns, dim -1). Both are **cropped** to the common ``(H-1) x (W-1)`` region where
    both differences exist (no padding, so the border never contributes artificial edges).
    """
    if x.dim() != 4:
        raise ValueError(f"expected a (B, C, H, W) tensor, got shape {tuple(x.shape)}")
    if x.shape[-2] < 2 or x.shape[-1] < 2:
        raise ValueError(f"images must be at least 2x2, got {tuple(x.shape[-2:])}")
    base = x[..., :-1, :-1]
    gx = x[..., 1:, :-1] - base
    gy = x[..., :-1, 1:] - base
    return gx, gy


def normalized_gradients(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised gradient field ``n = g / ||g||_eps`` with the smooth norm ``sqrt(gx^2 + gy^2 + eps^2)``.

    The paper writes ``g / (||g|| + eps)``; ``||g||`` is not differentiable at ``g = 0`` (flat
    regions, e.g. the background). The smooth norm ``sqrt(||g||^2 + eps^2)`` has the same
    behaviour (``|n| -> 1`` where ``||g|| >> eps``, ``n -> 0`` where ``||g|| << eps``) but finite
    derivatives everywhere, including on constant images.
    """
    if eps <= 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    gx, gy = image_gradients(x)
    norm = torch.sqrt(gx * gx + gy * gy + eps * eps)
    return gx / norm, gy / norm


def pixelwise_gradient_loss(output: torch.Tensor, target: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """Pixelwise gradient loss, paper eq. 2: ``-mean_pixels (n_output . n_target)^2``.

    ``output`` and ``target`` are ``(B, C, H, W)`` (C = 1 for T1C). ``eps`` is in normalised
    intensity units (``TrainConfig.pg_eps``). The squared dot product rewards gradients that
    point in the same *or opposite* direction (a contrast inversion keeps the shape), so the loss
    is invariant to the sign of either image and -- up to the ``eps`` regularisation -- to positive
    rescaling of either. The paper sums over pixels; here the **mean** over the (cropped,
    ``(H-1) x (W-1)``) pixels and the batch is used so the value does not depend on image or batch
    size: it lies in ``[-1, 0]`` and is close to -1 when the shapes agree on textured images.
    """
    if output.shape != target.shape:
        raise ValueError(f"output {tuple(output.shape)} and target {tuple(target.shape)} shapes differ")
    ox, oy = normalized_gradients(output, eps)
    tx, ty = normalized_gradients(target, eps)
    dot = ox * tx + oy * ty
    return -(dot * dot).mean()


#: d normalised / d z at the patient mean (z = 0) of each normalisation of ``vce.prep.normalization``
#: (eq. 11-13 and tanh factor 1): how many normalised units one patient sd is
#: (``tests/test_normalization.py`` checks each against a central difference of ``forward``).
NORMALIZATION_SLOPES = {"zscore": 1.0, "sigmoid": 0.25, "tanh": 0.5 * 0.01, "tanh_f1": 0.5}


def pg_eps_for(method: str, pg_eps: float, scale: str = "slope") -> float:
    """eq. 2's eps in the normalised units of ``method``: ``pg_eps`` (patient-sd units) times the
    normalisation's slope (:data:`NORMALIZATION_SLOPES`) with ``scale="slope"``; ``pg_eps`` itself
    with ``scale="none"``.

    Why: eps marks the gradient below which an edge counts as flat. A fixed eps in normalised
    units is 4x larger relative to the tissue contrast under z-score than under sigmoid, and 50x
    larger under eq. 13's tanh (factor 0.01 squeezes the body into ~0.49-0.51), where 1e-3
    exceeds most of the target's real gradients and eq. 2 stops being a normalised-gradient loss.
    """
    if scale == "none":
        return float(pg_eps)
    if scale != "slope":
        raise ValueError(f"unknown pg_eps_scale {scale!r}; expected 'slope' or 'none'")
    if method not in NORMALIZATION_SLOPES:
        raise ValueError(f"unknown normalisation {method!r}; expected one of {tuple(NORMALIZATION_SLOPES)}")
    return float(pg_eps) * NORMALIZATION_SLOPES[method]


def effective_pg_eps(variant, train) -> float:
    """eq. 2's eps for ``variant`` (a :class:`vce.config.Variant`) under ``train`` (its
    :class:`vce.config.TrainConfig`): :func:`pg_eps_for` of its normalisation."""
    return pg_eps_for(variant.normalization, train.pg_eps, train.pg_eps_scale)


def lsgan_d_loss(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """Least-squares GAN discriminator loss (Mao et al. 2017, a=0, b=1).

    ``0.5 * mean((D(real) - 1)^2) + 0.5 * mean(D(fake)^2)``; the means run over batch and patch
    positions of the PatchGAN output.
    """
    return 0.5 * ((d_real - 1.0) ** 2).mean() + 0.5 * (d_fake**2).mean()


def lsgan_g_loss(d_fake: torch.Tensor) -> torch.Tensor:
    """Least-squares GAN generator loss (c=1): ``0.5 * mean((D(G(x)) - 1)^2)``."""
    return 0.5 * ((d_fake - 1.0) ** 2).mean()


def r1_penalty(d_real_out: torch.Tensor, real_inputs: torch.Tensor, grad_scale: float = 1.0) -> torch.Tensor:
    """R1 gradient penalty on real data (Mescheder et al. 2018): ``E_batch ||grad_x D(x)||^2``.

    ``real_inputs`` must be the tensor (with ``requires_grad=True``) that produced ``d_real_out``;
    for a PatchGAN the per-sample output is the sum over patches. The returned value is the
    *unweighted* expectation of the squared gradient norm; the trainer multiplies it by
    ``TrainConfig.gp_weight``, which therefore plays the role of ``gamma / 2`` in
    ``R1 = gamma/2 * E||grad D||^2``. The graph is kept (``create_graph=True``) so the penalty can
    be back-propagated into the discriminator's weights. A discriminator whose output does not
    depend on ``real_inputs`` gets a penalty of exactly zero.

    ``grad_scale``: with fp16 mixed precision the trainer passes the GradScaler's current scale;
    the gradient is taken of ``scale * D`` (so fp16 gradients do not underflow) and divided by it
    again in float32 before squaring (the recipe of the torch AMP notes for gradient penalties).
    """
    if not real_inputs.requires_grad:
        raise ValueError("r1_penalty: real_inputs must require grad (call .requires_grad_(True) before D)")
    grad = _input_grad(d_real_out, real_inputs, grad_scale)
    if grad is None:
        return real_inputs.new_zeros((), dtype=torch.float32)
    return grad.pow(2).reshape(grad.shape[0], -1).sum(dim=1).mean()


def _input_grad(d_out: torch.Tensor, inputs: torch.Tensor, grad_scale: float) -> torch.Tensor | None:
    """``d(sum d_out) / d inputs`` in float32 with the graph kept; ``None`` when unconnected."""
    if not d_out.requires_grad:
        return None
    (grad,) = torch.autograd.grad(
        outputs=d_out.float().sum() * grad_scale, inputs=inputs, create_graph=True, allow_unused=True
    )
    if grad is None:
        return None
    grad = grad.float()
    return grad / grad_scale if grad_scale != 1.0 else grad


def wgan_gp_penalty(
    discriminator: Callable[[torch.Tensor], torch.Tensor],
    real: torch.Tensor,
    fake: torch.Tensor,
    alpha: torch.Tensor | None = None,
    grad_scale: float = 1.0,
) -> torch.Tensor:
    """WGAN-GP gradient penalty (Gulrajani et al. 2017): ``E_batch (||grad_x D(x_hat)||_2 - 1)^2``.

    ``x_hat = alpha * real + (1 - alpha) * fake`` with one ``alpha ~ U(0, 1)`` per sample
    (``alpha``: ``(B, 1, 1, 1)``; drawn from the global torch generator when ``None``).
    ``real`` and ``fake`` are ``(B, C, H, W)`` (``fake`` is detached here); ``discriminator`` maps
    an image batch to scores (the trainer closes over the conditioning input ``x``). For a
    PatchGAN the per-sample output is the sum over patches, as in :func:`r1_penalty`. Unweighted:
    the trainer multiplies it by ``TrainConfig.gp_weight`` (the paper of WGAN-GP uses 10).
    """
    if real.shape != fake.shape:
        raise ValueError(f"real {tuple(real.shape)} and fake {tuple(fake.shape)} shapes differ")
    if alpha is None:
        alpha = torch.rand(real.shape[0], 1, 1, 1, device=real.device, dtype=real.dtype)
    x_hat = (alpha * real.detach() + (1.0 - alpha) * fake.detach()).requires_grad_(True)
    grad = _input_grad(discriminator(x_hat), x_hat, grad_scale)
    if grad is None:
        return real.new_ones((), dtype=torch.float32)  # ||0|| - 1 = -1 -> penalty 1
    norm = grad.reshape(grad.shape[0], -1).norm(2, dim=1)
    return ((norm - 1.0) ** 2).mean()


def l1_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error (the MMgSN-Net baseline's reconstruction term)."""
    return F.l1_loss(output, target)


@dataclass(frozen=True)
class LossWeights:
    """The generator's loss weights of one study variant (``Variant.lambda_*``); the paper's
    "ratio" is ``pg : gan`` (section 2.5.1); ``l1`` is the MMgSN-Net baseline's term."""

    pg: float
    gan: float
    l1: float


def generator_objective(
    fake: torch.Tensor,
    target: torch.Tensor,
    d_of_fake: Callable[[], torch.Tensor],
    d_fake_seen: torch.Tensor,
    weights: LossWeights,
    pg_eps: float,
) -> dict[str, torch.Tensor]:
    """The generator's objective (paper section 2.2 with eq. 2 and 3, plus the baseline's L1)::

        loss_g = lambda_gan * LSGAN_G(D(x, fake)) + lambda_pg * PG(fake, y) + lambda_l1 * L1(fake, y)

    ``fake``/``target``: ``(B, 1, H, W)`` float32. ``d_of_fake()``: PatchGAN scores of ``fake``
    with gradients into ``fake`` (called only when ``lambda_gan > 0``); ``d_fake_seen``: the
    discriminator step's scores of the detached ``fake``, used to *report* the GAN term when its
    weight is 0. A term whose weight is 0 is computed without gradients (it costs no backward)
    and still returned, so every run logs the same columns. Returns float32 scalars
    ``loss_g, loss_pg, loss_gan, loss_l1``; ``loss_g`` and the trained terms carry the graph
    (report them ``.detach()``-ed), the zero-weight terms none.
    """
    if weights.pg + weights.gan + weights.l1 <= 0:
        raise ValueError(f"all generator loss weights are 0 ({weights}): nothing to train")
    if weights.gan > 0:
        gan = lsgan_g_loss(d_of_fake().float())
    else:
        gan = lsgan_g_loss(d_fake_seen.detach().float())
    pg = _term(weights.pg > 0, lambda: pixelwise_gradient_loss(fake, target, pg_eps))
    l1 = _term(weights.l1 > 0, lambda: l1_loss(fake, target))
    terms = [w * t for w, t in ((weights.gan, gan), (weights.pg, pg), (weights.l1, l1)) if w > 0]
    return {"loss_g": sum(terms[1:], terms[0]), "loss_pg": pg, "loss_gan": gan, "loss_l1": l1}


def discriminator_objective(
    d_real: torch.Tensor, d_fake: torch.Tensor, penalty: Callable[[], torch.Tensor], gp_weight: float
) -> dict[str, torch.Tensor]:
    """The discriminator's objective (paper eq. 3, a=0, b=1, plus a gradient penalty)::

        loss_d = LSGAN_D(D(x, y), D(x, G(x))) + gp_weight * GP

    ``d_real``/``d_fake``: PatchGAN scores of the real and the (detached) generated T1C;
    ``penalty()``: the unweighted penalty (:func:`r1_penalty` or :func:`wgan_gp_penalty`),
    called only when ``gp_weight > 0`` (else ``gp`` is 0 and costs nothing). Returns float32
    scalars ``loss_d`` (with graph) and ``gp``.
    """
    loss_d_gan = lsgan_d_loss(d_real.float(), d_fake.float())
    gp = penalty() if gp_weight > 0 else loss_d_gan.new_zeros(())
    return {"loss_d": loss_d_gan + gp_weight * gp, "gp": gp}


def _term(trained: bool, loss: Callable[[], torch.Tensor]) -> torch.Tensor:
    """``loss()`` with gradients when the term is trained, else under ``torch.no_grad()``."""
    if trained:
        return loss()
    with torch.no_grad():
        return loss()
