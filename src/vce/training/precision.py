"""Mixed precision of one run (``train.amp``): the autocast context and the fp16 GradScaler.

``bf16`` / ``fp16`` autocast the G and D forwards; the paper's losses are computed in float32 on
``.float()`` outputs. ``fp16`` uses a GradScaler and needs CUDA (on CPU it falls back to fp32
with a warning); a gradient penalty takes its input gradient of the scaled output and unscales
it (:meth:`Precision.grad_scale`, the torch AMP recipe).
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

__all__ = ["Precision"]

log = logging.getLogger(__name__)

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Precision:
    """``amp``: ``off`` | ``bf16`` | ``fp16`` (config-validated); ``mode`` is what actually runs."""

    def __init__(self, amp: str, device: torch.device) -> None:
        if amp == "fp16" and device.type != "cuda":
            log.warning("train.amp=fp16 needs CUDA (GradScaler); running in fp32 on %s instead", device)
            amp = "off"
        self.mode = amp
        self.device_type = device.type
        self.dtype = _DTYPES.get(amp)
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")

    def autocast(self) -> AbstractContextManager[Any]:
        """Context for a network forward: autocast to ``dtype``, or nothing in fp32."""
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def grad_scale(self) -> float:
        """The GradScaler's current scale (1 when not scaling)."""
        return float(self.scaler.get_scale()) if self.scaler.is_enabled() else 1.0

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        self.scaler.step(optimizer)

    def update(self) -> None:
        """Once per iteration, after both optimiser steps."""
        self.scaler.update()
