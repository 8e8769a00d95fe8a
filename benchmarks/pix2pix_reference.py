"""Compact pix2pix reference (Isola et al. 2017), structured as in the CycleGAN/pix2pix repository.

Used only by the benchmarks as a speed reference of known cost: a U-Net generator built from
nested ``UnetSkipConnectionBlock`` s (4x4 stride-2 convolutions, BatchNorm, LeakyReLU(0.2) down,
ReLU + ConvTranspose up, dropout 0.5 in the innermost-but-outer blocks, tanh output) and the
70x70 PatchGAN (``NLayerDiscriminator``, n_layers=3, BatchNorm). ``num_downs`` = 6 takes a
192x192 image down to 3x3 (the original uses 8 for 256x256: 256 / 2**8 = 1).

One training iteration (:func:`pix2pix_iteration`), as in ``Pix2PixModel.optimize_parameters``
with ``gan_mode='lsgan'`` and ``lambda_L1=100``::

    fake = G(x)
    D step: 0.5 * (MSE(D(x, y), 1) + MSE(D(x, fake.detach()), 0))
    G step: MSE(D(x, fake), 1) + 100 * L1(fake, y)

Shapes: ``x`` (B, C_in, S, S), ``y`` (B, 1, S, S), ``S`` divisible by ``2**num_downs``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["UnetSkipConnectionBlock", "UnetGenerator", "NLayerDiscriminator", "Pix2Pix", "pix2pix_iteration"]


class UnetSkipConnectionBlock(nn.Module):
    """One U-Net level: ``x -> down -> submodule -> up`` with the skip ``cat([x, up])`` (except outermost)."""

    def __init__(
        self,
        outer_nc: int,
        inner_nc: int,
        input_nc: int | None = None,
        submodule: nn.Module | None = None,
        outermost: bool = False,
        innermost: bool = False,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
        use_dropout: bool = False,
    ) -> None:
        super().__init__()
        self.outermost = outermost
        use_bias = norm_layer == nn.InstanceNorm2d
        if input_nc is None:
            input_nc = outer_nc
        downconv = nn.Conv2d(input_nc, inner_nc, kernel_size=4, stride=2, padding=1, bias=use_bias)
        downrelu = nn.LeakyReLU(0.2, True)
        downnorm = norm_layer(inner_nc)
        uprelu = nn.ReLU(True)
        upnorm = norm_layer(outer_nc)
        if outermost:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, kernel_size=4, stride=2, padding=1)
            model = [downconv, submodule, uprelu, upconv, nn.Tanh()]
        elif innermost:
            upconv = nn.ConvTranspose2d(inner_nc, outer_nc, kernel_size=4, stride=2, padding=1, bias=use_bias)
            model = [downrelu, downconv, uprelu, upconv, upnorm]
        else:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, kernel_size=4, stride=2, padding=1, bias=use_bias)
            model = [downrelu, downconv, downnorm, submodule, uprelu, upconv, upnorm]
            if use_dropout:
                model = model + [nn.Dropout(0.5)]
        self.model = nn.Sequential(*model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.outermost:
            return self.model(x)
        return torch.cat([x, self.model(x)], 1)


class UnetGenerator(nn.Module):
    """U-Net with ``num_downs`` downsamplings: (B, input_nc, S, S) -> (B, output_nc, S, S) in (-1, 1)."""

    def __init__(
        self, input_nc: int, output_nc: int, num_downs: int, ngf: int = 64,
        norm_layer: type[nn.Module] = nn.BatchNorm2d, use_dropout: bool = True,
    ) -> None:  # fmt: skip
        super().__init__()
        if num_downs < 5:
            raise ValueError(f"num_downs must be >= 5 (the repository's fixed outer levels), got {num_downs}")
        block = UnetSkipConnectionBlock(ngf * 8, ngf * 8, submodule=None, norm_layer=norm_layer, innermost=True)
        for _ in range(num_downs - 5):
            block = UnetSkipConnectionBlock(ngf * 8, ngf * 8, submodule=block, norm_layer=norm_layer, use_dropout=use_dropout)
        block = UnetSkipConnectionBlock(ngf * 4, ngf * 8, submodule=block, norm_layer=norm_layer)
        block = UnetSkipConnectionBlock(ngf * 2, ngf * 4, submodule=block, norm_layer=norm_layer)
        block = UnetSkipConnectionBlock(ngf, ngf * 2, submodule=block, norm_layer=norm_layer)
        self.model = UnetSkipConnectionBlock(output_nc, ngf, input_nc=input_nc, submodule=block, outermost=True, norm_layer=norm_layer)
        self.num_downs = num_downs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class NLayerDiscriminator(nn.Module):
    """PatchGAN: n_layers=3 gives 70x70 receptive fields; (B, input_nc, S, S) -> (B, 1, S/8 - 2, S/8 - 2)."""

    def __init__(self, input_nc: int, ndf: int = 64, n_layers: int = 3, norm_layer: type[nn.Module] = nn.BatchNorm2d) -> None:
        super().__init__()
        use_bias = norm_layer == nn.InstanceNorm2d
        kw, padw = 4, 1
        sequence: list[nn.Module] = [nn.Conv2d(input_nc, ndf, kernel_size=kw, stride=2, padding=padw), nn.LeakyReLU(0.2, True)]
        nf_mult = 1
        for n in range(1, n_layers):
            nf_mult_prev, nf_mult = nf_mult, min(2**n, 8)
            sequence += [
                nn.Conv2d(ndf * nf_mult_prev, ndf * nf_mult, kernel_size=kw, stride=2, padding=padw, bias=use_bias),
                norm_layer(ndf * nf_mult),
                nn.LeakyReLU(0.2, True),
            ]
        nf_mult_prev, nf_mult = nf_mult, min(2**n_layers, 8)
        sequence += [
            nn.Conv2d(ndf * nf_mult_prev, ndf * nf_mult, kernel_size=kw, stride=1, padding=padw, bias=use_bias),
            norm_layer(ndf * nf_mult),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf * nf_mult, 1, kernel_size=kw, stride=1, padding=padw),
        ]
        self.model = nn.Sequential(*sequence)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class Pix2Pix(nn.Module):
    """Generator + conditional discriminator (on ``cat([x, image])``) + their Adam optimisers (lr 2e-4, beta1 0.5)."""

    def __init__(self, input_nc: int, output_nc: int = 1, num_downs: int = 6, ngf: int = 64, ndf: int = 64) -> None:
        super().__init__()
        self.netG = UnetGenerator(input_nc, output_nc, num_downs, ngf)
        self.netD = NLayerDiscriminator(input_nc + output_nc, ndf, n_layers=3)
        self.opt_g = torch.optim.Adam(self.netG.parameters(), lr=2e-4, betas=(0.5, 0.999))
        self.opt_d = torch.optim.Adam(self.netD.parameters(), lr=2e-4, betas=(0.5, 0.999))


def pix2pix_iteration(m: Pix2Pix, x: torch.Tensor, y: torch.Tensor, lambda_l1: float = 100.0) -> tuple[torch.Tensor, torch.Tensor]:
    """One pix2pix training iteration (LSGAN + L1) on ``x`` (B, C, S, S), ``y`` (B, 1, S, S); returns (loss_d, loss_g), detached."""
    fake = m.netG(x)
    # D step
    for p in m.netD.parameters():
        p.requires_grad_(True)
    m.opt_d.zero_grad(set_to_none=True)
    pred_fake = m.netD(torch.cat([x, fake.detach()], 1))
    pred_real = m.netD(torch.cat([x, y], 1))
    loss_d = 0.5 * (F.mse_loss(pred_fake, torch.zeros_like(pred_fake)) + F.mse_loss(pred_real, torch.ones_like(pred_real)))
    loss_d.backward()
    m.opt_d.step()
    # G step
    for p in m.netD.parameters():
        p.requires_grad_(False)
    m.opt_g.zero_grad(set_to_none=True)
    pred = m.netD(torch.cat([x, fake], 1))
    loss_g = F.mse_loss(pred, torch.ones_like(pred)) + lambda_l1 * F.l1_loss(fake, y)
    loss_g.backward()
    m.opt_g.step()
    return loss_d.detach(), loss_g.detach()

