"""The resumable state of a run: one file, written and read by the pair :func:`save_state` /
:func:`load_state`, with the check that it belongs to this run.

Every ``train.checkpoint_every`` iterations the complete state (G, D, EMA, both Adam optimisers,
GradScaler, torch / CUDA / penalty RNG states, the batch sampler's PCG64 state and pending
permutation, the loss rows and running window, validation rows, best weights, health flags, wall
time) is written atomically to ``<state_dir>/last.pt``; ``state_dir`` defaults to the sibling
``<out_dir>.partial/`` (:func:`default_state_dir`). On CPU a resumed run's final weights are
bit-identical to an uninterrupted run's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from vce.io.atomic import atomic_file
from vce.io.errors import VCEInputError

__all__ = ["STATE_FORMAT", "RESUME_FREE", "RunState", "cpu_state", "default_state_dir", "identity", "save_state", "load_state"]

STATE_FORMAT = 1
#: TrainConfig fields that may differ between an interrupted run and its resumption.
RESUME_FREE = ("iterations", "checkpoint_every", "threads")


def default_state_dir(out_dir: str | Path) -> Path:
    """Where the resumable state lives by default: the sibling ``<out_dir>.partial/``."""
    out_dir = Path(out_dir)
    return out_dir.parent / f"{out_dir.name}.partial"


def cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of ``module``'s state dict."""
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def _no_best() -> dict[str, Any]:
    return {"iteration": 0, "val_norm_mae": math.inf, "generator": None, "discriminator": None}


@dataclass
class RunState:
    """What a run has done beyond its networks: validation rows, the best weights so far (lowest
    validation MAE), the health warnings given, the wall time of earlier processes."""

    val_rows: list[dict[str, float]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=_no_best)
    warned: list[str] = field(default_factory=list)
    wall_before: float = 0.0
    resumed_from: int | None = None

    def state_dict(self, wall_s: float) -> dict[str, Any]:
        return {"val_rows": self.val_rows, "best": self.best, "warned": self.warned, "wall_s": wall_s}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> RunState:
        return cls(val_rows=state["val_rows"], best=state["best"], warned=state["warned"],
                   wall_before=state["wall_s"], resumed_from=state["iteration"])  # fmt: skip


def identity(variant: dict[str, Any], seed: int, train_config: dict[str, Any], world_size: int) -> dict[str, Any]:
    """What must agree between a state and the run that resumes it."""
    return {"variant": variant, "seed": seed, "train_config": train_config, "world_size": world_size}


def save_state(path: Path, iteration: int, ident: dict[str, Any], parts: dict[str, Any]) -> Path:
    """Write ``{format_version, iteration, **ident, **parts}`` atomically to ``path``."""
    state = {"format_version": STATE_FORMAT, "iteration": iteration, **ident, **parts}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        torch.save(state, tmp)
    return path


def _remedy(path: Path) -> str:
    """What to do about a state that cannot be resumed (appended to every refusal of :func:`load_state`)."""
    return (f"; delete it (rm {path}) to start from scratch, or run without --resume "
            "(which deletes it and starts from scratch)")


def load_state(path: Path, ident: dict[str, Any], iterations: int) -> dict[str, Any]:
    """Read a state written by :func:`save_state` with ``torch.load(weights_only=True)`` (a pickle
    payload is refused, never run: :func:`vce.models.checkpoint.load_weights_only`).

    :class:`VCEInputError` naming the file, and saying how to start fresh, when it is truncated,
    corrupt or malicious, not a state of this format, comes from another run (variant, seed,
    train config except :data:`RESUME_FREE`, world size) or is already at or past ``iterations``."""
    from vce.models.checkpoint import load_weights_only

    st = load_weights_only(path, "resumable training state", _remedy(path))
    if not isinstance(st, dict) or not isinstance(st.get("iteration"), int):
        raise VCEInputError(f"{path}: not a loadable resumable training state (no iteration count){_remedy(path)}")
    if st.get("format_version") != STATE_FORMAT:
        raise VCEInputError(f"{path}: resumable state of format {st.get('format_version')!r}, this version reads "
                            f"{STATE_FORMAT}{_remedy(path)}")
    mismatch = [k.replace("_", " ") for k in ident if _comparable(k, st.get(k)) != _comparable(k, ident[k])]
    if mismatch:
        raise VCEInputError(f"{path}: cannot resume, the {', '.join(mismatch)} differ(s) from this run{_remedy(path)}")
    if st["iteration"] >= iterations:
        raise VCEInputError(f"{path}: state is at iteration {st['iteration']} >= iterations {iterations}{_remedy(path)}")
    return st


def _comparable(key: str, value: Any) -> Any:
    if key == "train_config" and isinstance(value, dict):
        return {k: v for k, v in value.items() if k not in RESUME_FREE}
    return value
