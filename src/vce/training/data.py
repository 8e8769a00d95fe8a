"""Training data: memory-mapped normalised slices and a seeded batch sampler.

Layout written by the ``normalize`` step::

    norm_dir/<split>/T1.npy   float (N, S, S)  normalised T1-w slices
    norm_dir/<split>/T2.npy   float (N, S, S)  normalised T2-w slices, same slice order
    norm_dir/<split>/T1C.npy  float (N, S, S)  normalised T1C (the target), same slice order

    norm_dir/<split>/index.csv  patient, z  one row per slice (needed only for validation hold-out)

Arrays are opened with ``np.load(mmap_mode="r")``: only the slices of the current batch are
read, so memory does not grow with the cohort.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from vce.config import MODALITIES
from vce.io.errors import VCEInputError, npy_error

__all__ = ["TARGET", "SliceDataset", "SeededBatchSampler", "check_split", "holdout_patients", "training_sets"]

TARGET = "T1C"


def _open(path: Path) -> np.ndarray:
    if not path.is_file():
        raise VCEInputError(f"missing input file {path} (expected an (N, S, S) float array from the normalize step)")
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - any read error is a bad input file; an object array is never unpickled
        raise npy_error(path, exc) from None
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
    ``rows``: optional subset of the store's slice rows (e.g. the training or validation
    patients); item ``i`` is then store row ``rows[i]``.
    """

    def __init__(
        self,
        norm_dir: str | Path,
        split: str = "train",
        modalities: Sequence[str] = MODALITIES,
        rows: Sequence[int] | np.ndarray | None = None,
    ) -> None:
        self.modalities = tuple(m for m in MODALITIES if m in modalities)
        if len(self.modalities) != len(tuple(modalities)):
            raise ValueError(f"modalities must be distinct members of {MODALITIES}, got {list(modalities)}")
        self.split_dir = Path(norm_dir) / split
        arrays = check_split(norm_dir, split, self.modalities)
        self._inputs = [arrays[m] for m in self.modalities]
        self._target = arrays[TARGET]
        self.rows: np.ndarray | None = None
        if rows is not None:
            r = np.asarray(rows, dtype=np.int64)
            if r.ndim != 1 or r.size == 0 or r.min() < 0 or r.max() >= self._target.shape[0]:
                raise ValueError(f"rows must be a non-empty 1-D selection of [0, {self._target.shape[0]})")
            self.rows = r

    @property
    def image_size(self) -> int:
        return int(self._target.shape[-1])

    @property
    def n_modalities(self) -> int:
        return len(self.modalities)

    def __len__(self) -> int:
        return int(self._target.shape[0]) if self.rows is None else int(self.rows.size)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.batch([i])
        return x[0], y[0]

    def batch(self, indices: Sequence[int] | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Gather ``(inputs (B, C, S, S), target (B, 1, S, S))`` for ``indices`` (reads only those slices)."""
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"slice index out of range for {len(self)} slices")
        if self.rows is not None:
            idx = self.rows[idx]
        x = np.stack([np.asarray(a[idx], dtype=np.float32) for a in self._inputs], axis=1)
        y = np.asarray(self._target[idx], dtype=np.float32)[:, None]
        return torch.from_numpy(x), torch.from_numpy(y)


class SeededBatchSampler:
    """Infinite stream of batches of slice indices, reproducible from ``seed``.

    Indices are drawn without replacement within an epoch (a fresh permutation per epoch from a
    ``numpy`` PCG64 generator); a batch may span two epochs, so every batch has ``batch_size``
    entries even when ``n`` is not a multiple (or is smaller) of the batch size.

    Data-parallel sharding: with ``world_size`` processes every rank draws the same global batch
    of ``batch_size * world_size`` indices (same seed) and keeps its own contiguous part
    ``[rank * batch_size, (rank + 1) * batch_size)``, so ranks see disjoint slices of each global
    batch. ``world_size = 1`` gives exactly the single-process stream.
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        if n < 1 or batch_size < 1:
            raise ValueError(f"need n >= 1 and batch_size >= 1, got n={n}, batch_size={batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.n = n
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.rng = np.random.default_rng(seed)
        self._perm = np.empty(0, dtype=np.int64)

    def next_batch(self) -> np.ndarray:
        total = self.batch_size * self.world_size
        while self._perm.size < total:
            self._perm = np.concatenate([self._perm, self.rng.permutation(self.n)])
        out, self._perm = self._perm[:total], self._perm[total:]
        return out[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]

    def state_dict(self) -> dict[str, object]:
        """Plain-type state (``torch.load(weights_only=True)``-safe): the PCG64 state as decimal
        strings (128-bit integers) and the rest of the current epoch's permutation as a list."""
        st = self.rng.bit_generator.state
        return {
            "bit_generator": st["bit_generator"],
            "state": str(st["state"]["state"]),
            "inc": str(st["state"]["inc"]),
            "has_uint32": int(st["has_uint32"]),
            "uinteger": int(st["uinteger"]),
            "perm": [int(v) for v in self._perm],
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.rng.bit_generator.state = {
            "bit_generator": state["bit_generator"],
            "state": {"state": int(state["state"]), "inc": int(state["inc"])},  # type: ignore[arg-type]
            "has_uint32": int(state["has_uint32"]),  # type: ignore[arg-type]
            "uinteger": int(state["uinteger"]),  # type: ignore[arg-type]
        }
        self._perm = np.asarray(state["perm"], dtype=np.int64)

    def __iter__(self) -> Iterator[np.ndarray]:
        while True:
            yield self.next_batch()


def holdout_patients(
    norm_dir: str | Path, split: str, amount: float, seed: int
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Hold out whole patients of ``split`` (the TRAIN split) for validation.

    ``amount``: a patient count (``>= 1``, integer) or a fraction in ``(0, 1)`` (rounded, at least
    1). Patients come from ``<norm_dir>/<split>/index.csv`` (column ``patient``), chosen by a
    ``numpy`` generator seeded from ``seed``; at least one patient stays for training.
    Returns ``(train_rows, val_rows, val_patients)`` (row indices of the slice store, sorted).
    """
    import pandas as pd

    path = Path(norm_dir) / split / "index.csv"
    if not path.is_file():
        raise VCEInputError(f"missing {path} (patient of every slice; needed to hold out validation patients)")
    try:
        patients = pd.read_csv(path)["patient"].astype(str).to_numpy()
    except Exception as exc:  # noqa: BLE001 - any parse problem is a bad input file
        raise VCEInputError(f"{path}: cannot read a 'patient' column: {exc}") from exc
    unique = sorted(set(patients))
    if 0 < amount < 1:
        k = max(1, int(round(amount * len(unique))))
    elif amount >= 1 and float(amount).is_integer():
        k = int(amount)
    else:
        raise ValueError(f"val_patients must be a count >= 1 or a fraction in (0, 1), got {amount}")
    if k >= len(unique):
        raise VCEInputError(f"{path}: cannot hold out {k} of {len(unique)} training patient(s) for validation")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 2]))
    val = sorted(str(p) for p in rng.choice(unique, size=k, replace=False))
    is_val = np.isin(patients, val)
    return np.flatnonzero(~is_val), np.flatnonzero(is_val), val


def training_sets(
    norm_dir: str | Path, modalities: Sequence[str], val_patients: float, seed: int
) -> tuple[SliceDataset, SliceDataset | None, list[str]]:
    """The TRAIN split of ``norm_dir`` as ``(train, validation or None, validation patients)``.

    With ``val_patients > 0`` whole patients are held out (:func:`holdout_patients`); the
    ``index.csv`` must then have one row per slice of the store.
    """
    if val_patients <= 0:
        return SliceDataset(norm_dir, "train", modalities), None, []
    train_rows, val_rows, val_pids = holdout_patients(norm_dir, "train", val_patients, seed)
    full = SliceDataset(norm_dir, "train", modalities)
    n_index = len(train_rows) + len(val_rows)
    if n_index != len(full):
        raise VCEInputError(
            f"{Path(norm_dir) / 'train' / 'index.csv'}: {n_index} rows but the slice store has {len(full)} slices"
        )
    train = SliceDataset(norm_dir, "train", modalities, rows=train_rows)
    return train, SliceDataset(norm_dir, "train", modalities, rows=val_rows), val_pids
