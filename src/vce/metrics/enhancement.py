"""Does the synthetic T1C enhance the tumour the way the real one does? Per patient.

All images are ``(Z, H, W)`` volumes of one patient's scored slices in scanner units, all masks
``(Z, H, W)`` bool. Regions are built slice by slice (in-plane only, never across slices). The
definitions are in ``docs/metrics.md``, section "Regions, batched metrics, enhancement".
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage

#: In-plane 4-connected cross, one slice thick: ``px`` dilations by it reach the pixels within
#: city-block (L1) distance ``px`` in the same slice.
CROSS = ndimage.generate_binary_structure(2, 1)[None]

#: Keys of :func:`patient_enhancement`, in column order.
ENHANCEMENT_KEYS = (
    "enh_ratio_wm",
    "enh_ratio_ring",
    "gt_enh_ratio_wm",
    "gt_enh_ratio_ring",
    "enh_ratio_relerr",
    "enh_excess_relerr",
    "enh_dice",
    "mae_tumour",
    "n_tumour_voxels",
)


def _volume_mask(mask: ArrayLike, name: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """``mask`` as a ``(Z, H, W)`` bool array (0/1 integers accepted), of ``shape`` if given."""
    m = np.asarray(mask)
    if m.ndim != 3:
        raise ValueError(f"{name}: expected a (Z, H, W) mask, got an array with shape {m.shape}")
    if shape is not None and m.shape != tuple(shape):
        raise ValueError(f"{name} has shape {m.shape}, expected {tuple(shape)}")
    if m.dtype != bool:
        if not np.isin(m, (0, 1)).all():
            raise ValueError(f"{name} must be boolean (or 0/1), got dtype {m.dtype} with other values")
        m = m.astype(bool)
    return m


def _volume(img: ArrayLike, name: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """``img`` as a finite float64 ``(Z, H, W)`` volume, of ``shape`` if given."""
    a = np.asarray(img, dtype=np.float64)
    if a.ndim != 3:
        raise ValueError(f"{name}: expected a (Z, H, W) volume, got an array with shape {a.shape}")
    if shape is not None and a.shape != tuple(shape):
        raise ValueError(f"{name} has shape {a.shape}, expected {tuple(shape)}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return a


def dilate(mask: ArrayLike, px: int) -> np.ndarray:
    """In-plane dilation of a ``(Z, H, W)`` mask by ``px`` pixels (:data:`CROSS` iterated ``px`` times)."""
    m = _volume_mask(mask, "mask")
    if int(px) != px or px < 0:
        raise ValueError(f"px must be an integer >= 0, got {px}")
    if px == 0:
        return m.copy()
    return ndimage.binary_dilation(m, structure=CROSS, iterations=int(px))


def ring(tumour: ArrayLike, px: int, body: ArrayLike | None = None) -> np.ndarray:
    """The tumour's surroundings: :func:`dilate` ``(tumour, px)`` minus the tumour, within ``body``.

    Args:
        tumour: ``(Z, H, W)`` bool. px: ring width in pixels (city-block distance, in-plane).
        body: ``(Z, H, W)`` bool or None (no restriction).
    Returns: ``(Z, H, W)`` bool.
    """
    t = _volume_mask(tumour, "tumour")
    out = dilate(t, px) & ~t
    if body is not None:
        out &= _volume_mask(body, "body", t.shape)
    return out


def _mean(img: np.ndarray, region: np.ndarray) -> float:
    return float(img[region].mean()) if region.any() else math.nan


def enhancement_ratio(img: ArrayLike, region: ArrayLike, reference: ArrayLike) -> float:
    """``mean(img[region]) / mean(img[reference])``, pooled over the volume's voxels.

    NaN when either region is empty or the reference mean is <= 0.
    """
    a = _volume(img, "img")
    r = _volume_mask(region, "region", a.shape)
    ref = _volume_mask(reference, "reference", a.shape)
    num, den = _mean(a, r), _mean(a, ref)
    return num / den if den > 0 else math.nan


def enhancing_region(img: ArrayLike, domain: ArrayLike, reference_level: float, threshold: float) -> np.ndarray:
    """Voxels of ``domain`` at least ``threshold`` times ``reference_level``: ``(Z, H, W)`` bool.

    ``domain & (img >= threshold * reference_level)``; a NaN level selects nothing.
    """
    a = _volume(img, "img")
    d = _volume_mask(domain, "domain", a.shape)
    if not math.isfinite(reference_level):
        return np.zeros_like(d)
    return d & (a >= threshold * reference_level)


def dice(a: ArrayLike, b: ArrayLike) -> float:
    """Dice overlap ``2 |a & b| / (|a| + |b|)`` of two masks of the same shape; NaN when both are empty."""
    x, y = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if x.shape != y.shape:
        raise ValueError(f"masks differ in shape: {x.shape} vs {y.shape}")
    total = int(x.sum()) + int(y.sum())
    return 2.0 * int((x & y).sum()) / total if total else math.nan


def _relerr(value: float, truth: float, offset: float = 0.0) -> float:
    """``(value - truth) / (truth - offset)``; NaN when undefined (non-finite or zero denominator)."""
    den = truth - offset
    if not (math.isfinite(value) and math.isfinite(den)) or den == 0:
        return math.nan
    return (value - truth) / den


def _ratios(img: np.ndarray, tumour: np.ndarray, wm: np.ndarray | None, ring_mask: np.ndarray) -> tuple[float, float]:
    """(tumour / white matter, tumour / ring) enhancement ratios of one image."""
    by_wm = math.nan if wm is None else enhancement_ratio(img, tumour, wm)
    return by_wm, enhancement_ratio(img, tumour, ring_mask)


def patient_enhancement(
    pred: ArrayLike,
    gt: ArrayLike,
    tumour: ArrayLike,
    body: ArrayLike,
    wm: ArrayLike | None,
    ring_px: int,
    threshold: float,
) -> dict[str, float]:
    """Enhancement scores of one patient (keys :data:`ENHANCEMENT_KEYS`).

    Args:
        pred, gt: ``(Z, H, W)`` scanner units (synthetic and real T1C).
        tumour, body: ``(Z, H, W)`` bool. wm: normal white matter, ``(Z, H, W)`` bool or None.
        ring_px: width of the ring around the tumour (pixels, in-plane). threshold: ``enh_dice``'s
            enhancement threshold, a multiple of the reference level (e.g. 1.3).
    Returns: ``enh_ratio_wm`` (mean pred in tumour / in ``wm``), ``enh_ratio_ring`` (tumour /
    ring), the same on gt (``gt_``-prefixed), ``enh_ratio_relerr`` = (pred - gt) / gt of the ring
    ratio, ``enh_excess_relerr`` = (pred - gt) / (gt - 1) of the ring ratio (-1 = no enhancement
    at all), ``enh_dice`` (Dice of the enhancing regions of pred and gt in tumour + ring, each
    thresholded at ``threshold`` x its own mean over ``wm``, or over the ring when ``wm`` is None
    or empty),
    ``mae_tumour`` (pooled over the tumour voxels) and ``n_tumour_voxels``. Values are NaN when
    undefined (e.g. no tumour voxel), never an error.
    """
    p = _volume(pred, "pred")
    g = _volume(gt, "gt", p.shape)
    t = _volume_mask(tumour, "tumour", p.shape)
    w = None if wm is None else _volume_mask(wm, "wm", p.shape)
    around = ring(t, ring_px, _volume_mask(body, "body", p.shape))
    pw, pr = _ratios(p, t, w, around)
    gw, gr = _ratios(g, t, w, around)
    domain = t | around
    reference = w if w is not None and w.any() else around
    regions = [enhancing_region(x, domain, _mean(x, reference), threshold) for x in (p, g)]
    n = int(t.sum())
    values = (
        pw, pr, gw, gr,
        _relerr(pr, gr), _relerr(pr, gr, 1.0),
        dice(*regions) if n else math.nan,
        float(np.abs(p[t] - g[t]).mean()) if n else math.nan,
        n,
    )  # fmt: skip
    return dict(zip(ENHANCEMENT_KEYS, values))
