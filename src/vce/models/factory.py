"""Build generators / discriminators by name, count parameters, load trained generators."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from vce.io.errors import VCEInputError
from vce.models.discriminator import PatchDiscriminator, adapt_n_layers
from vce.models.mmgsn import MMgSNGenerator
from vce.models.pgmgvce import PGMGVCEGenerator

__all__ = ["GENERATORS", "build_generator", "build_discriminator", "count_parameters", "load_generator"]

GENERATORS: dict[str, type[nn.Module]] = {"pgmgvce": PGMGVCEGenerator, "mmgsn": MMgSNGenerator}


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


def load_generator(checkpoint_path: str | Path, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Load a trainer checkpoint (``torch.load(weights_only=True)``) and rebuild its generator.

    Returns ``(generator in eval mode, metadata)`` where metadata is the checkpoint without the
    state dicts: ``variant`` (dict), ``model`` ({name, n_modalities, base_channels, optional
    output and arch (dict of :func:`build_generator` keywords)}), ``iterations``,
    ``seed`` and whatever else the trainer stored.
    """
    path = Path(checkpoint_path)
    if not path.is_file():
        raise VCEInputError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling/format error is a bad input file
        raise VCEInputError(f"{path}: not a loadable checkpoint: {exc}") from exc
    if not isinstance(ckpt, dict) or "generator" not in ckpt or "model" not in ckpt:
        raise VCEInputError(f"{path}: not a VCE trainer checkpoint (needs 'generator' and 'model' keys)")
    spec = ckpt["model"]
    try:
        gen = build_generator(str(spec["name"]), int(spec["n_modalities"]), int(spec["base_channels"]),
                              str(spec.get("output", "linear")), **dict(spec.get("arch") or {}))
        gen.load_state_dict(ckpt["generator"])
    except (KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise VCEInputError(f"{path}: cannot rebuild the generator from {spec!r}: {exc}") from exc
    gen.eval()
    meta = {k: v for k, v in ckpt.items() if k not in ("generator", "discriminator")}
    return gen, meta
