"""Learnability reference: how much of the tumour's enhancement T1 and T2 predict, without deep learning.

A low score of the deep model means little without knowing what is predictable at all on this
cohort. This module gives two reference numbers, both computed only from data the model sees
(z-scored T1 and T2), plus the ceiling from the ground-truth T1C:

1. **Input separability** (:func:`input_auc`, per patient). The AUC of telling tumour voxels
   from the voxels of a ring around the tumour by T1 intensity alone and by T2 intensity alone,
   reported direction-free as ``max(AUC, 1 - AUC)`` (0.5 = indistinguishable, 1 = perfectly
   separable by a threshold). ``auc_t1c`` is the same for the ground-truth T1C: how separable
   the enhancement is *after* contrast, the ceiling the inputs are read against. The AUC is
   rank-based (Mann-Whitney U / (n_tumour * n_ring), ties counted half), so it is invariant to
   any monotone intensity transform, z-scoring included.

2. **Voxelwise regressor** (:class:`VoxelRegressor`). A gradient-boosted tree model mapping the
   local T1/T2 neighbourhood of each voxel to its z-scored T1C:

   * features (:data:`FEATURES`, 2 x 6 = 12), for each of z-scored T1 and T2: intensity, local
     mean and local standard deviation over 3x3 and 7x7 in-plane windows
     (``scipy.ndimage.uniform_filter``, size ``(1, k, k)``, mode ``"reflect"``) and the Sobel
     gradient magnitude (in-plane 3x3 kernels of :mod:`vce.metrics.texture`, mode ``"reflect"``);
     every feature is computed within one slice (no information across slices);
   * model: ``sklearn.ensemble.HistGradientBoostingRegressor`` (squared error, ``max_iter=100``,
     ``learning_rate=0.1``, 31 leaves, ``early_stopping=False``, ``random_state=seed``, one OpenMP
     thread by default), so a fit is deterministic for a seed;
   * training set: the TRAIN slices only (:func:`fit_from_store`; never a test patient), a
     seeded random subsample of at most ``max_voxels`` body voxels, drawn without replacement.
     No oversampling of the tumour: when the tumour mask is given the sample is stratified so
     that tumour voxels make up the same fraction of the sample as of the body (rounded), i.e.
     they are included exactly in proportion, not by chance;
   * prediction: z-scored T1C for every pixel (outside the body too), float32.

   The regressor is a **reference for what is predictable from T1/T2 voxel neighbourhoods**
   (at most 7x7 pixels in-plane), not a competitor: a deep model sees the whole slice (context,
   anatomy, shape) and could do better. Read the model's enhancement scores against it: a model
   below the reference misses information that is locally present; a reference near "no
   enhancement" (predicted tumour/ring ratio near 1, input AUC near 0.5) says the enhancement is
   hardly predictable from the inputs' local appearance at all. The 7x7 windows also see the
   body edge, so weak position cues ("tumours are not next to the skull") can be learnt; that
   is information the deep model has as well.

Store layout used by :func:`fit_from_store` (see :mod:`vce.prep.split` and
:mod:`vce.prep.normalization`): ``<normalized>/zscore/<split>/{T1,T2,T1C}.npy`` (N, S, S) float32
and ``index.csv``; the masks ``body.npy`` and ``tumor.npy`` (N, S, S) uint8 are only in the slice
store ``<split_dir>/<split>/``, in the same row order (checked via both ``index.csv``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.stats import rankdata
from sklearn.ensemble import HistGradientBoostingRegressor
from threadpoolctl import threadpool_limits

from .io.errors import VCEInputError
from .metrics.texture import SOBEL_X, SOBEL_Y

logger = logging.getLogger(__name__)

#: Input channels of ``x`` (N, 2, S, S), in this order.
CHANNELS = ("T1", "T2")
#: Per-channel features, in the column order of :func:`voxel_features`.
CHANNEL_FEATURES = ("intensity", "mean3", "std3", "mean7", "std7", "sobel")
#: All 12 feature names, channel-major: ``T1_intensity, T1_mean3, ..., T2_sobel``.
FEATURES = tuple(f"{c}_{f}" for c in CHANNELS for f in CHANNEL_FEATURES)
#: Slices per chunk are chosen so that a chunk holds about this many pixels (bounds memory).
_CHUNK_PIXELS = 1 << 20


# ---------------------------------------------------------------------------- input separability


def _auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Direction-free rank AUC ``max(A, 1 - A)`` of ``pos`` vs ``neg`` (NaN if either is empty)."""
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    ranks = rankdata(np.concatenate([pos, neg]).astype(np.float64))
    a = (ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2.0) / (pos.size * neg.size)
    return float(max(a, 1.0 - a))


