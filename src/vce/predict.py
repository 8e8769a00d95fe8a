"""``vce predict``: one new patient's T1 + T2 in, a synthetic T1C NIfTI out.

T1 is registered rigidly onto T2 (the settings the model was trained with), both are
normalised with their own statistics, the generator runs slice by slice, and the result is
mapped back to scanner units with T1C statistics predicted from T1/T2 by the calibration fitted
on the training patients (a new patient has no real T1C). The output has T2's grid and affine
and a header description marking it synthetic.
"""

from __future__ import annotations

import logging
from pathlib import Path

import SimpleITK as sitk

from .config import RegisterConfig
from .inference import input_statistics, synthesize_t1c
from .io.errors import VCEInputError
from .io.nifti import read_volume, to_uint12, write_volume
from .models.factory import load_generator
from .prep.normalization import apply_calibration
from .prep.registration import register_rigid

logger = logging.getLogger(__name__)


def predict_patient(t1_path: str | Path, t2_path: str | Path, checkpoint: str | Path, out: str | Path) -> Path:
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise VCEInputError(f"{checkpoint}: model checkpoint not found")
    generator, meta = load_generator(checkpoint)
    md = meta.get("metadata") or {}
    variant = meta["variant"]
    if not md.get("calibration"):
        raise VCEInputError(f"{checkpoint}: checkpoint has no T1C calibration; retrain with `vce train`")
    t2 = sitk.Cast(read_volume(t2_path, what="T2"), sitk.sitkFloat32)
    vols = {"T2": sitk.GetArrayFromImage(t2)}
    t1 = sitk.Cast(read_volume(t1_path, what="T1"), sitk.sitkFloat32)
    tx = register_rigid(t2, t1, RegisterConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in md["register"].items()}))
    vols["T1"] = sitk.GetArrayFromImage(sitk.Resample(t1, t2, tx, sitk.sitkLinear, 0.0, sitk.sitkFloat32))
    stats = input_statistics(vols, int(md["image_size"]), float(md["min_body_fraction"]))
    t1c_stats = apply_calibration(md["calibration"], stats)
    pred = synthesize_t1c(generator, variant, vols, stats, t1c_stats, int(md["image_size"]))
    img = sitk.GetImageFromArray(to_uint12(pred))
    img.CopyInformation(t2)
    write_volume(img, out, description=f"SYNTHETIC T1C (VCE {variant['name']}), not for diagnosis")
    logger.info("wrote synthetic T1C %s (T1C mu/sd from calibration: %.1f / %.1f)", out, *t1c_stats)
    return Path(out)
