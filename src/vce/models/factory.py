"""Build generators / discriminators by name and count parameters (loading a trained one: vce.models.checkpoint)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from vce.config import MODELS
from vce.models.discriminator import PatchDiscriminator, adapt_n_layers
from vce.models.mmgsn import MMgSNGenerator
from vce.models.pgmgvce import PGMGVCEGenerator

__all__ = ["GENERATORS", "build_generator", "build_discriminator", "count_parameters", "output_for"]


def _model_name(cls: type[nn.Module]) -> str:
    """A generator class is named after its ``Variant.model``: ``PGMGVCEGenerator`` -> ``pgmgvce``."""
    return cls.__name__.removesuffix("Generator").lower()


#: ``Variant.model`` -> generator class; the names are ``vce.config.MODELS`` (checked at import).
GENERATORS: dict[str, type[nn.Module]] = {_model_name(c): c for c in (PGMGVCEGenerator, MMgSNGenerator)}
if tuple(GENERATORS) != MODELS:
    raise ImportError(f"vce.models.factory implements the generators {tuple(GENERATORS)}, "
                      f"but vce.config.MODELS lists {MODELS}")


OUTPUTS = ("linear", "sigmoid")


def output_for(normalization: str) -> str:
    """The generator's output range follows the target's: (0, 1) for sigmoid / tanh
    normalisation (eq. 12-13), unbounded for z-score (eq. 11)."""
    return "linear" if normalization == "zscore" else "sigmoid"


def build_generator(
    model: str, n_modalities: int, base_channels: int, output: str = "linear", **arch: Any
) -> nn.Module:
    """``model``: ``pgmgvce`` | ``mmgsn`` (``Variant.model``); ``n_modalities``: 1 or 2.

    ``arch``: optional architecture keywords of the generator class, e.g. ``depth=3`` or
    ``n_res_blocks=2`` for PGMGVCE, ``attention_scale=2`` for MMgSN-Net (defaults when omitted;
    see docs/models.md). A trainer that sets them must store them as ``model.arch`` in the
    checkpoint so that :func:`load_generator` rebuilds the same network.

    ``output="sigmoid"`` appends a sigmoid so predictions live in (0, 1) like sigmoid- and
    tanh-normalised targets (as pix2pix ends in tanh for [-1, 1] images); it starts training at
    the patient's mean intensity instead of 0.
    """
    try:
        cls = GENERATORS[model]
    except KeyError:
        raise ValueError(f"unknown model {model!r}; known: {sorted(GENERATORS)}") from None
    if output not in OUTPUTS:
        raise ValueError(f"unknown generator output {output!r}; known: {OUTPUTS}")
    try:
        net = cls(n_modalities=n_modalities, base_channels=base_channels, **arch)
    except TypeError as exc:
        raise ValueError(f"bad architecture options {arch!r} for {model!r}: {exc}") from None
    return net if output == "linear" else SigmoidOutput(net)


class SigmoidOutput(nn.Module):
    """``sigmoid(net(x))``; attributes not found here (e.g. ``modality_weights``) come from ``net``."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(x))

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("net"), name)


def build_discriminator(
    n_modalities: int, base_channels: int, image_size: int | None = None, n_layers: int = 3
) -> PatchDiscriminator:
    """Conditional PatchGAN on ``n_modalities`` input channels + the (real or generated) T1C.

    With ``image_size`` the number of strided layers shrinks for small images (see
    :func:`~vce.models.discriminator.adapt_n_layers`).
    """
    return PatchDiscriminator(n_modalities + 1, base_channels, adapt_n_layers(image_size, n_layers))


def count_parameters(module: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) scalar parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
