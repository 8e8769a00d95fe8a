"""Registration of T1 and T1C onto the T2 grid (SimpleITK: centred rigid, then B-spline, Mattes MI).

Like the paper (3D Slicer, B-spline + mutual information), per moving modality: a centred rigid
(Euler3D) transform, then a cubic B-spline on a coarse control grid, both optimising Mattes
mutual information over the (dilated) body mask of the fixed T2 in a multi-resolution pyramid.
The estimated transform maps T2 physical points to the modality's points (SimpleITK resampling
convention, fixed = T2): ``T(p) = R(p + d(p))``, saved as ``CompositeTransform([R, B])``.

QC per patient and modality (``docs/registration.md``): Mattes MI before/after, the Jacobian
determinant of ``T`` over the body (min <= 0 means folding), and on synthetic patients the
target registration error against the saved true transform (mean, p95 over body voxels).
Mattes MI is compared with a tolerance (:func:`mi_tolerance`): when the registration makes it
worse by more than that, the initial alignment (identity) is the better one and is kept
(``<mod>_kept = initial``), so an already-aligned pair is not excluded. A registration past a
threshold is flagged; ``register.on_failure`` then either excludes the patient (not written;
listed with the reason in ``qc.csv`` and ``excluded.json``) or stops the step with an error
naming the patient. A run that would exclude every patient is an error listing each reason.

Before any registration the cohort goes through validate's integrity pass
(:func:`vce.prep.validate.check_integrity`: truncated headers, spacing, intensity range,
duplicate patients, tumour masks outside the T2 volume). A tumour mask on another grid than
T2 is resampled onto the T2 grid (nearest neighbour, physical space).

Outputs, all on the T2 grid: ``<out>/<pid>/{T1,T2,T1C}.nii.gz`` (float32, scanner units),
``tumor_mask.nii.gz`` and ``wm_mask.nii.gz`` if given (uint8; copied, or the tumour mask resampled
when it is on another grid), ``T1C_clean.nii.gz`` if
given (the noise-free T1C of a synthetic patient, resampled with exactly T1C's estimated
transform; nothing is estimated from it), ``transform_T1.tfm`` / ``transform_T1C.tfm`` (estimated
T2->modality transforms), ``transforms.json``, ``qc.json``, ``qc.png``; for the cohort
``<out>/qc.csv`` and ``<out>/excluded.json``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import SimpleITK as sitk

from ..config import RegisterConfig
from ..io.atomic import atomic_dir, write_json
from ..io.cohort import check_patient_id, list_patients
from ..io.errors import VCEInputError
from ..io.nifti import PATIENT_FILES, read_volume, resample_mask, write_volume
from .slicing import body_mask
from .validate import check_integrity, grid_text, mask_outside_message

logger = logging.getLogger(__name__)

MOVING = ("T1", "T1C")
#: Order of the per-patient columns of qc.csv (then the per-modality ones, see :func:`qc_columns`).
QC_PATIENT_COLUMNS = ("patient", "status", "reason", "seconds")
QC_MODALITY_FIELDS = (
    "mi_before", "mi_after", "kept", "jac_min", "jac_max", "tre_mean_mm", "tre_p95_mm", "motion_mean_mm", "motion_p95_mm",
)
#: Relative tolerance of the Mattes MI comparison: the registration counts as making the metric
#: worse only when ``mi_after - mi_before`` exceeds this fraction of ``|mi_before|`` (or
#: ``register.max_metric_increase``, an absolute floor, when larger). Full-volume MI of an
#: already-aligned pair moves by a few tenths of a percent when the optimiser wanders.
MI_RELATIVE_TOLERANCE = 0.01


class RegistrationQCError(VCEInputError):
    """A registration failed QC and ``register.on_failure`` is ``stop``."""


def qc_columns() -> list[str]:
    """The columns of ``qc.csv``, in order."""
    return list(QC_PATIENT_COLUMNS) + [f"{m}_{f}" for m in MOVING for f in QC_MODALITY_FIELDS]


# ------------------------------------------------------------------------------------------------
# registration


def registration_mask(fixed: sitk.Image) -> sitk.Image:
    """Body mask of the fixed image (:func:`body_mask`), dilated by one voxel so the head's edge counts (uint8)."""
    m = sitk.GetImageFromArray(body_mask(sitk.GetArrayViewFromImage(fixed)).astype(np.uint8))
    m.CopyInformation(fixed)
    return sitk.BinaryDilate(m, [1, 1, 1])


