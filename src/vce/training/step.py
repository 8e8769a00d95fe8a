"""One training iteration of the conditional GAN (pix2pix ordering, one generator forward)::

    fake = G(x)
    d_step: minimise discriminator_objective = LSGAN_D(D(x, y), D(x, fake.detach())) + gp_weight * GP
    g_step: minimise generator_objective = lambda_gan * LSGAN_G(D(x, fake)) + lambda_pg * PG + lambda_l1 * L1

then the GradScaler update, the EMA update, the mean of the losses over ranks and a check that
they are finite. Both objectives live in :mod:`vce.losses`; this is the one place that calls them.

Gradient penalty ``GP`` (``train.gp_type``, column ``gp``):

* ``r1`` (**default**): ``E ||grad_y D(x, y)||^2`` on real targets (Mescheder et al. 2018). It
  needs no extra discriminator forward, is zero at the equilibrium (D flat on the data), and is
  the penalty shown to converge for non-Wasserstein losses such as LSGAN; the paper names no
  penalty, so the cheapest stabiliser that leaves the LSGAN optimum unchanged is used.
* ``wgan_gp``: ``E (||grad D(x, x_hat)|| - 1)^2`` on random interpolates ``x_hat`` between the
  real and the generated T1C (Gulrajani et al. 2017); one extra D forward per iteration; the
  interpolation weights come from a dedicated seeded torch generator (part of the resumable state).

``train.compile`` wraps G (and D when no gradient penalty is used: compiled graphs do not support
the double backward of a penalty) in ``torch.compile``.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import torch
import torch.nn as nn

from vce.losses import LossWeights, discriminator_objective, generator_objective, r1_penalty, wgan_gp_penalty
from vce.training.distributed import DistContext
from vce.training.ema import EMA
from vce.training.precision import Precision
from vce.training.state import cpu_state

__all__ = ["LOSS_COLUMNS", "GanStep"]

#: What one step reports (and ``losses.csv`` logs), in column order.
LOSS_COLUMNS = ("loss_d", "loss_g", "loss_pg", "loss_gan", "loss_l1", "gp")


class GanStep:
    """``step(x, y)``: one D step and one G step on a batch ``x`` (B, M, S, S), ``y`` (B, 1, S, S).

    Holds what an iteration changes (networks, optimisers, GradScaler, EMA, the penalty's RNG);
    :meth:`state_dict` / :meth:`load_state_dict` save and restore all of it, plus the global
    torch (and CUDA) RNG state. ``iteration`` counts the steps taken (restored on resume).
    """

    def __init__(
        self,
        G: nn.Module,
        D: nn.Module,
        *,
        weights: LossWeights,
        lr: float,
        betas: tuple[float, float],
        gp_type: str,
        gp_weight: float,
        pg_eps: float,
        precision: Precision,
        dist: DistContext,
        ema: EMA | None = None,
        gp_seed: int = 0,
        compile: bool = False,
        name: str = "run",
    ) -> None:
        self.G, self.D, self.ema = G, D, ema
        self.weights, self.gp_type, self.gp_weight, self.pg_eps = weights, gp_type, gp_weight, pg_eps
        self.precision, self.dist, self.name = precision, dist, name
        self.gp_generator = torch.Generator(device="cpu").manual_seed(gp_seed)
        self.opt_g = torch.optim.Adam(G.parameters(), lr=lr, betas=betas)
        self.opt_d = torch.optim.Adam(D.parameters(), lr=lr, betas=betas)
        self.Gc = torch.compile(G) if compile else G
        self.Dc = torch.compile(D) if compile and gp_weight == 0 else D
        self.iteration = 0

    @property
    def generator(self) -> nn.Module:
        """The generator to validate and keep: the EMA when on, else G itself."""
        return self.ema.model if self.ema is not None else self.G

    def step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """One iteration; returns the :data:`LOSS_COLUMNS` (mean over ranks) as floats and raises
        ``FloatingPointError`` when one is not finite."""
        return self._report(self.train_batch(x, y))

    def train_batch(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """The updates of one iteration (D step, G step, GradScaler, EMA); returns the loss
        tensors of this rank without synchronising (so it also runs on the ``meta`` device)."""
        with self.precision.autocast():
            fake = self.Gc(x)
        d_losses, d_fake = self.d_step(x, y, fake)
        g_losses = self.g_step(x, y, fake, d_fake)
        self.precision.update()
        if self.ema is not None:
            self.ema.update(self.G)
        self.iteration += 1
        return d_losses | g_losses

    def d_step(self, x: torch.Tensor, y: torch.Tensor, fake: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Update D on real ``y`` vs detached ``fake``; returns its losses and its scores of ``fake``."""
        _trainable(self.D, True)
        y_real = y.detach().requires_grad_(self.gp_weight > 0 and self.gp_type == "r1")
        with self.precision.autocast():
            d_real = self.Dc(x, y_real)
            d_fake = self.Dc(x, fake.detach())
        penalty = partial(self._penalty, x, y_real, d_real, fake)
        losses = discriminator_objective(d_real, d_fake, penalty, self.gp_weight)
        self._update(losses["loss_d"], self.opt_d, self.D)
        return losses, d_fake

    def g_step(self, x: torch.Tensor, y: torch.Tensor, fake: torch.Tensor, d_fake: torch.Tensor) -> dict[str, torch.Tensor]:
        """Update G on the generator objective (D frozen); returns its losses."""
        _trainable(self.D, False)
        losses = generator_objective(fake.float(), y.detach(), partial(self._score, x, fake), d_fake,
                                     self.weights, self.pg_eps)  # fmt: skip
        self._update(losses["loss_g"], self.opt_g, self.G)
        return losses

    def release(self) -> None:
        """After training: D's parameters trainable again (as built)."""
        _trainable(self.D, True)

    def _score(self, x: torch.Tensor, img: torch.Tensor) -> torch.Tensor:
        with self.precision.autocast():
            return self.Dc(x, img)

    def _penalty(self, x: torch.Tensor, y_real: torch.Tensor, d_real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        scale = self.precision.grad_scale()
        if self.gp_type == "r1":
            return r1_penalty(d_real, y_real, grad_scale=scale)
        alpha = torch.rand(y_real.shape[0], 1, 1, 1, generator=self.gp_generator).to(y_real.device)
        return wgan_gp_penalty(partial(self._score, x), y_real.detach(), fake.float(), alpha=alpha, grad_scale=scale)

    def _update(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer, module: nn.Module) -> None:
        optimizer.zero_grad(set_to_none=True)
        self.precision.backward(loss)
        self.dist.average_gradients(module)
        self.precision.step(optimizer)

    def _report(self, losses: dict[str, torch.Tensor]) -> dict[str, float]:
        vals = self.dist.mean(torch.stack([losses[k].detach().float() for k in LOSS_COLUMNS]))
        values = dict(zip(LOSS_COLUMNS, vals.cpu().tolist()))
        bad = [k for k, v in values.items() if not math.isfinite(v)]
        if bad:
            raise FloatingPointError(f"{self.name}: non-finite {bad} at iteration {self.iteration}: {values}")
        return values

    def state_dict(self) -> dict[str, Any]:
        """Networks, optimisers, GradScaler and RNG states (plain tensors / python types)."""
        device = self.dist.device
        return {
            "generator": cpu_state(self.G),
            "discriminator": cpu_state(self.D),
            "generator_ema": cpu_state(self.ema.model) if self.ema is not None else None,
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "scaler": self.precision.scaler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            "gp_rng": self.gp_generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.G.load_state_dict(state["generator"])
        self.D.load_state_dict(state["discriminator"])
        if self.ema is not None:
            self.ema.load_state_dict(state["generator_ema"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.precision.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        if self.dist.device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], self.dist.device)
        self.gp_generator.set_state(state["gp_rng"])


def _trainable(module: nn.Module, on: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(on)
