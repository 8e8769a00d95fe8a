"""2D axial slices of a registered volume, square-padded and resized, and the exact way back.

A (y, x) slice is zero-padded to a centred square (aspect preserved, never stretched), then
resized to ``size x size`` with linear interpolation. :class:`SliceGeometry` records what is
needed to map a predicted ``size x size`` slice back onto the original T2 grid.

Which slices a patient contributes (:func:`kept_slices`, the one rule used by ``split`` and by
``predict``): the T2 body (:func:`body_mask`) covers at least ``min_body_fraction`` of the slice,
and every modality covers that body: after registration a moving scan is exactly 0 outside its
own field of view, so a slice where more than ``max_fov_missing`` of the body pixels are exactly
0 in some modality is left out (it would teach or score a T1C the inputs cannot show).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from skimage.transform import resize


@dataclass(frozen=True)
class SliceGeometry:
    """How the slices of one volume were made. Shapes are (y, x) in voxels."""

    in_shape: tuple[int, int]
    square: int
    pad_y: tuple[int, int]
    pad_x: tuple[int, int]
    size: int

    @classmethod
    def for_shape(cls, in_shape: tuple[int, int], size: int) -> "SliceGeometry":
        ny, nx = int(in_shape[0]), int(in_shape[1])
        sq = max(ny, nx)
        py, px = sq - ny, sq - nx
        return cls((ny, nx), sq, (py // 2, py - py // 2), (px // 2, px - px // 2), int(size))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "SliceGeometry":
        return cls(tuple(d["in_shape"]), int(d["square"]), tuple(d["pad_y"]), tuple(d["pad_x"]), int(d["size"]))


def to_square(volume: np.ndarray, geom: SliceGeometry, order: int = 1) -> np.ndarray:
    """(z, y, x) volume -> (z, size, size) float32 slices (pad then resize)."""
    v = np.pad(np.asarray(volume, dtype=np.float32), ((0, 0), geom.pad_y, geom.pad_x))
    if geom.square == geom.size:
        return v
    out = resize(v, (v.shape[0], geom.size, geom.size), order=order, mode="edge", anti_aliasing=False, preserve_range=True)
    return out.astype(np.float32)


def from_square(slices: np.ndarray, geom: SliceGeometry, order: int = 1) -> np.ndarray:
    """(z, size, size) slices -> (z, y, x) on the original grid (inverse of :func:`to_square`)."""
    v = np.asarray(slices, dtype=np.float32)
    if geom.square != geom.size:
        v = resize(v, (v.shape[0], geom.square, geom.square), order=order, mode="edge", anti_aliasing=False, preserve_range=True)
    ny, nx = geom.in_shape
    return v[:, geom.pad_y[0] : geom.pad_y[0] + ny, geom.pad_x[0] : geom.pad_x[0] + nx].astype(np.float32)


def body_mask(t2: np.ndarray) -> np.ndarray:
    """Foreground (head) of a T2 array: voxels above 10% of its 99th percentile."""
    return t2 > 0.1 * float(np.percentile(t2, 99))


def content_slices(t2: np.ndarray, min_body_fraction: float) -> np.ndarray:
    """Indices z of the (z, y, x) T2's slices whose :func:`body_mask` covers enough of the slice."""
    body = body_mask(t2)
    return np.flatnonzero(body.reshape(len(body), -1).mean(axis=1) >= min_body_fraction)


def fov_missing(volume: np.ndarray, body: np.ndarray) -> np.ndarray:
    """Per slice z, the fraction (0-1) of the ``body`` (z, y, x) bool pixels where the (z, y, x)
    ``volume`` is exactly 0 (outside a registered scan's field of view); 0 for a slice without body."""
    per_slice = (len(body), int(np.prod(body.shape[1:])))  # explicit: reshape(0, -1) is ambiguous (no slice)
    n_body = body.reshape(per_slice).sum(axis=1)
    n_zero = ((np.asarray(volume) == 0) & body).reshape(per_slice).sum(axis=1)
    return n_zero / np.maximum(n_body, 1)


def kept_slices(
    volumes: dict[str, np.ndarray], min_body_fraction: float, max_fov_missing: float
) -> tuple[np.ndarray, int]:
    """The slices a patient contributes, and how many the field-of-view rule left out.

    ``volumes`` maps modality -> (z, y, x) array on the T2 grid and must hold ``"T2"``; the rule is
    applied to every modality given (split: T1, T2, T1C; predict: T1, T2). A slice z is kept when
    :func:`content_slices` keeps it and, for every modality, :func:`fov_missing` <= ``max_fov_missing``.
    Returns (kept z indices (ascending, int), number of content slices excluded by the FOV rule).
    """
    t2 = volumes["T2"]
    for m, v in volumes.items():
        if v.shape != t2.shape:
            raise ValueError(f"{m} shape {v.shape} differs from T2 shape {t2.shape}")
    z = content_slices(t2, min_body_fraction)
    body = body_mask(t2)[z]
    ok = np.ones(len(z), dtype=bool)
    for v in volumes.values():
        ok &= fov_missing(v[z], body) <= max_fov_missing
    return z[ok], int((~ok).sum())
