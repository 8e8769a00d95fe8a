"""Similarity between a synthetic slice and its ground truth (paper eq. 4-6).

Inputs are 2D slices in scanner units (12-bit, dynamic range ``L = 4095``). All functions
return plain Python floats. See ``docs/metrics.md`` for the exact conventions.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from skimage.metrics import structural_similarity

#: Dynamic range of 12-bit scanner units (the paper's ``L``).
DATA_RANGE = 4095.0
#: SSIM stabilising constants of eq. 6: ``c1 = (K1 * L)**2``, ``c2 = (K2 * L)**2``.
K1 = 0.01
K2 = 0.03
#: Side of skimage's default uniform SSIM window (used by :func:`ssim`).
SSIM_WINDOW = 7


def _pair(pred: ArrayLike, gt: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(pred, dtype=np.float64)
    g = np.asarray(gt, dtype=np.float64)
    if p.ndim != 2 or g.ndim != 2:
        raise ValueError(f"expected 2D slices, got pred.ndim={p.ndim} and gt.ndim={g.ndim}")
    if p.shape != g.shape:
        raise ValueError(f"pred and gt differ in shape: {p.shape} vs {g.shape}")
    if p.size == 0:
        raise ValueError("empty slice (no pixels)")
    if not (np.isfinite(p).all() and np.isfinite(g).all()):
        raise ValueError("pred/gt contain NaN or infinite values")
    return p, g


def mae(pred: ArrayLike, gt: ArrayLike) -> float:
    """Mean absolute error, eq. 4: ``(1/N) * sum |y - g|`` over all N pixels of the slice."""
    p, g = _pair(pred, gt)
    return float(np.mean(np.abs(p - g)))


def mse(pred: ArrayLike, gt: ArrayLike) -> float:
    """Mean squared error, eq. 5: ``(1/N) * sum (y - g)**2`` over all N pixels of the slice."""
    p, g = _pair(pred, gt)
    return float(np.mean((p - g) ** 2))


def ssim(pred: ArrayLike, gt: ArrayLike, data_range: float = DATA_RANGE) -> float:
    """Mean structural similarity (eq. 6, ``k1=0.01``, ``k2=0.03``, ``L=data_range``).

    Eq. 6 is evaluated locally with skimage's default window -- a 7x7 *uniform* window with
    sample (``N-1``) covariances -- and averaged over the slice (the usual "mean SSIM"), via
    :func:`skimage.metrics.structural_similarity`. Slices must be at least 7x7.
    See :func:`global_ssim` for eq. 6 evaluated once over the whole slice.
    """
    p, g = _pair(pred, gt)
    if min(p.shape) < SSIM_WINDOW:
        raise ValueError(f"ssim needs slices of at least {SSIM_WINDOW}x{SSIM_WINDOW}, got {p.shape}")
    if data_range <= 0:
        raise ValueError(f"data_range must be > 0, got {data_range}")
    return float(
        structural_similarity(p, g, data_range=float(data_range), K1=K1, K2=K2, win_size=SSIM_WINDOW)
    )


def global_ssim(pred: ArrayLike, gt: ArrayLike, data_range: float = DATA_RANGE) -> float:
    """Eq. 6 computed exactly as printed, once over the whole slice (reference value).

    ``mu``, ``sigma^2`` and the covariance are population statistics (divide by N) over all
    pixels; ``c1 = (0.01 L)^2``, ``c2 = (0.03 L)^2`` with ``L = data_range``.
    """
    p, g = _pair(pred, gt)
    if data_range <= 0:
        raise ValueError(f"data_range must be > 0, got {data_range}")
    c1 = (K1 * data_range) ** 2
    c2 = (K2 * data_range) ** 2
    mu_p, mu_g = p.mean(), g.mean()
    var_p, var_g = p.var(), g.var()
    cov = np.mean((p - mu_p) * (g - mu_g))
    num = (2 * mu_p * mu_g + c1) * (2 * cov + c2)
    den = (mu_p**2 + mu_g**2 + c1) * (var_p + var_g + c2)
    return float(num / den)