def _metric(
    fixed: sitk.Image, moving: sitk.Image, tx: sitk.Transform, cfg: RegisterConfig, mask: sitk.Image | None = None
) -> float:
    """Mattes MI (SimpleITK's sign: lower is better) of ``moving`` under ``tx``, all fixed voxels (in ``mask``)."""
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=cfg.histogram_bins)
    reg.SetMetricSamplingStrategy(reg.NONE)
    reg.SetInterpolator(sitk.sitkLinear)
    if mask is not None:
        reg.SetMetricFixedMask(mask)
    reg.SetInitialTransform(tx, inPlace=False)
    return float(reg.MetricEvaluate(fixed, moving))


def itk_seed(seed: int) -> int:
    """SimpleITK sampling seed for ``seed``: never 0 (0 = sitkWallClock, i.e. not reproducible)."""
    return int(seed) % 2147483646 + 1


def _mi_method(
    cfg: RegisterConfig,
    sampling_fraction: float,
    seed: int,
    mask: sitk.Image | None,
    shrink_factors: tuple[int, ...],
    smoothing_sigmas_mm: tuple[float, ...],
) -> sitk.ImageRegistrationMethod:
    """Registration method shared by the rigid and B-spline stages (optimizer left to the caller).

    Mattes MI with ``cfg.histogram_bins`` bins, random sampling of ``sampling_fraction`` of the
    fixed voxels (seeded, inside ``mask`` if given), linear interpolation, and the pyramid
    ``shrink_factors`` / ``smoothing_sigmas_mm`` (sigmas in mm).
    """
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=cfg.histogram_bins)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(sampling_fraction, itk_seed(seed))
    if mask is not None:
        reg.SetMetricFixedMask(mask)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetShrinkFactorsPerLevel(list(shrink_factors))
    reg.SetSmoothingSigmasPerLevel(list(smoothing_sigmas_mm))
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    return reg


def register_rigid(
    fixed: sitk.Image, moving: sitk.Image, cfg: RegisterConfig, seed: int = 0, mask: sitk.Image | None = None
) -> sitk.Euler3DTransform:
    """Rigid transform mapping ``fixed`` physical points to ``moving`` points (resampling convention).

    Centred geometric initialisation, Mattes MI with random sampling (seeded) inside ``mask``
    (optional, on the fixed grid), regular-step gradient descent with physical-shift scaling,
    pyramid ``cfg.shrink_factors`` / ``cfg.smoothing_sigmas_mm``.
    """
    fixed = sitk.Cast(fixed, sitk.sitkFloat32)
    moving = sitk.Cast(moving, sitk.sitkFloat32)
    init = sitk.CenteredTransformInitializer(
        fixed, moving, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.GEOMETRY
    )
    reg = _mi_method(cfg, cfg.sampling_fraction, seed, mask, cfg.shrink_factors, cfg.smoothing_sigmas_mm)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=1.0, minStep=1e-4, numberOfIterations=cfg.iterations, relaxationFactor=0.6
    )
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetInitialTransform(init, inPlace=False)
    out = reg.Execute(fixed, moving)
    # Execute returns a CompositeTransform wrapping the optimised Euler3D transform.
    comp = sitk.CompositeTransform(out)
    return sitk.Euler3DTransform(comp.GetNthTransform(comp.GetNumberOfTransforms() - 1))


def bspline_mesh_size(fixed: sitk.Image, grid_spacing_mm: float) -> list[int]:
    """B-spline mesh size (x, y, z): physical extent / control-point spacing, at least 1."""
    return [max(1, int(round(n * s / grid_spacing_mm))) for n, s in zip(fixed.GetSize(), fixed.GetSpacing())]


