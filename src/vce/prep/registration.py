"""Registration of T1 and T1C onto the T2 grid (SimpleITK, rigid, Mattes mutual information).

The paper registers with a B-spline transform and mutual information in 3D Slicer; this step
uses a centred rigid (Euler3D) transform with Mattes MI in a multi-resolution pyramid, which
recovers the inter-scan head motion. Outputs per patient, all on the T2 grid:

``<out>/<pid>/{T1,T2,T1C}.nii.gz`` (float32, scanner units), ``tumor_mask.nii.gz`` if given,
``transforms.json`` (estimated T2->modality transforms) and ``qc.json``; ``<out>/qc.csv`` for
the cohort.
"""

from __future__ import annotations

import json
import logging
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import SimpleITK as sitk

from ..config import RegisterConfig
from ..io.atomic import atomic_dir, write_json
from ..io.cohort import list_patients
from ..io.errors import VCEInputError
from ..io.nifti import PATIENT_FILES, read_volume, write_volume
from .slicing import body_mask

logger = logging.getLogger(__name__)

MOVING = ("T1", "T1C")


def _metric(fixed: sitk.Image, moving: sitk.Image, tx: sitk.Transform, cfg: RegisterConfig) -> float:
    """Mattes MI (SimpleITK's sign: lower is better) of ``moving`` under ``tx`` against ``fixed``."""
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=cfg.histogram_bins)
    reg.SetMetricSamplingStrategy(reg.NONE)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetInitialTransform(tx, inPlace=False)
    return float(reg.MetricEvaluate(fixed, moving))


def register_rigid(fixed: sitk.Image, moving: sitk.Image, cfg: RegisterConfig, seed: int = 0) -> sitk.Euler3DTransform:
    """Rigid transform mapping ``fixed`` physical points to ``moving`` points (resampling convention).

    Centred geometric initialisation, Mattes MI with random sampling (seeded), regular-step
    gradient descent with physical-shift scaling, pyramid ``cfg.shrink_factors`` /
    ``cfg.smoothing_sigmas_mm``.
    """
    fixed = sitk.Cast(fixed, sitk.sitkFloat32)
    moving = sitk.Cast(moving, sitk.sitkFloat32)
    init = sitk.CenteredTransformInitializer(
        fixed, moving, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.GEOMETRY
    )
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=cfg.histogram_bins)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(cfg.sampling_fraction, seed)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=1.0, minStep=1e-4, numberOfIterations=cfg.iterations, relaxationFactor=0.6
    )
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel(list(cfg.shrink_factors))
    reg.SetSmoothingSigmasPerLevel(list(cfg.smoothing_sigmas_mm))
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    reg.SetInitialTransform(init, inPlace=False)
    out = reg.Execute(fixed, moving)
    # Execute returns a CompositeTransform wrapping the optimised Euler3D transform.
    comp = sitk.CompositeTransform(out)
    return sitk.Euler3DTransform(comp.GetNthTransform(comp.GetNumberOfTransforms() - 1))


