"""Training data: memory-mapped normalised slices and a seeded batch sampler.

Layout written by the ``normalize`` step::

    norm_dir/<split>/T1.npy   float (N, S, S)  normalised T1-w slices
    norm_dir/<split>/T2.npy   float (N, S, S)  normalised T2-w slices, same slice order
    norm_dir/<split>/T1C.npy  float (N, S, S)  normalised T1C (the target), same slice order

Arrays are opened with ``np.load(mmap_mode="r")``: only the slices of the current batch are
read, so memory does not grow with the cohort.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from vce.config import MODALITIES
from vce.io.errors import VCEInputError

__all__ = ["TARGET", "SliceDataset", "SeededBatchSampler", "check_split"]

TARGET = "T1C"


def _open(path: Path) -> np.ndarray:
    if not path.is_file():
        raise VCEInputError(f"missing input file {path} (expected an (N, S, S) float array from the normalize step)")
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - any read error is a bad input file
        raise VCEInputError(f"{path}: not a readable .npy array: {exc}") from exc
    if arr.ndim != 3 or arr.shape[1] != arr.shape[2]:
        raise VCEInputError(f"{path}: expected an (N, S, S) array of square slices, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise VCEInputError(f"{path}: expected a floating-point array, got dtype {arr.dtype}")
    if arr.shape[0] == 0:
        raise VCEInputError(f"{path}: contains no slices")
    return arr


def check_split(norm_dir: str | Path, split: str, modalities: Sequence[str]) -> dict[str, np.ndarray]:
    """Open ``<modalities> + T1C`` of one split (memory-mapped) and check they match.

    Raises :class:`VCEInputError` naming the file that is missing, unreadable, not ``(N, S, S)``
    floating point, or whose shape differs from the target's.
    """
    unknown = [m for m in modalities if m not in MODALITIES]
    if unknown or not modalities:
        raise ValueError(f"modalities must be a non-empty subset of {MODALITIES}, got {list(modalities)}")
    split_dir = Path(norm_dir) / split
    if not split_dir.is_dir():
        raise VCEInputError(f"missing split directory {split_dir} (run the normalize step first)")
    arrays = {name: _open(split_dir / f"{name}.npy") for name in (*modalities, TARGET)}
    ref = arrays[TARGET].shape
    for name, arr in arrays.items():
        if arr.shape != ref:
            raise VCEInputError(
                f"{split_dir / f'{name}.npy'}: shape {arr.shape} differs from {split_dir / f'{TARGET}.npy'} shape {ref}"
            )
    return arrays


class SliceDataset:
    """Paired slices of one split: item ``i`` is ``(inputs (C, S, S), target (1, S, S))`` float32 tensors.

    ``modalities`` are stacked in the canonical order (T1 then T2), whatever order is given.
    """

    def __init__(self, norm_dir: str | Path, split: str = "train", modalities: Sequence[str] = MODALITIES) -> None:
        self.modalities = tuple(m for m in MODALITIES if m in modalities)
        if len(self.modalities) != len(tuple(modalities)):
            raise ValueError(f"modalities must be distinct members of {MODALITIES}, got {list(modalities)}")
        self.split_dir = Path(norm_dir) / split
        arrays = check_split(norm_dir, split, self.modalities)
        self._inputs = [arrays[m] for m in self.modalities]
        self._target = arrays[TARGET]

    @property
    def image_size(self) -> int:
        return int(self._target.shape[-1])

    @property
    def n_modalities(self) -> int:
        return len(self.modalities)

    def __len__(self) -> int:
        return int(self._target.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.batch([i])
        return x[0], y[0]

    def batch(self, indices: Sequence[int] | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Gather ``(inputs (B, C, S, S), target (B, 1, S, S))`` for ``indices`` (reads only those slices)."""
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"slice index out of range for {len(self)} slices")
        x = np.stack([np.asarray(a[idx], dtype=np.float32) for a in self._inputs], axis=1)
        y = np.asarray(self._target[idx], dtype=np.float32)[:, None]
        return torch.from_numpy(x), torch.from_numpy(y)


class SeededBatchSampler:
    """Infinite stream of batches of slice indices, reproducible from ``seed``.

    Indices are drawn without replacement within an epoch (a fresh permutation per epoch from a
    ``numpy`` PCG64 generator); a batch may span two epochs, so every batch has ``batch_size``
    entries even when ``n`` is not a multiple (or is smaller) of the batch size.
    """

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        if n < 1 or batch_size < 1:
            raise ValueError(f"need n >= 1 and batch_size >= 1, got n={n}, batch_size={batch_size}")
        self.n = n
        self.batch_size = batch_size
        self.rng = np.random.default_rng(seed)
        self._perm = np.empty(0, dtype=np.int64)

    def next_batch(self) -> np.ndarray:
        while self._perm.size < self.batch_size:
            self._perm = np.concatenate([self._perm, self.rng.permutation(self.n)])
        out, self._perm = self._perm[: self.batch_size], self._perm[self.batch_size :]
        return out

    def __iter__(self) -> Iterator[np.ndarray]:
        while True:
            yield self.next_batch()
