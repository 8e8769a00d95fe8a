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

__all__ = ["PatchDiscriminator", "adapt_n_layers", "receptive_field"]


def receptive_field(n_layers: int) -> int:
    """Side (px) of the input patch one output score sees: 16, 34, 70 for 1, 2, 3 strided layers
    (two 4x4 stride-1 convolutions after ``n_layers`` 4x4 stride-2 ones)."""
    rf = 1
    for _ in range(2):  # stride-1 layers, from the output back
        rf = rf + 3
    for _ in range(n_layers):
        rf = (rf - 1) * 2 + 4
    return rf


#: The largest receptive field, as a fraction of the image side, that still counts as patch-based
#: (the paper's 70x70 PatchGAN on 192x192 images sees 36 %).
MAX_PATCH_FRACTION = 0.5


def adapt_n_layers(image_size: int | None, n_layers: int = 3, min_output: int = 2) -> int:
    """Largest number of strided layers ``<= n_layers`` whose receptive field is at most
    :data:`MAX_PATCH_FRACTION` of the image side and whose output map is at least ``min_output``^2:
    the discriminator judges patches, never the whole image.

    192 -> 3 layers (70 px patches, 21x21 scores), 96 -> 2 (34 px), 64 -> 1 (16 px), 48 -> 1 (16 px),
    32 -> 1 (16 px). ``image_size=None`` returns ``n_layers`` unchanged.
    """
    if image_size is None:
        return n_layers
    n = n_layers
    while n > 1 and (image_size // 2**n - 2 < min_output or receptive_field(n) > MAX_PATCH_FRACTION * image_size):
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
