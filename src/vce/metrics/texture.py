"""Texture (smoothness) indices of a slice, paper eq. 7-10. Smaller = smoother.

Conventions (also in ``docs/metrics.md``):

* Intensities are first divided by ``scale`` (default 4095, the 12-bit range), so values lie
  in about [0, 1]. TMSVPMI, TAVPMI and TFPMI are invariant to that division (numerator and
  ``mu`` scale together); VFPMI (eq. 10) is not -- it scales linearly with the intensity
  unit, and the paper's magnitudes (~0.08) correspond to intensities in about [0, 1].
* ``mu`` is the mean over all H*W pixels of the (scaled) slice; ``mu <= 0`` is an error.
* Forward differences (eq. 1) along axis 0 (rows, ``i``) and axis 1 (columns, ``j``):
  ``dx = I[i+1, j] - I[i, j]``, ``dy = I[i, j+1] - I[i, j]``. Both are defined on the
  (H-1)x(W-1) region ``i < H-1, j < W-1``; eq. 7-8 average over that region ("number of
  pixels" = (H-1)*(W-1)); the last row and column are not padded or extrapolated.
* Sobel (eq. 9): the kernels exactly as printed, applied by ``scipy.ndimage.correlate`` with
  border mode ``"nearest"`` (edge pixel replicated; for a 3x3 kernel identical to
  ``"reflect"``) and averaged over all H*W pixels. Correlation vs. convolution only flips the
  sign of each response, so the gradient magnitude is the same.
* VFPMI averages ``(I - mu)^2`` over all H*W pixels (population variance) and divides by ``mu``.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage

#: Default intensity unit: 12-bit scanner units are divided by this before the indices.
SCALE = 4095.0

#: Sobel kernels exactly as printed under eq. 9.
SOBEL_X = np.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
SOBEL_Y = np.array([[1.0, 2.0, 1.0], [0.0, 0.0, 0.0], [-1.0, -2.0, -1.0]])
#: Border handling of the Sobel filtering.
SOBEL_MODE = "nearest"

TEXTURE_KEYS = ("tmsvpmi", "tavpmi", "tfpmi", "vfpmi")


def _image(img: ArrayLike, scale: float = 1.0) -> tuple[np.ndarray, float]:
    """Validate a 2D slice, divide by ``scale`` and return it with its mean intensity."""
    a = np.asarray(img, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"texture metrics need a 2D slice, got an array with shape {a.shape}")
    if min(a.shape) < 2:
        raise ValueError(f"texture metrics need a slice of at least 2x2 pixels, got {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError("slice contains NaN or infinite values")
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    a = a / float(scale)
    mu = float(a.mean())
    if mu <= 0:
        raise ValueError(
            f"mean intensity of the slice is {mu:.6g} (<= 0): texture indices divide by the mean "
            "intensity and are undefined for an empty (all-zero) or non-positive slice"
        )
    return a, mu


def forward_differences(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 1 on the (H-1)x(W-1) region where both differences exist: ``(dx, dy)``."""
    dx = a[1:, :-1] - a[:-1, :-1]
    dy = a[:-1, 1:] - a[:-1, :-1]
    return dx, dy


def sobel_xy(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Responses ``(Gx, Gy)`` to the paper's Sobel kernels, border mode :data:`SOBEL_MODE`."""
    a = np.asarray(a, dtype=np.float64)
    gx = ndimage.correlate(a, SOBEL_X, mode=SOBEL_MODE)
    gy = ndimage.correlate(a, SOBEL_Y, mode=SOBEL_MODE)
    return gx, gy


def tmsvpmi(img: ArrayLike, scale: float = SCALE) -> float:
    """Total mean square variation per mean intensity, eq. 7: ``mean(sqrt(dx^2+dy^2)) / mu``."""
    return texture_metrics(img, scale)["tmsvpmi"]


def tavpmi(img: ArrayLike, scale: float = SCALE) -> float:
    """Total absolute variation per mean intensity, eq. 8: ``mean(|dx|+|dy|) / mu``."""
    return texture_metrics(img, scale)["tavpmi"]


def tfpmi(img: ArrayLike, scale: float = SCALE) -> float:
    """Tenengrad function per mean intensity, eq. 9: ``mean(sqrt(Gx^2+Gy^2)) / mu``."""
    return texture_metrics(img, scale)["tfpmi"]


def vfpmi(img: ArrayLike, scale: float = SCALE) -> float:
    """Variance function per mean intensity, eq. 10: ``mean((I-mu)^2) / mu`` on ``img/scale``."""
    return texture_metrics(img, scale)["vfpmi"]


def texture_metrics(img: ArrayLike, scale: float = SCALE) -> dict[str, float]:
    """All four indices of eq. 7-10 on ``img / scale``: keys tmsvpmi, tavpmi, tfpmi, vfpmi."""
    a, mu = _image(img, scale)
    dx, dy = forward_differences(a)
    gx, gy = sobel_xy(a)
    return {
        "tmsvpmi": float(np.mean(np.sqrt(dx**2 + dy**2)) / mu),
        "tavpmi": float(np.mean(np.abs(dx) + np.abs(dy)) / mu),
        "tfpmi": float(np.mean(np.sqrt(gx**2 + gy**2)) / mu),
        "vfpmi": float(np.mean((a - mu) ** 2) / mu),
    }
