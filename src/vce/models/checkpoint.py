"""The one checkpoint format of a trained variant: its writer and its reader, side by side.

A checkpoint is a dict of plain tensors and python types (``torch.load(weights_only=True)``
reads it; nothing arbitrary is unpickled)::

    format_version       CHECKPOINT_FORMAT
    generator            state dict of the generator (the EMA weights when generator_is_ema)
    discriminator        state dict of the PatchGAN
    model                generator spec: {name, n_modalities, base_channels, output, arch}
    discriminator_model  {in_channels, base_channels, n_layers}
    variant              Variant.to_dict()
    iterations, seed, image_size, modalities, train_config, metadata
    selected             "last" | "best"; selected_iteration: the iteration its weights are from
    generator_is_ema     bool

:func:`generator_spec` says which network a variant trains, :func:`build_from_spec` builds it
(the trainer and :func:`load_generator` both use it, so a checkpoint always rebuilds the network
that was trained), :func:`make_checkpoint` / :func:`save_checkpoint` write and
:func:`load_checkpoint` / :func:`load_generator` read.
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from vce.config import TrainConfig, Variant
from vce.io.atomic import atomic_file
from vce.io.errors import VCEInputError
from vce.models.factory import build_generator, output_for

__all__ = [
    "CHECKPOINT_FORMAT",
    "generator_arch",
    "generator_spec",
    "build_from_spec",
    "make_checkpoint",
    "save_checkpoint",
    "load_checkpoint",
    "load_generator",
    "load_weights_only",
]

CHECKPOINT_FORMAT = 1


def generator_arch(model: str, cfg: TrainConfig) -> dict[str, Any]:
    """Architecture keywords of the generator beyond (modalities, base channels): PGMGVCE's number
    of halvings (``train.pgmgvce_depth``); MMgSN-Net's layout is fixed."""
    return {"depth": cfg.pgmgvce_depth} if model == "pgmgvce" else {}


def generator_spec(variant: Variant, cfg: TrainConfig) -> dict[str, Any]:
    """What :func:`build_from_spec` needs to build ``variant``'s generator (stored as ``model``)."""
    return {
        "name": variant.model,
        "n_modalities": len(variant.modalities),
        "base_channels": cfg.base_channels,
        "output": output_for(variant.normalization),
        "arch": generator_arch(variant.model, cfg),
    }


def build_from_spec(spec: dict[str, Any]) -> nn.Module:
    """A freshly initialised generator from a spec (uses the global torch RNG for the weights)."""
    return build_generator(
        str(spec["name"]), int(spec["n_modalities"]), int(spec["base_channels"]),
        str(spec.get("output", "linear")), **dict(spec.get("arch") or {}),
    )  # fmt: skip


def make_checkpoint(
    generator: dict[str, torch.Tensor],
    discriminator: dict[str, torch.Tensor],
    *,
    spec: dict[str, Any],
    discriminator_spec: dict[str, Any],
    variant: Variant,
    selected: str,
    selected_iteration: int,
    generator_is_ema: bool,
    seed: int,
    image_size: int,
    train_config: dict[str, Any],
    metadata: dict[str, Any],
) -> dict[str, Any]:
    """The checkpoint dict of the format above (state dicts must already be on the CPU)."""
    return {
        "format_version": CHECKPOINT_FORMAT,
        "generator": generator,
        "discriminator": discriminator,
        "variant": variant.to_dict(),
        "model": spec,
        "discriminator_model": discriminator_spec,
        "iterations": int(train_config["iterations"]),
        "selected": selected,
        "selected_iteration": selected_iteration,
        "generator_is_ema": generator_is_ema,
        "seed": seed,
        "image_size": image_size,
        "modalities": list(variant.modalities),
        "train_config": train_config,
        "metadata": metadata,
    }


def save_checkpoint(checkpoint: dict[str, Any], path: str | Path) -> Path:
    """Write ``checkpoint`` atomically (temp file + rename); returns ``path``."""
    path = Path(path)
    with atomic_file(path) as tmp:
        torch.save(checkpoint, tmp)
    return path


def load_weights_only(path: str | Path, what: str, remedy: str = "", map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``: tensors and plain python values only, so a pickle
    payload (a class whose ``__reduce__`` runs code) is refused, never executed.

    Raises :class:`VCEInputError` naming ``path`` and ``what`` it should be, on one line, for a
    file holding other Python objects (refused) or one that is truncated or corrupt; ``remedy``
    (e.g. "; delete it") is appended. torch's own advice to load with ``weights_only=False`` is
    never passed on."""
    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol of foreign files: the error says enough
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "unsupported global" in str(exc).lower():  # a class or function to call: what a pickle payload is
            raise VCEInputError(f"{path}: refused: it holds Python objects other than tensors and plain values, which "
                                f"a {what} never does (not loaded, nothing in it was run){remedy}") from None
        reason = "a pickle stream the weights-only reader does not accept"
        raise VCEInputError(f"{path}: not a loadable {what} (truncated, corrupt or not a torch file: {reason}){remedy}") from None
    except Exception as exc:  # noqa: BLE001 - any format error is a bad input file
        raise VCEInputError(f"{path}: not a loadable {what} (truncated, corrupt or not a torch file: "
                            f"{_first_line(exc)}){remedy}") from None


def _first_line(exc: BaseException) -> str:
    """The first sentence of an exception's message (torch's run to many lines of advice)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text.split(". ")[0].rstrip(".")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``torch.load(weights_only=True)`` (:func:`load_weights_only`);
    :class:`VCEInputError` naming the file when it is missing, not loadable, holds a pickle
    payload, or lacks the ``generator``/``model`` keys."""
    path = Path(path)
    if not path.is_file():
        raise VCEInputError(f"checkpoint not found: {path}")
    ckpt = load_weights_only(path, "VCE checkpoint", map_location=map_location)
    if not isinstance(ckpt, dict) or "generator" not in ckpt or "model" not in ckpt:
        raise VCEInputError(f"{path}: not a VCE trainer checkpoint (needs 'generator' and 'model' keys)")
    return ckpt


def load_generator(checkpoint_path: str | Path, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Load a checkpoint and rebuild its generator.

    Returns ``(generator in eval mode, metadata)`` where metadata is the checkpoint without the
    state dicts: ``variant`` (dict), ``model`` (the spec), ``iterations``, ``seed`` and the rest
    of the format above.
    """
    path = Path(checkpoint_path)
    ckpt = load_checkpoint(path, map_location)
    spec = ckpt["model"]
    try:
        gen = build_from_spec(spec)
        gen.load_state_dict(ckpt["generator"])
    except (KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise VCEInputError(f"{path}: cannot rebuild the generator from {spec!r}: {exc}") from exc
    gen.eval()
    meta = {k: v for k, v in ckpt.items() if k not in ("generator", "discriminator")}
    return gen, meta
