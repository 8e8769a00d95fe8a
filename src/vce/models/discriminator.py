"""Conditional PatchGAN discriminator (pix2pix, Isola et al. 2017), the paper's patch-based D.

``D(inputs, image)`` scores ``concat(inputs, image)`` patch by patch: the output is a map of
scores, one per (overlapping) receptive field; with ``n_layers=3`` each score sees a 70x70
patch. Layers: conv4x4/2 -> LReLU, ``n_layers - 1`` x [conv4x4/2 -> IN -> LReLU] (widths
doubling, capped at 8b), conv4x4/1 -> IN -> LReLU, conv4x4/1 -> 1 (linear, for LSGAN).

InstanceNorm (not BatchNorm) keeps samples independent, as the per-sample R1 penalty needs.
"""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["PatchDiscriminator", "adapt_n_layers"]


def adapt_n_layers(image_size: int | None, n_layers: int = 3, min_output: int = 2) -> int:
    """Largest number of strided layers ``<= n_layers`` whose output map is at least ``min_output``^2.

    The output side is ``floor(S / 2^n) - 2``: 64 -> 3 layers (6x6), 32 -> 3 (2x2), 16 -> 2 (2x2).
    ``image_size=None`` returns ``n_layers`` unchanged.
    """
    if image_size is None:
        return n_layers
    n = n_layers
    while n > 1 and image_size // 2**n - 2 < min_output:
        n -= 1
    if image_size // 2**n - 2 < 1:
        raise ValueError(f"image size {image_size} is too small for a PatchGAN discriminator")
    return n


class PatchDiscriminator(nn.Module):
    """PatchGAN on ``concat(inputs (C channels), image (1 channel))``; ``in_channels = C + 1``."""

    def __init__(self, in_channels: int, base_channels: int = 16, n_layers: int = 3) -> None:
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")
        b = base_channels
        self.in_channels = in_channels
        self.n_layers = n_layers
        layers: list[nn.Module] = [nn.Conv2d(in_channels, b, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
        ch = b
        for n in range(1, n_layers):
            out = b * min(2**n, 8)
            layers += [
                nn.Conv2d(ch, out, 4, stride=2, padding=1, bias=False),
                nn.InstanceNorm2d(out, affine=True),
                nn.LeakyReLU(0.2, inplace=True),
            ]
            ch = out
        out = b * min(2**n_layers, 8)
        layers += [
            nn.Conv2d(ch, out, 4, stride=1, padding=1, bias=False),
            nn.InstanceNorm2d(out, affine=True),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(out, 1, 4, stride=1, padding=1),
        ]
        self.net = nn.Sequential(*layers)

    def forward(self, inputs: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        x = torch.cat([inputs, image], dim=1)
        if x.shape[1] != self.in_channels:
            raise ValueError(f"expected {self.in_channels} channels (inputs + image), got {x.shape[1]}")
        return self.net(x)
