"""``vce predict``: one new patient's T1 + T2 in, a synthetic T1C NIfTI out.

Inputs are NIfTI files or DICOM series folders (:func:`vce.io.images.read_image`; a folder with
several series is narrowed by the default T1 / T2 series rules). Both are reoriented to the
canonical LPS orientation the model was trained in (a permutation/flip, no interpolation), T1 is
registered onto T2 with the registration settings the model was trained with (rigid + B-spline,
Mattes MI), both are normalised with their own statistics, the generator runs on batches of
slices, and the result is mapped back to scanner units with T1C statistics predicted from T1/T2
by the calibration fitted on the training patients (a new patient has no real T1C), and set to 0
outside the T2 body mask (the air: :func:`vce.inference.to_scanner`, as the evaluation does). The
output is written on the *original* T2 grid (same size, spacing, origin, direction and affine), as
12-bit integers, with a header description marking it synthetic. ``--out`` must be a ``.nii.gz``
or ``.nii`` path in an existing directory (:func:`check_output`, before any work).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import SimpleITK as sitk

from .config import RegisterConfig
from .inference import input_statistics, synthesize_t1c
from .io.errors import VCEInputError
from .io.images import CANONICAL_ORIENTATION, read_image
from .io.nifti import to_uint12, write_volume
from .models.checkpoint import load_generator
from .prep.normalization import apply_calibration
from .prep.registration import register_image

logger = logging.getLogger(__name__)


def _register_config(stored: dict | None) -> RegisterConfig:
    """The checkpoint's registration settings (fields unknown to this version are ignored)."""
    names = {f.name for f in dataclasses.fields(RegisterConfig)}
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in (stored or {}).items() if k in names}
    return RegisterConfig(**kw)


#: What ``vce predict --out`` may end in: the output is one NIfTI volume.
NIFTI_SUFFIXES = (".nii.gz", ".nii")


def check_output(out: str | Path) -> Path:
    """Refuse, before any work, an output that is not a NIfTI path (``.nii.gz`` / ``.nii``) in an
    existing directory. Raises :class:`VCEInputError` naming ``out``; returns it as a ``Path``."""
    out = Path(out)
    if out.is_dir():
        raise VCEInputError(f"{out}: is a directory; --out names the output file, e.g. {out / 'synthetic_t1c.nii.gz'}")
    if not out.name.endswith(NIFTI_SUFFIXES) or out.name in NIFTI_SUFFIXES:
        got = "".join(out.suffixes) or "no extension"
        raise VCEInputError(f"{out}: the output must be a NIfTI file ending in .nii.gz or .nii (got {got})")
    parent = out.parent
    if not parent.exists():
        raise VCEInputError(f"{out}: its directory {parent} does not exist (create it first)")
    if not parent.is_dir():
        raise VCEInputError(f"{out}: {parent} is not a directory")
    return out


def predict_patient(
    t1_path: str | Path, t2_path: str | Path, checkpoint: str | Path, out: str | Path, batch_size: int = 16,
) -> Path:
    """Synthesise T1C for one patient and write it to ``out`` (NIfTI, atomically). Returns ``out``.

    Raises :class:`VCEInputError` for a missing/unreadable/unsuitable input or checkpoint, or an
    output that is not a NIfTI path in an existing directory (:func:`check_output`, checked first).
    The synthetic T1C is 0 outside the T2 body mask (air; :func:`vce.inference.to_scanner`).
    """
    out = check_output(out)
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise VCEInputError(f"{checkpoint}: model checkpoint not found")
    generator, meta = load_generator(checkpoint)
    md = meta.get("metadata") or {}
    variant = meta["variant"]
    if not md.get("calibration"):
        raise VCEInputError(f"{checkpoint}: checkpoint has no T1C calibration; retrain with `vce train`")
    t2_native = read_image(t2_path, what="T2", rule="T2", scanner_range=True)
    t2 = sitk.Cast(sitk.DICOMOrient(t2_native, CANONICAL_ORIENTATION), sitk.sitkFloat32)
    vols = {"T2": sitk.GetArrayFromImage(t2)}
    if min(vols["T2"].shape[1:]) < 8:  # refuse before the (slow) registration
        raise VCEInputError(f"{t2_path}: T2 in-plane matrix {vols['T2'].shape[1:]} is too small to synthesise from")
    # T1 is read even for T2-only variants: its statistics feed the T1C calibration
    t1 = sitk.Cast(read_image(t1_path, what="T1", rule="T1", orientation=CANONICAL_ORIENTATION, scanner_range=True), sitk.sitkFloat32)
    tx = register_image(t2, t1, _register_config(md.get("register")))
    vols["T1"] = sitk.GetArrayFromImage(sitk.Resample(t1, t2, tx, sitk.sitkLinear, 0.0, sitk.sitkFloat32))
    size = int(md["image_size"])
    stats = input_statistics(vols, size, float(md["min_body_fraction"]), float(md.get("max_fov_missing", 0.01)))
    t1c_stats = apply_calibration(md["calibration"], stats)
    pred = synthesize_t1c(generator, variant, vols, stats, t1c_stats, size, batch_size=batch_size)
    img = sitk.GetImageFromArray(to_uint12(pred))
    img.CopyInformation(t2)
    # back onto the native T2 grid: the canonical grid has the same voxel centres, so this is exact
    img = sitk.Resample(img, t2_native, sitk.Transform(), sitk.sitkNearestNeighbor, 0, img.GetPixelID())
    write_volume(img, out, description=f"SYNTHETIC T1C (VCE {variant['name']}), not for diagnosis")
    logger.info("wrote synthetic T1C %s (T1C mu/sd from calibration: %.1f / %.1f)", out, *t1c_stats)
    return Path(out)
