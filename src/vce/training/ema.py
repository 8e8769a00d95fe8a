"""Exponential moving average of the generator's weights (``train.ema_decay``)."""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

__all__ = ["EMA"]


class EMA:
    """``shadow = decay * shadow + (1 - decay) * weights`` after every step; buffers copied.

    ``model`` is a frozen copy in eval mode; when on, validation and the checkpoint use it.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for pe, p in zip(self.model.parameters(), model.parameters()):
            pe.mul_(self.decay).add_(p.detach(), alpha=1.0 - self.decay)
        for be, b in zip(self.model.buffers(), model.buffers()):
            be.copy_(b)

    def copy_from(self, model: nn.Module) -> None:
        """Restart the average at ``model``'s weights (e.g. after a broadcast)."""
        self.model.load_state_dict(model.state_dict())

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)