def target_registration_error(
    fixed: sitk.Image, estimated: sitk.Transform, true: sitk.Transform, body: np.ndarray, n_points: int = 2000
) -> dict[str, float]:
    """Distances (mm) between ``estimated`` and ``true`` images of points inside ``body`` of ``fixed``.

    ``body`` is a (z, y, x) boolean array on the ``fixed`` grid; points are a deterministic
    subsample of its voxels.
    """
    idx = np.argwhere(body)
    if len(idx) == 0:
        return {"tre_mean_mm": float("nan"), "tre_p95_mm": float("nan")}
    step = max(1, len(idx) // n_points)
    d = []
    for z, y, x in idx[::step]:
        p = fixed.TransformIndexToPhysicalPoint((int(x), int(y), int(z)))
        d.append(np.linalg.norm(np.subtract(estimated.TransformPoint(p), true.TransformPoint(p))))
    d = np.asarray(d)
    return {"tre_mean_mm": float(d.mean()), "tre_p95_mm": float(np.percentile(d, 95))}


def transform_to_dict(tx: sitk.Euler3DTransform) -> dict[str, Any]:
    return {
        "transform": "Euler3DTransform",
        "center_mm": list(tx.GetCenter()),
        "rotation_rad": [tx.GetAngleX(), tx.GetAngleY(), tx.GetAngleZ()],
        "translation_mm": list(tx.GetTranslation()),
    }


def transform_from_dict(d: dict[str, Any]) -> sitk.Euler3DTransform:
    tx = sitk.Euler3DTransform()
    tx.SetCenter([float(v) for v in d["center_mm"]])
    tx.SetRotation(*[float(v) for v in d["rotation_rad"]])
    tx.SetTranslation([float(v) for v in d["translation_mm"]])
    return tx


def register_patient(patient_dir: str | Path, out_dir: str | Path, cfg: RegisterConfig, seed: int = 0) -> dict[str, Any]:
    """Register one patient's T1 and T1C onto its T2; write the outputs into ``out_dir`` (must not exist)."""
    patient_dir, out_dir = Path(patient_dir), Path(out_dir)
    pid = patient_dir.name
    t2 = read_volume(patient_dir / PATIENT_FILES["T2"], what=f"T2 of patient {pid}")
    fixed = sitk.Cast(t2, sitk.sitkFloat32)
    body = body_mask(sitk.GetArrayViewFromImage(fixed))
    truth = None
    if (patient_dir / "motion.json").is_file():
        truth = json.loads((patient_dir / "motion.json").read_text())
    out_dir.mkdir(parents=True)
    write_volume(fixed, out_dir / PATIENT_FILES["T2"])
    qc: dict[str, Any] = {"patient": pid}
    transforms: dict[str, Any] = {}
    for mod in MOVING:
        moving = sitk.Cast(read_volume(patient_dir / PATIENT_FILES[mod], what=f"{mod} of patient {pid}"), sitk.sitkFloat32)
        identity = sitk.Euler3DTransform()
        before = _metric(fixed, moving, identity, cfg)
        tx = register_rigid(fixed, moving, cfg, seed=seed)
        after = _metric(fixed, moving, tx, cfg)
        resampled = sitk.Resample(moving, fixed, tx, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        write_volume(resampled, out_dir / PATIENT_FILES[mod])
        transforms[mod] = transform_to_dict(tx)
        qc[f"{mod}_mi_before"] = before
        qc[f"{mod}_mi_after"] = after
        if truth and mod in truth:
            true_tx = transform_from_dict(truth[mod])
            tre = target_registration_error(fixed, tx, true_tx, body)
            tre0 = target_registration_error(fixed, identity, true_tx, body)
            qc[f"{mod}_tre_mean_mm"] = tre["tre_mean_mm"]
            qc[f"{mod}_tre_p95_mm"] = tre["tre_p95_mm"]
            qc[f"{mod}_motion_mean_mm"] = tre0["tre_mean_mm"]
    mask_path = patient_dir / PATIENT_FILES["mask"]
    if mask_path.is_file():
        mask = read_volume(mask_path, what=f"tumour mask of patient {pid}", allow_constant=True)
        if mask.GetSize() != fixed.GetSize():
            raise VCEInputError(f"{mask_path}: tumour mask size {mask.GetSize()} != T2 size {fixed.GetSize()}")
        write_volume(sitk.Cast(mask, sitk.sitkUInt8), out_dir / PATIENT_FILES["mask"])
    write_json(out_dir / "transforms.json", transforms)
    write_json(out_dir / "qc.json", qc)
    logger.info("registered %s: %s", pid, {k: round(v, 3) for k, v in qc.items() if k != "patient"})
    return qc


def _register_one(args: tuple[str, str, RegisterConfig, int]) -> dict[str, Any]:
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)  # deterministic metric sums
    return register_patient(*args)


def register_cohort(
    raw_dir: str | Path, out_dir: str | Path, cfg: RegisterConfig, seed: int = 0, workers: int = 1
) -> pd.DataFrame:
    """Register every patient of ``raw_dir`` into ``out_dir`` (atomic: complete or absent).

    Patients run in ``workers`` processes, each single-threaded so results are deterministic.
    Returns the QC table (also written to ``<out_dir>/qc.csv``).
    """
    raw_dir = Path(raw_dir)
    pids = list_patients(raw_dir)
    logger.info("registering %d patients from %s with %d worker(s)", len(pids), raw_dir, workers)
    with atomic_dir(out_dir) as tmp:
        jobs = [(str(raw_dir / p), str(tmp / p), cfg, seed) for p in pids]
        if workers > 1:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                rows = list(pool.map(_register_one, jobs))
        else:
            rows = [_register_one(j) for j in jobs]
        table = pd.DataFrame(rows)
        table.to_csv(tmp / "qc.csv", index=False, float_format="%.6g")
        for f in ("cohort.json",):
            if (raw_dir / f).is_file():
                shutil.copy2(raw_dir / f, tmp / f)
    return table