def input_auc(
    t1: np.ndarray, t2: np.ndarray, tumour: np.ndarray, ring: np.ndarray, t1c: np.ndarray | None = None
) -> dict[str, float]:
    """Per-patient separability of tumour vs ring voxels by single-modality intensity.

    ``t1``, ``t2``, ``t1c``: one patient's (Z, H, W) intensities (any monotone unit: scanner or
    z-scored give the same AUC); ``tumour``, ``ring``: (Z, H, W) masks (cast to bool). Ring
    voxels that are also tumour count as tumour only. Returns ``auc_t1``, ``auc_t2`` and
    ``auc_t1c`` (NaN when ``t1c`` is not given), each ``max(AUC, 1 - AUC)`` in [0.5, 1], NaN
    when the tumour or the ring is empty. Raises ``ValueError`` on a shape mismatch, non-3D
    input or non-finite intensities inside the masks.
    """
    tumour = np.asarray(tumour, dtype=bool)
    ring = np.asarray(ring, dtype=bool) & ~tumour
    images = {"t1": t1, "t2": t2, "t1c": t1c}
    out: dict[str, float] = {}
    for name, img in images.items():
        if img is None:
            out[f"auc_{name}"] = float("nan")
            continue
        img = np.asarray(img)
        if img.ndim != 3 or img.shape != tumour.shape or img.shape != ring.shape:
            raise ValueError(
                f"input_auc: {name} {img.shape}, tumour {tumour.shape} and ring {ring.shape} must be equal (Z, H, W) shapes"
            )
        pos, neg = img[tumour], img[ring]
        if not (np.isfinite(pos).all() and np.isfinite(neg).all()):
            raise ValueError(f"input_auc: {name} has non-finite values inside the tumour or ring")
        out[f"auc_{name}"] = _auc(pos, neg)
    return out


# ---------------------------------------------------------------------------- features


def _channel_features(c: np.ndarray) -> list[np.ndarray]:
    """The 6 :data:`CHANNEL_FEATURES` of one channel ``c`` (n, S, S) float64, each (n, S, S)."""
    feats = [c]
    for k in (3, 7):
        m = ndimage.uniform_filter(c, size=(1, k, k), mode="reflect")
        m2 = ndimage.uniform_filter(c * c, size=(1, k, k), mode="reflect")
        feats += [m, np.sqrt(np.maximum(m2 - m * m, 0.0))]
    gx = ndimage.correlate(c, SOBEL_X[None], mode="reflect")
    gy = ndimage.correlate(c, SOBEL_Y[None], mode="reflect")
    feats.append(np.hypot(gx, gy))
    return feats


def voxel_features(t1: np.ndarray, t2: np.ndarray) -> np.ndarray:
    """The 12 :data:`FEATURES` of every pixel: (n, S, S) z-scored T1, T2 -> (n, S, S, 12) float32.

    All filters are in-plane (per slice), so any subset of slices gives the same features.
    """
    t1 = np.asarray(t1, dtype=np.float64)
    t2 = np.asarray(t2, dtype=np.float64)
    if t1.ndim != 3 or t1.shape != t2.shape:
        raise ValueError(f"voxel_features: T1 {t1.shape} and T2 {t2.shape} must be equal (n, S, S) shapes")
    return np.stack(_channel_features(t1) + _channel_features(t2), axis=-1).astype(np.float32)


