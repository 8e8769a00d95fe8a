"""Building blocks and argument checks shared by both generators (PGMGVCE and MMgSN-Net)."""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["check_generator_args", "check_image_size", "conv_block"]


def check_generator_args(n_modalities: int, base_channels: int) -> None:
    """Both generators need at least one modality and one base channel."""
    if n_modalities < 1:
        raise ValueError(f"n_modalities must be >= 1, got {n_modalities}")
    if base_channels < 1:
        raise ValueError(f"base_channels must be >= 1, got {base_channels}")


def check_image_size(x: torch.Tensor, n_modalities: int, halvings: int, model: str) -> None:
    """Raise ``ValueError`` unless ``x`` is ``(B, n_modalities, H, W)`` with ``H, W`` divisible by
    ``2^halvings`` and at least 2 pixels left after the last halving."""
    if x.dim() != 4 or x.shape[1] != n_modalities:
        raise ValueError(f"{model}: expected input (B, {n_modalities}, H, W), got {tuple(x.shape)}")
    factor = 2**halvings
    h, w = int(x.shape[-2]), int(x.shape[-1])
    if h % factor or w % factor or h // factor < 2 or w // factor < 2:
        nearest = max(2, round(max(h, w) / factor)) * factor
        raise ValueError(
            f"{model} halves the image {halvings} times, so height and width must be multiples of "
            f"{factor} and at least {2 * factor}; got {h}x{w} (e.g. {nearest}x{nearest} would work)"
        )


def conv_block(
    in_ch: int, out_ch: int, stride: int = 1, kernel: int = 3, act: str = "lrelu", norm: bool = True
) -> nn.Sequential:
    """conv -> InstanceNorm (affine) -> activation (``lrelu`` 0.2 | ``relu`` | ``none``).

    ``(B, in_ch, H, W)`` -> ``(B, out_ch, H/stride, W/stride)`` (``padding = kernel // 2``).
    """
    layers: list[nn.Module] = [
        nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, bias=not norm)
    ]
    if norm:
        layers.append(nn.InstanceNorm2d(out_ch, affine=True))
    if act == "lrelu":
        layers.append(nn.LeakyReLU(0.2, inplace=True))
    elif act == "relu":
        layers.append(nn.ReLU(inplace=True))
    elif act != "none":
        raise ValueError(f"unknown activation {act!r}")
    return nn.Sequential(*layers)