def register_bspline(
    fixed: sitk.Image,
    moving: sitk.Image,
    rigid: sitk.Transform,
    cfg: RegisterConfig,
    seed: int = 0,
    mask: sitk.Image | None = None,
) -> sitk.BSplineTransform:
    """Cubic B-spline ``B`` (over ``fixed``'s domain) such that ``rigid o B`` aligns ``moving`` to ``fixed``.

    ``rigid`` is the moving initial transform (kept fixed); Mattes MI, random sampling
    ``cfg.bspline_sampling_fraction`` (seeded) inside ``mask``, regular-step gradient descent, pyramid
    ``cfg.bspline_shrink_factors`` / ``cfg.bspline_smoothing_sigmas_mm``.
    """
    fixed = sitk.Cast(fixed, sitk.sitkFloat32)
    moving = sitk.Cast(moving, sitk.sitkFloat32)
    bs = sitk.BSplineTransformInitializer(fixed, bspline_mesh_size(fixed, cfg.bspline_grid_spacing_mm), 3)
    reg = _mi_method(
        cfg, cfg.bspline_sampling_fraction, seed, mask, cfg.bspline_shrink_factors, cfg.bspline_smoothing_sigmas_mm
    )
    # All parameters are displacements in mm (unit scales); a regular-step descent moves the
    # coefficient vector by at most ``learningRate`` mm per step, halving it on reversals, so
    # a noisy sampled metric cannot throw the spline far (L-BFGS-B diverged on such metrics).
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=1.0, minStep=0.01, numberOfIterations=cfg.bspline_iterations, relaxationFactor=0.5
    )
    reg.SetOptimizerScales([1.0] * bs.GetNumberOfParameters())
    reg.SetMovingInitialTransform(rigid)
    reg.SetInitialTransform(bs, inPlace=True)
    reg.Execute(fixed, moving)
    return bs


def register_image(
    fixed: sitk.Image, moving: sitk.Image, cfg: RegisterConfig, seed: int = 0, mask: sitk.Image | None = None
) -> sitk.CompositeTransform:
    """The full T2->modality transform ``CompositeTransform([R, B])`` (``[R]`` when ``cfg.bspline`` is off).

    ``mask`` defaults to :func:`registration_mask` of ``fixed`` when ``cfg.use_mask``.
    """
    fixed = sitk.Cast(fixed, sitk.sitkFloat32)
    moving = sitk.Cast(moving, sitk.sitkFloat32)
    if mask is None and cfg.use_mask:
        mask = registration_mask(fixed)
    rigid = register_rigid(fixed, moving, cfg, seed=seed, mask=mask)
    tx = sitk.CompositeTransform(3)
    tx.AddTransform(rigid)
    if cfg.bspline:
        tx.AddTransform(register_bspline(fixed, moving, rigid, cfg, seed=seed, mask=mask))
    return tx


# ------------------------------------------------------------------------------------------------
# QC


def displacement(tx: sitk.Transform, ref: sitk.Image) -> np.ndarray:
    """``tx(p) - p`` at every voxel centre of ``ref``: (z, y, x, 3) float64, mm."""
    f = sitk.TransformToDisplacementField(
        tx, sitk.sitkVectorFloat64, ref.GetSize(), ref.GetOrigin(), ref.GetSpacing(), ref.GetDirection()
    )
    return sitk.GetArrayFromImage(f)


def jacobian_range(tx: sitk.Transform, ref: sitk.Image, body: np.ndarray) -> tuple[float, float]:
    """(min, max) of the Jacobian determinant of ``tx`` over the voxels ``body`` (z, y, x bool) of ``ref``.

    ``sitk.DisplacementFieldJacobianDeterminant`` of the dense displacement field on the ``ref``
    grid (central differences, computed on a grid padded by one voxel); a rigid part contributes det = 1, so this is the B-spline's
    local volume change. min <= 0 means the transform folds.
    """
    # one voxel of padding on every side, so the border voxels get central differences too
    origin = np.asarray(ref.GetOrigin()) - np.asarray(ref.GetDirection()).reshape(3, 3) @ np.asarray(ref.GetSpacing())
    size = [n + 2 for n in ref.GetSize()]
    f = sitk.TransformToDisplacementField(
        tx, sitk.sitkVectorFloat64, size, [float(v) for v in origin], ref.GetSpacing(), ref.GetDirection()
    )
    jac = sitk.GetArrayFromImage(sitk.DisplacementFieldJacobianDeterminant(f))[1:-1, 1:-1, 1:-1]
    vals = jac[body] if body.any() else jac.ravel()
    return float(vals.min()), float(vals.max())


