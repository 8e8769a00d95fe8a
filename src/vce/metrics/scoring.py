"""Every score of one patient: per slice and per patient (the evaluation's column contract).

``score_patient`` returns one row per scored slice (columns :data:`SLICE_METRICS`) and the
patient row (keys :data:`PATIENT_METRICS`). Columns computed from the ground truth alone (a
reference or ceiling, not a score of the prediction) are listed in :data:`GT_METRICS`; their
names start with ``gt_`` or ``gtclean_``. Definitions: ``docs/metrics.md``, section "Regions,
batched metrics, enhancement".
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from vce.metrics import batched
from vce.metrics.enhancement import ENHANCEMENT_KEYS, dilate, patient_enhancement
from vce.metrics.similarity import DATA_RANGE
from vce.metrics.texture import TEXTURE_KEYS

#: Width (pixels, in-plane) of the margin around the body that is neither body nor air.
AIR_MARGIN_PX = 2

_TEXTURE_COLUMNS = (*TEXTURE_KEYS, *(f"{k}_body" for k in TEXTURE_KEYS))

#: Columns of the per-slice table, in order.
SLICE_METRICS = (
    "mae",
    "mse",
    "ssim",
    "mae_body",
    "mse_body",
    "ssim_body",
    "mae_tumour_slice",
    *_TEXTURE_COLUMNS,
    *(f"gt_{k}" for k in _TEXTURE_COLUMNS),
    *(f"gtclean_{k}" for k in _TEXTURE_COLUMNS),
    "air_level",
    "air_grad",
    "gt_air_level",
    "gt_air_grad",
    "grad_dir",
    "gt_grad_dir",
)
#: Keys of the patient row, in order: the slice means, the enhancement scores, ``n_slices``.
PATIENT_METRICS = (*SLICE_METRICS, *ENHANCEMENT_KEYS, "n_slices")
#: The columns computed from the ground truth alone (prefix ``gt_`` or ``gtclean_``).
GT_METRICS = tuple(k for k in PATIENT_METRICS if k.startswith(("gt_", "gtclean_")))


def _similarity(p: np.ndarray, g: np.ndarray, body: np.ndarray, tumour: np.ndarray, data_range: float) -> dict:
    """MAE/MSE/SSIM of the whole slice and the body, MAE in the tumour: ``{column: (Z,)}``."""
    smap = batched.ssim_map(p, g, data_range)
    return {
        "mae": batched.mae(p, g),
        "mse": batched.mse(p, g),
        "ssim": batched.region_mean(smap, None),
        "mae_body": batched.mae(p, g, body),
        "mse_body": batched.mse(p, g, body),
        "ssim_body": batched.region_mean(smap, batched.crop_ssim(body)),
        "mae_tumour_slice": batched.mae(p, g, tumour),
    }


def _texture_columns(img: np.ndarray | None, body: np.ndarray, scale: float, prefix: str) -> dict:
    """Texture of the whole slice and in the body (``<prefix><key>[_body]``); NaN if ``img`` is None."""
    if img is None:
        return {f"{prefix}{k}": np.full(body.shape[0], np.nan) for k in _TEXTURE_COLUMNS}
    whole = batched.texture(img, scale)
    inside = batched.texture(img, scale, body)
    return {**{f"{prefix}{k}": v for k, v in whole.items()}, **{f"{prefix}{k}_body": v for k, v in inside.items()}}


def _air_and_edges(
    p: np.ndarray, g: np.ndarray, clean: np.ndarray | None, body: np.ndarray, edge_quantile: float
) -> dict:
    """The hallucination check in the air and the agreement of edge directions: ``{column: (Z,)}``."""
    air = ~dilate(body, AIR_MARGIN_PX)
    ref = g if clean is None else clean
    return {
        "air_level": batched.mean_in(p, air),
        "air_grad": batched.gradient_magnitude(p, air),
        "gt_air_level": batched.mean_in(g, air),
        "gt_air_grad": batched.gradient_magnitude(g, air),
        "grad_dir": batched.direction_agreement(p, ref, body, edge_quantile),
        "gt_grad_dir": (
            np.full(body.shape[0], np.nan) if clean is None else batched.direction_agreement(g, clean, body, edge_quantile)
        ),
    }


def _nanmean(values: np.ndarray) -> float:
    """Mean of the finite entries; NaN (without a warning) when there is none."""
    v = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(v)
    return float(v[ok].mean()) if ok.any() else float("nan")


def _inputs(
    pred: ArrayLike, gt: ArrayLike, body: ArrayLike, tumour: ArrayLike, wm: ArrayLike | None, gt_clean: ArrayLike | None
) -> tuple:
    """Validated float64 images and bool masks, all of the shape of ``pred``."""
    p = batched._stack(pred, "pred", 7)
    shape = p.shape
    g = batched._pair(p, gt, 7)[1]
    clean = None if gt_clean is None else batched._pair(p, gt_clean, 7)[1]
    b = batched._mask(body, shape, "body")
    t = batched._mask(tumour, shape, "tumour")
    w = batched._mask(wm, shape, "wm")
    if b is None or t is None:
        raise ValueError("score_patient needs the body and tumour masks (use an all-False tumour mask for none)")
    return p, g, clean, b, t, w


def score_patient(
    pred: ArrayLike,
    gt: ArrayLike,
    *,
    body: ArrayLike,
    tumour: ArrayLike,
    wm: ArrayLike | None = None,
    gt_clean: ArrayLike | None = None,
    data_range: float = DATA_RANGE,
    ring_px: int = 3,
    enh_threshold: float = 1.3,
    edge_quantile: float = 0.9,
) -> tuple[pd.DataFrame, dict[str, float]]:
    """All scores of one patient's scored slices.

    Args:
        pred, gt: ``(Z, H, W)`` synthetic and real T1C, scanner units, ``H, W >= 7``.
        body, tumour: ``(Z, H, W)`` bool. wm: normal white matter ``(Z, H, W)`` bool or None.
        gt_clean: the noise-free ground truth ``(Z, H, W)`` (synthetic cohorts) or None.
        data_range: ``L`` of SSIM and the texture intensity unit. ring_px, enh_threshold: see
            :func:`vce.metrics.enhancement.patient_enhancement`. edge_quantile: see
            :func:`vce.metrics.batched.direction_agreement`.
    Returns: the per-slice table (``Z`` rows in the given order, columns :data:`SLICE_METRICS`,
    a plain 0..Z-1 index) and the patient row (keys :data:`PATIENT_METRICS`): the
    NaN-aware mean over slices of every slice column, the enhancement scores and ``n_slices``.
    """
    p, g, clean, b, t, w = _inputs(pred, gt, body, tumour, wm, gt_clean)
    cols: dict[str, np.ndarray] = _similarity(p, g, b, t, data_range)
    for img, prefix in ((p, ""), (g, "gt_"), (clean, "gtclean_")):
        cols.update(_texture_columns(img, b, data_range, prefix))
    cols.update(_air_and_edges(p, g, clean, b, edge_quantile))
    slices = pd.DataFrame({k: np.asarray(cols[k], dtype=np.float64) for k in SLICE_METRICS})
    row: dict[str, float] = {k: _nanmean(slices[k].to_numpy()) for k in SLICE_METRICS}
    row.update(patient_enhancement(p, g, t, b, w, ring_px, enh_threshold))
    row["n_slices"] = int(p.shape[0])
    return slices, row
