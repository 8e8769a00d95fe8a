"""The data-parallel context of one run (``torchrun``: ``WORLD_SIZE > 1``).

Backend nccl on CUDA, gloo on CPU. Every rank draws its own contiguous shard of each seeded
global batch (``batch_size`` is per process); gradients are averaged with one flattened
``all_reduce`` per network (explicit, because DistributedDataParallel does not support the
penalty's double backward), so all ranks keep identical weights; a hash of every rank's final
generator is gathered and compared. Only rank 0 (``main``) validates, tracks and writes files.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

__all__ = ["DistContext", "state_hash"]


def state_hash(state: dict[str, torch.Tensor]) -> str:
    """sha256 over the sorted keys and the bytes of a state dict's tensors."""
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@dataclass
class DistContext:
    """``world`` processes, this one is ``rank`` on ``device``; ``owns_group`` when it started
    the process group (and :meth:`close` ends it)."""

    world: int = 1
    rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @classmethod
    def from_env(cls, device: str | torch.device | None = None) -> DistContext:
        """Read ``WORLD_SIZE`` / ``RANK`` / ``LOCAL_RANK``; default device ``cuda:<LOCAL_RANK>``
        when CUDA is available, else ``cpu``; start the process group when needed."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if device is None:
            device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", local_rank)
        owns = False
        if world > 1 and not dist.is_initialized():
            if device.type == "cuda":
                torch.cuda.set_device(device)
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
            owns = True
        if world > 1:
            world, rank = dist.get_world_size(), dist.get_rank()
        return cls(world=world, rank=rank, device=device, owns_group=owns)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def rng_devices(self) -> list[torch.device]:
        """Devices whose RNG :func:`torch.random.fork_rng` must save and restore."""
        return [self.device] if self.device.type == "cuda" else []

    def close(self) -> None:
        if self.owns_group:
            dist.destroy_process_group()

    def broadcast(self, *modules: nn.Module) -> None:
        """Rank 0's parameters and buffers to every rank."""
        if self.world > 1:
            for m in modules:
                for t in m.state_dict().values():
                    dist.broadcast(t, 0)

    def average_gradients(self, module: nn.Module) -> None:
        """Average the gradients of ``module`` over all ranks (one flattened all_reduce)."""
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        if self.world == 1 or not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        """The mean of ``values`` over all ranks (in place)."""
        if self.world > 1:
            dist.all_reduce(values)
            values /= self.world
        return values

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def gather_same(self, value: str, what: str) -> list[str]:
        """Every rank's ``value``; ``RuntimeError`` naming ``what`` when they differ."""
        if self.world == 1:
            return [value]
        gathered: list[Any] = [None] * self.world
        dist.all_gather_object(gathered, value)
        values = [str(v) for v in gathered]
        if len(set(values)) != 1:
            raise RuntimeError(f"{what}: ranks ended with different generator weights: {values}")
        return values