def target_registration_error(
    fixed: sitk.Image, estimated: sitk.Transform, true: sitk.Transform, body: np.ndarray
) -> dict[str, float]:
    """Distances (mm) between ``estimated(p)`` and ``true(p)`` over all voxel centres ``p`` in ``body``.

    ``body`` is a (z, y, x) boolean array on the ``fixed`` grid. Returns mean and 95th percentile.
    """
    if not body.any():
        return {"tre_mean_mm": float("nan"), "tre_p95_mm": float("nan")}
    d = np.linalg.norm(displacement(estimated, fixed)[body] - displacement(true, fixed)[body], axis=1)
    return {"tre_mean_mm": float(d.mean()), "tre_p95_mm": float(np.percentile(d, 95))}


def mi_tolerance(mi_before: float, cfg: RegisterConfig) -> float:
    """How much Mattes MI may rise (get worse) before the registration counts as worse than the
    initial alignment: :data:`MI_RELATIVE_TOLERANCE` of ``|mi_before|``, at least ``cfg.max_metric_increase``."""
    return max(float(cfg.max_metric_increase), MI_RELATIVE_TOLERANCE * abs(float(mi_before)))


def mi_got_worse(mi_before: float, mi_after: float, cfg: RegisterConfig) -> bool:
    """Whether ``mi_after`` is worse than ``mi_before`` beyond :func:`mi_tolerance` (NaN counts as worse)."""
    return not mi_after - mi_before <= mi_tolerance(mi_before, cfg)


def qc_failures(qc: dict[str, Any], cfg: RegisterConfig) -> list[str]:
    """Reasons (human-readable) why a patient's registrations fail QC; empty when it passes.

    A modality whose registration made Mattes MI worse beyond :func:`mi_tolerance` fails only if the
    registered transform was kept (``<mod>_kept`` is not ``initial``); with the initial alignment
    kept it is not a failure."""
    out = []
    for mod in MOVING:
        if f"{mod}_jac_min" in qc and not qc[f"{mod}_jac_min"] > cfg.min_jacobian:
            out.append(f"{mod}: Jacobian determinant min {qc[f'{mod}_jac_min']:.3g} <= {cfg.min_jacobian:g} (folding)")
        if (f"{mod}_mi_after" in qc and qc.get(f"{mod}_kept") != "initial"
                and mi_got_worse(qc[f"{mod}_mi_before"], qc[f"{mod}_mi_after"], cfg)):
            out.append(
                f"{mod}: Mattes MI got worse ({qc[f'{mod}_mi_before']:.4f} -> {qc[f'{mod}_mi_after']:.4f}, lower is better; "
                f"tolerance {mi_tolerance(qc[f'{mod}_mi_before'], cfg):.4f})"
            )
        tre = qc.get(f"{mod}_tre_p95_mm")
        if tre is not None and math.isfinite(tre) and tre > cfg.max_tre_mm:
            out.append(f"{mod}: TRE p95 {tre:.2f} mm > max_tre_mm {cfg.max_tre_mm:g} mm")
    return out


def _norm01(a: np.ndarray) -> np.ndarray:
    hi = float(np.percentile(a, 99.5)) or 1.0
    return np.clip(a / hi, 0.0, 1.0)


