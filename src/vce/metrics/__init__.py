"""Image metrics of the study: similarity (eq. 4-6) and texture (eq. 7-10) per slice; batched,
regional and enhancement scores of a patient (:mod:`vce.metrics.batched`,
:mod:`vce.metrics.enhancement`, :func:`score_patient`). See docs/metrics.md."""

from __future__ import annotations

from numpy.typing import ArrayLike

from vce.metrics.similarity import DATA_RANGE, global_ssim, mae, mse, ssim
from vce.metrics.texture import TEXTURE_KEYS, tavpmi, texture_metrics, tfpmi, tmsvpmi, vfpmi

#: Keys of :func:`slice_metrics`, in column order (the evaluation CSVs use the same names).
METRIC_KEYS = (
    "mae",
    "mse",
    "ssim",
    *TEXTURE_KEYS,
    *(f"gt_{k}" for k in TEXTURE_KEYS),
)


def slice_metrics(pred: ArrayLike, gt: ArrayLike, data_range: float = DATA_RANGE) -> dict[str, float]:
    """All metrics of one slice pair (scanner units).

    ``mae``/``mse``/``ssim`` compare ``pred`` with ``gt``; ``tmsvpmi``... ``vfpmi`` are the
    texture indices of ``pred`` and ``gt_tmsvpmi``... ``gt_vfpmi`` those of ``gt``, both
    computed on intensities divided by ``data_range``.
    """
    out = {"mae": mae(pred, gt), "mse": mse(pred, gt), "ssim": ssim(pred, gt, data_range=data_range)}
    out.update(texture_metrics(pred, scale=data_range))
    out.update({f"gt_{k}": v for k, v in texture_metrics(gt, scale=data_range).items()})
    return out


from vce.metrics import batched  # noqa: E402  (after the per-slice modules it builds on)
from vce.metrics.enhancement import (  # noqa: E402
    ENHANCEMENT_KEYS,
    dice,
    enhancement_ratio,
    enhancing_region,
    patient_enhancement,
    ring,
)
from vce.metrics.scoring import GT_METRICS, PATIENT_METRICS, SLICE_METRICS, score_patient  # noqa: E402

__all__ = [
    "DATA_RANGE",
    "ENHANCEMENT_KEYS",
    "GT_METRICS",
    "PATIENT_METRICS",
    "SLICE_METRICS",
    "batched",
    "dice",
    "enhancement_ratio",
    "enhancing_region",
    "patient_enhancement",
    "ring",
    "score_patient",
    "METRIC_KEYS",
    "TEXTURE_KEYS",
    "global_ssim",
    "mae",
    "mse",
    "slice_metrics",
    "ssim",
    "tavpmi",
    "texture_metrics",
    "tfpmi",
    "tmsvpmi",
    "vfpmi",
]