def _chunks(n: int, hw: int) -> list[slice]:
    """Consecutive slice ranges of about :data:`_CHUNK_PIXELS` pixels covering ``range(n)``."""
    step = max(1, _CHUNK_PIXELS // max(hw, 1))
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


# ---------------------------------------------------------------------------- sampling


def _sample_mask(mask: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted flat indices (into ``mask.ravel()``) of ``k`` distinct random True voxels of ``mask`` (N, S, S).

    Draws ``k`` ranks among the True voxels, then maps them slice by slice, so memory grows
    with ``k`` and one slice, not with the whole store.
    """
    counts = mask.reshape(mask.shape[0], -1).sum(axis=1)
    total = int(counts.sum())
    if k >= total:
        return np.flatnonzero(mask)
    ranks = np.sort(rng.choice(total, size=k, replace=False))
    ends = np.cumsum(counts)
    slices = np.searchsorted(ends, ranks, side="right")
    hw = mask[0].size
    out = np.empty(k, dtype=np.int64)
    uniq, first = np.unique(slices, return_index=True)
    for s, a, b in zip(uniq, first, [*first[1:], k]):
        nz = np.flatnonzero(mask[s])
        out[a:b] = s * hw + nz[ranks[a:b] - (ends[s] - counts[s])]
    return out


def sample_voxels(body: np.ndarray, tumour: np.ndarray | None, max_voxels: int, seed: int) -> np.ndarray:
    """Seeded subsample of body voxels: sorted flat indices into (N, S, S), at most ``max_voxels``.

    Without ``tumour``: uniform without replacement. With it: stratified, so the tumour share of
    the sample equals ``|body & tumour| / |body|`` (rounded); no oversampling.
    """
    body = np.asarray(body, dtype=bool)
    n_body = int(body.sum())
    k = min(int(max_voxels), n_body)
    rng = np.random.default_rng(seed)
    if tumour is None:
        return _sample_mask(body, k, rng)
    tum = body & np.asarray(tumour, dtype=bool)
    k_t = int(round(k * tum.sum() / n_body)) if n_body else 0
    idx = np.concatenate([_sample_mask(tum, k_t, rng), _sample_mask(body & ~tum, k - k_t, rng)])
    return np.sort(idx)


# ---------------------------------------------------------------------------- regressor


class _StackView:
    """Lazy (N, 2, S, S) view of two memory-mapped (N, S, S) arrays; supports ``v[rows, c]``."""

    def __init__(self, t1: np.ndarray, t2: np.ndarray):
        self._c, self.shape, self.ndim = (t1, t2), (t1.shape[0], 2, *t1.shape[1:]), 4

    def __getitem__(self, key: tuple[slice, int]) -> np.ndarray:
        rows, c = key
        return np.asarray(self._c[c][rows])


def _check_stack(x: np.ndarray, what: str) -> np.ndarray:
    """``x`` as an (N, 2, S, S) array (memmaps and store views stay lazy), else ``ValueError``."""
    if not isinstance(x, (np.ndarray, _StackView)):
        x = np.asarray(x)
    if x.ndim != 4 or x.shape[1] != len(CHANNELS):
        raise ValueError(f"{what}: x must be (N, 2, S, S) with channels {CHANNELS}, got {x.shape}")
    return x


@dataclass
class VoxelRegressor:
    """Gradient-boosted voxelwise regressor z-scored (T1, T2) neighbourhood -> z-scored T1C.

    See the module docstring for the features, model and training set. After :meth:`fit`:
    ``n_threads``: OpenMP threads of the tree model (None: sklearn's default, all cores; 1 by
    default because on oversubscribed shared cores 2 spinning threads were ~10x slower than 1).
    ``n_train_voxels``, ``tumour_fraction`` (share of tumour voxels in the training sample, NaN
    without a tumour mask), ``fit_seconds`` and (via :func:`fit_from_store`) ``train_patients``.
    """

    seed: int = 0
    max_voxels: int = 200_000
    max_iter: int = 100
    learning_rate: float = 0.1
    max_leaf_nodes: int = 31
    n_threads: int | None = 1
    n_train_voxels: int = 0
    tumour_fraction: float = float("nan")
    fit_seconds: float = float("nan")
    train_patients: tuple[str, ...] = ()
    model: HistGradientBoostingRegressor | None = field(default=None, repr=False)

    def _new_model(self) -> HistGradientBoostingRegressor:
        return HistGradientBoostingRegressor(
            loss="squared_error", max_iter=self.max_iter, learning_rate=self.learning_rate,
            max_leaf_nodes=self.max_leaf_nodes, early_stopping=False, random_state=self.seed,
        )

    def _training_set(self, x: np.ndarray, y: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Features (n, 12) and targets (n,) of the flat voxel indices ``idx`` (chunked by slices)."""
        n, _, s1, s2 = x.shape
        hw = s1 * s2
        feats, targets = [], []
        for ch in _chunks(n, hw):
            lo, hi = np.searchsorted(idx, [ch.start * hw, ch.stop * hw])
            if hi == lo:
                continue
            local = idx[lo:hi] - ch.start * hw
            feats.append(voxel_features(x[ch, 0], x[ch, 1]).reshape(-1, len(FEATURES))[local])
            targets.append(np.asarray(y[ch], dtype=np.float64).reshape(-1)[local])
        return np.concatenate(feats), np.concatenate(targets)

    def fit(
        self, x: np.ndarray, y: np.ndarray, body: np.ndarray, seed: int | None = None,
        max_voxels: int | None = None, tumour: np.ndarray | None = None,
    ) -> VoxelRegressor:
        """Fit on a seeded subsample of body voxels; returns ``self``.

        ``x``: (N, 2, S, S) z-scored (T1, T2); ``y``: (N, S, S) z-scored T1C; ``body``,
        ``tumour`` (optional, for the proportional stratification): (N, S, S) masks. ``seed`` and
        ``max_voxels`` override the fields when given. Raises ``ValueError`` on shape mismatch,
        an empty body or non-finite targets at the sampled voxels.
        """
        t0 = time.perf_counter()
        x = _check_stack(x, "VoxelRegressor.fit")
        grid = (x.shape[0], *x.shape[2:])
        for name, a in (("y", y), ("body", body), ("tumour", tumour)):
            if a is not None and np.shape(a) != grid:
                raise ValueError(f"VoxelRegressor.fit: {name} must be {grid} to match x {x.shape}, got {np.shape(a)}")
        self.seed = self.seed if seed is None else int(seed)
        self.max_voxels = self.max_voxels if max_voxels is None else int(max_voxels)
        idx = sample_voxels(body, tumour, self.max_voxels, self.seed)
        if idx.size == 0:
            raise ValueError("VoxelRegressor.fit: the body mask is empty")
        feats, target = self._training_set(x, y, idx)
        if not (np.isfinite(target).all() and np.isfinite(feats).all()):
            raise ValueError("VoxelRegressor.fit: non-finite inputs or targets at the sampled body voxels")
        with threadpool_limits(limits=self.n_threads, user_api="openmp"):
            self.model = self._new_model().fit(feats, target)
        self.n_train_voxels = int(idx.size)
        in_tumour = np.asarray(tumour, dtype=bool).ravel()[idx] if tumour is not None else np.array([np.nan])
        self.tumour_fraction = float(in_tumour.mean())
        self.fit_seconds = time.perf_counter() - t0
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Predicted z-scored T1C (N, S, S) float32 for every pixel of ``x`` (N, 2, S, S) z-scored (T1, T2)."""
        if self.model is None:
            raise RuntimeError("VoxelRegressor.predict: call fit first")
        x = _check_stack(x, "VoxelRegressor.predict")
        n, _, s1, s2 = x.shape
        out = np.empty((n, s1, s2), dtype=np.float32)
        with threadpool_limits(limits=self.n_threads, user_api="openmp"):
            for ch in _chunks(n, s1 * s2):
                f = voxel_features(x[ch, 0], x[ch, 1]).reshape(-1, len(FEATURES))
                out[ch] = self.model.predict(f).reshape(-1, s1, s2)
        return out


# ---------------------------------------------------------------------------- stores


def _store_paths(normalized_dir: Path, split_dir: Path, split: str) -> tuple[Path, Path]:
    """``<normalized>/zscore/<split>`` and ``<split_dir>/<split>``, checked for their files and equal index.csv."""
    zdir, mdir = Path(normalized_dir) / "zscore" / split, Path(split_dir) / split
    needed = [zdir / f for f in ("T1.npy", "T2.npy", "T1C.npy", "index.csv")]
    for f in needed + [mdir / f for f in ("body.npy", "tumor.npy", "index.csv")]:
        if not f.is_file():
            raise VCEInputError(f"{f}: missing (run `vce split` and `vce normalize` first)")
    zi, mi = pd.read_csv(zdir / "index.csv"), pd.read_csv(mdir / "index.csv")
    if not zi[["patient", "z"]].equals(mi[["patient", "z"]]):
        raise VCEInputError(
            f"{zdir / 'index.csv'} and {mdir / 'index.csv'} list different slices: rerun `vce normalize`"
        )
    return zdir, mdir


def load_store_inputs(
    normalized_dir: str | Path, split_dir: str | Path, split: str = "test"
) -> tuple[np.ndarray, pd.DataFrame]:
    """The z-scored (T1, T2) stack (N, 2, S, S) float32 of one split and its index (patient, z)."""
    zdir, _ = _store_paths(Path(normalized_dir), Path(split_dir), split)
    x = np.stack([np.load(zdir / f"{m}.npy") for m in CHANNELS], axis=1)
    return x, pd.read_csv(zdir / "index.csv")


def fit_from_store(
    normalized_dir: str | Path, split_dir: str | Path, seed: int = 0, max_voxels: int = 200_000, **params: float
) -> VoxelRegressor:
    """Fit a :class:`VoxelRegressor` on the TRAIN slices only (never a test patient).

    Inputs: ``<normalized>/zscore/train/{T1,T2}.npy`` (channels in that order), target
    ``<normalized>/zscore/train/T1C.npy``, masks ``<split_dir>/train/{body,tumor}.npy`` (tumour
    for the proportional sample). The arrays are memory-mapped and read one chunk of slices at a
    time. ``params``: other :class:`VoxelRegressor` fields (``max_iter``, ...).
    """
    zdir, mdir = _store_paths(Path(normalized_dir), Path(split_dir), "train")
    t1, t2, t1c = (np.load(zdir / f"{m}.npy", mmap_mode="r") for m in (*CHANNELS, "T1C"))
    body, tumour = (np.load(mdir / f"{m}.npy").astype(bool) for m in ("body", "tumor"))
    reg = VoxelRegressor(seed=seed, max_voxels=max_voxels, **params)
    reg.fit(_StackView(t1, t2), t1c, body, tumour=tumour)  # type: ignore[arg-type]
    reg.train_patients = tuple(sorted(pd.read_csv(zdir / "index.csv").patient.astype(str).unique()))
    logger.info(
        "learnability regressor: %d train voxels (tumour %.2f%%) from %d train patients, fit in %.1f s",
        reg.n_train_voxels, 100 * reg.tumour_fraction, len(reg.train_patients), reg.fit_seconds,
    )
    return reg