def _checkerboard(a: np.ndarray, b: np.ndarray, tile: int) -> np.ndarray:
    yy, xx = np.indices(a.shape)
    return np.where(((yy // tile) + (xx // tile)) % 2 == 0, _norm01(a), _norm01(b))


def _edges(a: np.ndarray) -> np.ndarray:
    gy, gx = np.gradient(_norm01(a))
    g = np.hypot(gx, gy)
    return g > np.percentile(g, 90)


def write_qc_png(path: str | Path, t2: np.ndarray, before: dict[str, np.ndarray], after: dict[str, np.ndarray], pid: str) -> None:
    """PNG for a person to judge: per moving modality, checkerboard with T2 before / after, edges over T2.

    ``t2`` and the modality volumes are (z, y, x) arrays on the T2 grid; the slice shown is the
    one with the largest body area.
    """
    from ..image_grid import Panel, image_grid

    body = body_mask(t2)
    k = int(np.argmax(body.reshape(len(body), -1).sum(1)))
    tile = max(4, t2.shape[2] // 8)
    rows = [
        [
            Panel(_checkerboard(t2[k], before[mod][k], tile), 0, 1, interpolation="nearest", title=f"T2 | {mod} before"),
            Panel(_checkerboard(t2[k], after[mod][k], tile), 0, 1, interpolation="nearest", title=f"T2 | {mod} registered"),
            Panel(_norm01(t2[k]), 0, 1, interpolation="nearest", overlay=_edges(after[mod][k]), overlay_alpha=0.8,
                  title=f"{mod} edges on T2"),
        ]
        for mod in after
    ]
    image_grid(rows, path, title=f"{pid}, slice z={k}", panel_size=2.5, dpi=72, fontsize=8)


# ------------------------------------------------------------------------------------------------
# one patient


def _register_modality(
    fixed: sitk.Image, moving: sitk.Image, mask: sitk.Image | None, body: np.ndarray, truth: sitk.Transform | None,
    cfg: RegisterConfig, seed: int,
) -> tuple[sitk.Transform, sitk.Image, dict[str, float]]:
    """Register one modality; returns (transform, moving resampled onto ``fixed``, QC fields without prefix).

    The registered transform is kept unless it makes Mattes MI worse than the initial alignment
    beyond :func:`mi_tolerance`; then the identity (the better of the two) is kept, ``kept = initial``."""
    identity = sitk.Euler3DTransform()
    qc: dict[str, Any] = {"mi_before": _metric(fixed, moving, identity, cfg, mask)}
    tx = register_image(fixed, moving, cfg, seed=seed, mask=mask)
    qc["mi_after"] = _metric(fixed, moving, tx, cfg, mask)
    qc["kept"] = "registered"
    if mi_got_worse(qc["mi_before"], qc["mi_after"], cfg):
        tx = sitk.CompositeTransform(3)
        tx.AddTransform(sitk.Euler3DTransform())
        qc["kept"] = "initial"
    qc["jac_min"], qc["jac_max"] = jacobian_range(tx, fixed, body)
    if truth is not None:
        tre = target_registration_error(fixed, tx, truth, body)
        tre0 = target_registration_error(fixed, identity, truth, body)
        qc.update(tre)
        qc["motion_mean_mm"], qc["motion_p95_mm"] = tre0["tre_mean_mm"], tre0["tre_p95_mm"]
    resampled = sitk.Resample(moving, fixed, tx, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return tx, resampled, qc


def _read_truth(patient_dir: Path) -> dict[str, sitk.Transform]:
    """True T2->modality transforms of a synthetic patient (motion.json), {} when absent."""
    f = patient_dir / "motion.json"
    if not f.is_file():
        return {}
    from ..synth.motion import read_true_transform

    try:
        entries = json.loads(f.read_text())
        return {m: read_true_transform(patient_dir, entries[m]) for m in MOVING if m in entries}
    except (ValueError, KeyError, RuntimeError) as exc:
        raise VCEInputError(f"{f}: cannot read the true motion of patient {patient_dir.name}: {exc}") from exc


def _read_moving(patient_dir: Path, pid: str) -> dict[str, sitk.Image]:
    """The moving modalities (:data:`MOVING`) of a patient, as float32 images (intensities in the scanner range)."""
    return {
        m: sitk.Cast(read_volume(patient_dir / PATIENT_FILES[m], what=f"{m} of patient {pid}", scanner_range=True),
                     sitk.sitkFloat32)
        for m in MOVING
    }


def _same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    """Whether ``a`` and ``b`` have the same size, spacing, origin and direction (to 1e-3 mm / 1e-4)."""
    return (
        a.GetSize() == b.GetSize() and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-3)
        and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-3) and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-4)
    )


def _read_t2_masks(patient_dir: Path, pid: str, fixed: sitk.Image) -> dict[str, sitk.Image]:
    """The patient's masks on the T2 grid, by PATIENT_FILES key: ``mask`` (tumour) and ``wm``
    (normal-appearing white matter), each only when present.

    A tumour mask on another grid is resampled onto the T2 grid (nearest neighbour, physical
    space) and refused when it does not overlap the T2 volume at all; the white-matter mask
    (synthetic patients only) must have the T2 grid's size."""
    masks = {}
    for key, what in (("mask", "tumour mask"), ("wm", "white-matter mask")):
        path = patient_dir / PATIENT_FILES[key]
        if not path.is_file():
            continue
        img = read_volume(path, what=f"{what} of patient {pid}", allow_constant=True)
        if key == "mask" and not _same_grid(img, fixed):
            img = _mask_onto_t2(path, pid, img, fixed)
        elif img.GetSize() != fixed.GetSize():
            raise VCEInputError(f"{path}: {what} size {img.GetSize()} != T2 size {fixed.GetSize()}")
        masks[key] = sitk.Cast(img, sitk.sitkUInt8)
    return masks


def _mask_onto_t2(path: Path, pid: str, mask: sitk.Image, fixed: sitk.Image) -> sitk.Image:
    """The tumour mask ``mask`` (another grid than T2's) resampled onto ``fixed`` (nearest neighbour,
    physical space); :class:`VCEInputError` naming the patient and file when it does not overlap at all."""
    out, covered = resample_mask(mask, fixed)
    if covered == 0:
        raise VCEInputError(f"{path}: patient {pid}: {mask_outside_message(mask, fixed)}")
    logger.info("patient %s: tumour mask (%s) resampled onto the T2 grid (%s); it covers %.0f%% of the T2 volume",
                pid, grid_text(mask), grid_text(fixed), 100 * covered)
    return out


def _read_t1c_clean(patient_dir: Path, pid: str, t1c: sitk.Image) -> sitk.Image | None:
    """The noise-free T1C of a synthetic patient (float32; None when absent); it must be on T1C's grid."""
    path = patient_dir / PATIENT_FILES["T1C_clean"]
    if not path.is_file():
        return None
    img = read_volume(path, what=f"noise-free T1C of patient {pid}")
    if not _same_grid(img, t1c):
        raise VCEInputError(
            f"{path}: noise-free T1C grid (size {img.GetSize()}, spacing {img.GetSpacing()}) differs from the T1C's "
            f"(size {t1c.GetSize()}, spacing {t1c.GetSpacing()})"
        )
    return sitk.Cast(img, sitk.sitkFloat32)


def _carried(
    fixed: sitk.Image, masks: dict[str, sitk.Image], t1c_clean: sitk.Image | None, t1c_tx: sitk.Transform
) -> dict[str, sitk.Image]:
    """The outputs that are carried, not registered, by PATIENT_FILES key: the T2-grid masks as
    they are, and T1C_clean resampled onto ``fixed`` with T1C's estimated transform ``t1c_tx``
    (linear, default 0, float32: exactly as the T1C itself)."""
    out = dict(masks)
    if t1c_clean is not None:
        out["T1C_clean"] = sitk.Resample(t1c_clean, fixed, t1c_tx, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return out


def _register_moving(
    jobs: dict[str, tuple[Any, ...]], threads: int, cfg: RegisterConfig
) -> dict[str, tuple[sitk.Transform, sitk.Image, dict[str, float]]]:
    """Run :func:`_register_modality` per moving modality, in two threads when allowed."""
    if threads > 1 and cfg.parallel_modalities:
        with ThreadPoolExecutor(max_workers=len(MOVING)) as ex:
            futures = {m: ex.submit(_register_modality, *a) for m, a in jobs.items()}
            return {m: f.result() for m, f in futures.items()}
    return {m: _register_modality(*a) for m, a in jobs.items()}


def _transform_record(mod: str, tx: sitk.Transform, cfg: RegisterConfig, kept: str = "registered") -> dict[str, Any]:
    """The ``transforms.json`` entry of one modality: file, kind, which alignment was kept, convention
    and the rigid part."""
    rigid = sitk.Euler3DTransform(tx.GetNthTransform(0))
    nonrigid = cfg.bspline and kept == "registered"
    return {
        "file": f"transform_{mod}.tfm",
        "transform": "CompositeTransform (Euler3DTransform o BSplineTransform)" if nonrigid else "CompositeTransform (Euler3DTransform)",
        "kept": kept if kept == "registered" else "initial (identity: the registration made Mattes MI worse beyond the tolerance)",
        "convention": "maps T2 physical points to this modality's points (SimpleITK resampling, fixed=T2); T(p) = R(p + d(p))",
        "rigid": {
            "center_mm": list(rigid.GetCenter()),
            "rotation_rad": [rigid.GetAngleX(), rigid.GetAngleY(), rigid.GetAngleZ()],
            "translation_mm": list(rigid.GetTranslation()),
        },
    }


def _write_registered(
    out_dir: Path, pid: str, fixed: sitk.Image,
    results: dict[str, tuple[sitk.Transform, sitk.Image, dict[str, float]]], carried: dict[str, sitk.Image],
    cfg: RegisterConfig,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Create ``out_dir`` and write T2, the registered modalities, their transforms and the
    ``carried`` images (:func:`_carried`, by PATIENT_FILES key).

    Returns the QC row so far (patient and per-modality fields) and the ``transforms.json`` content.
    """
    out_dir.mkdir(parents=True)
    write_volume(fixed, out_dir / PATIENT_FILES["T2"])
    qc: dict[str, Any] = {"patient": pid}
    transforms: dict[str, Any] = {}
    for mod, (tx, resampled, q) in results.items():
        write_volume(resampled, out_dir / PATIENT_FILES[mod])
        sitk.WriteTransform(tx, str(out_dir / f"transform_{mod}.tfm"))
        transforms[mod] = _transform_record(mod, tx, cfg, str(q.get("kept", "registered")))
        qc.update({f"{mod}_{k}": v for k, v in q.items()})
    for key, img in carried.items():
        write_volume(img, out_dir / PATIENT_FILES[key])
    return qc, transforms


def _write_patient_qc_png(
    path: Path, fixed: sitk.Image, moving: dict[str, sitk.Image],
    results: dict[str, tuple[sitk.Transform, sitk.Image, dict[str, float]]], pid: str,
) -> None:
    """:func:`write_qc_png` of the moving modalities before (identity) and after registration."""
    before = {m: sitk.GetArrayFromImage(sitk.Resample(moving[m], fixed, sitk.Transform(), sitk.sitkLinear, 0.0)) for m in MOVING}
    after = {m: sitk.GetArrayFromImage(results[m][1]) for m in MOVING}
    write_qc_png(path, sitk.GetArrayFromImage(fixed), before, after, pid)


def _log_registered(pid: str, qc: dict[str, Any], reasons: list[str]) -> None:
    """One log line per registered patient: status, reasons, the rounded float QC fields."""
    logger.info(
        "registered %s (%s%s): %s", pid, qc["status"], f": {qc['reason']}" if reasons else "",
        {k: round(v, 3) for k, v in qc.items() if isinstance(v, float)},
    )


def register_patient(
    patient_dir: str | Path, out_dir: str | Path, cfg: RegisterConfig, seed: int = 0, threads: int = 1
) -> dict[str, Any]:
    """Register one patient's T1 and T1C onto its T2; write the outputs into ``out_dir`` (must not exist).

    ``threads`` > 1 runs the two modalities concurrently (each registration single-threaded,
    so the result does not depend on it). Returns the QC row (also ``out_dir/qc.json``) with
    ``status`` ``ok`` or ``failed`` and the ``reason``; outputs are written either way.
    """
    t0 = time.perf_counter()
    patient_dir, out_dir = Path(patient_dir), Path(out_dir)
    pid = patient_dir.name
    t2 = read_volume(patient_dir / PATIENT_FILES["T2"], what=f"T2 of patient {pid}", scanner_range=True)
    fixed = sitk.Cast(t2, sitk.sitkFloat32)
    body = body_mask(sitk.GetArrayViewFromImage(fixed))
    mask = registration_mask(fixed) if cfg.use_mask else None
    truth = _read_truth(patient_dir)
    moving = _read_moving(patient_dir, pid)
    masks = _read_t2_masks(patient_dir, pid, fixed)  # checked before the (slow) registrations
    t1c_clean = _read_t1c_clean(patient_dir, pid, moving["T1C"])  # carried with T1C's transform, never registered
    jobs = {m: (fixed, moving[m], mask, body, truth.get(m), cfg, seed) for m in MOVING}
    results = _register_moving(jobs, threads, cfg)

    carried = _carried(fixed, masks, t1c_clean, results["T1C"][0])
    qc, transforms = _write_registered(out_dir, pid, fixed, results, carried, cfg)
    if cfg.qc_png:
        _write_patient_qc_png(out_dir / "qc.png", fixed, moving, results, pid)
    reasons = qc_failures(qc, cfg)
    qc["status"] = "failed" if reasons else "ok"
    qc["reason"] = "; ".join(reasons)
    qc["seconds"] = round(time.perf_counter() - t0, 3)
    write_json(out_dir / "transforms.json", transforms)
    write_json(out_dir / "qc.json", qc)
    _log_registered(pid, qc, reasons)
    return qc


def _register_one(args: tuple[str, str, RegisterConfig, int, int]) -> dict[str, Any]:
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)  # deterministic metric sums
    return register_patient(*args)


def _refuse_failures(raw_dir: Path, failed: dict[str, str], n: int, cfg: RegisterConfig) -> None:
    """Raise :class:`RegistrationQCError` listing every failed patient and why when
    ``cfg.on_failure`` is ``stop``, or when all ``n`` patients failed (nothing would be left)."""
    reasons = "; ".join(f"patient {p}: {why}" for p, why in failed.items())
    if failed and cfg.on_failure == "stop":
        raise RegistrationQCError(f"registration QC failed (register.on_failure: stop) for {reasons}")
    if failed and len(failed) == n:
        raise RegistrationQCError(
            f"{raw_dir}: registration QC excluded every patient ({len(failed)} of {n}), so nothing is written: "
            f"{reasons} (thresholds: register.max_tre_mm, min_jacobian, max_metric_increase; docs/registration.md)"
        )


def register_cohort(
    raw_dir: str | Path,
    out_dir: str | Path,
    cfg: RegisterConfig,
    seed: int = 0,
    workers: int = 1,
    patients: list[str] | None = None,
) -> pd.DataFrame:
    """Register every patient of ``raw_dir`` (or only ``patients``) into ``out_dir`` (atomic: complete or absent).

    Patients run in ``workers`` processes; within a patient T1 and T1C run in two threads when
    there are at least twice as many cores as workers. Every registration is single-threaded,
    so results are deterministic. The cohort first passes validate's integrity pass
    (:func:`~vce.prep.validate.check_integrity`). Patients failing QC are removed from the output
    and listed in ``excluded.json`` (``cfg.on_failure == "exclude"``) or raise
    :class:`RegistrationQCError` naming them (``"stop"``; nothing is written); when every patient
    fails, exclude mode raises it too, listing each reason. Returns the QC table (also ``<out_dir>/qc.csv``,
    one row per patient, failed ones included, columns :func:`qc_columns`).
    """
    raw_dir = Path(raw_dir)
    pids = list_patients(raw_dir)
    if patients:
        unknown = [p for p in patients if check_patient_id(p) not in pids]
        if unknown:
            raise VCEInputError(f"{raw_dir}: no patient(s) {', '.join(unknown)}")
        pids = [p for p in pids if p in set(patients)]
    check_integrity(raw_dir, pids, step="register")
    workers = max(1, min(int(workers), len(pids)))
    threads = 2 if (os.cpu_count() or 1) >= 2 * workers else 1
    logger.info("registering %d patients from %s with %d worker(s) x %d thread(s)", len(pids), raw_dir, workers, threads)
    with atomic_dir(out_dir) as tmp:
        jobs = [(str(raw_dir / p), str(tmp / p), cfg, seed, threads) for p in pids]
        if workers > 1:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                rows = list(pool.map(_register_one, jobs))
        else:
            rows = [_register_one(j) for j in jobs]
        failed = {r["patient"]: r["reason"] for r in rows if r["status"] != "ok"}
        _refuse_failures(raw_dir, failed, len(rows), cfg)
        for p in failed:
            shutil.rmtree(tmp / p)
            logger.warning("patient %s excluded from the registered cohort: %s", p, failed[p])
        for r in rows:
            if r["status"] != "ok":
                r["status"] = "excluded"
        table = pd.DataFrame(rows)
        table = table.reindex(columns=qc_columns() + [c for c in table.columns if c not in qc_columns()])
        table.to_csv(tmp / "qc.csv", index=False, float_format="%.6g")
        write_json(tmp / "excluded.json", failed)
        for f in ("cohort.json",):
            if (raw_dir / f).is_file():
                shutil.copy2(raw_dir / f, tmp / f)
    return table


__all__ = [
    "MI_RELATIVE_TOLERANCE", "MOVING", "RegistrationQCError", "body_mask", "jacobian_range", "mi_got_worse", "mi_tolerance",
    "qc_columns", "qc_failures", "register_bspline",
    "register_cohort", "register_image", "register_patient", "register_rigid", "target_registration_error",
    "write_qc_png",
]
