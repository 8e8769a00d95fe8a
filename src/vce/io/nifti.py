"""NIfTI volumes via SimpleITK, with validation that names the file and the problem.

Volumes are handled as ``SimpleITK.Image`` (physical space: origin, spacing in mm, direction)
and as numpy arrays in SimpleITK's (z, y, x) index order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .atomic import atomic_file
from .errors import VCEInputError

#: The files of one patient in the raw and registered layouts: T1, T2 and T1C are required
#: (:data:`vce.io.cohort.REQUIRED`), the rest optional. ``T1C_clean`` (noise-free T1C, T1C's grid)
#: and ``wm`` (normal-appearing white-matter mask, T2 grid) exist for synthetic patients only.
PATIENT_FILES = {
    "T1": "T1.nii.gz", "T2": "T2.nii.gz", "T1C": "T1C.nii.gz", "mask": "tumor_mask.nii.gz",
    "T1C_clean": "T1C_clean.nii.gz", "wm": "wm_mask.nii.gz",
}
#: The optional files a synthetic cohort adds (absent from real cohorts).
SYNTHETIC_FILES: tuple[str, ...] = ("T1C_clean", "wm")


def read_volume(path: str | Path, *, what: str = "volume", allow_constant: bool = False) -> sitk.Image:
    """Read a 3D image and check it is usable (exists, readable, 3D scalar, finite, not constant)."""
    path = Path(path)
    if not path.is_file():
        raise VCEInputError(f"{path}: missing {what} file")
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unreadable"
        raise VCEInputError(f"{path}: cannot read {what} as an image ({first})") from exc
    if img.GetDimension() == 3 and not _nifti_data_finite(path, what):
        raise VCEInputError(f"{path}: {what} contains NaN or Inf values")
    check_volume(img, path, what=what, allow_constant=allow_constant)
    return img


def check_volume(img: sitk.Image, where: str | Path, *, what: str = "volume", allow_constant: bool = False) -> None:
    """Raise :class:`VCEInputError` (naming ``where``) unless ``img`` is 3D scalar, finite and not constant."""
    if img.GetDimension() != 3 or img.GetNumberOfComponentsPerPixel() != 1:
        raise VCEInputError(
            f"{where}: {what} must be a 3D scalar volume, got {img.GetDimension()}D with "
            f"{img.GetNumberOfComponentsPerPixel()} component(s)"
        )
    arr = sitk.GetArrayViewFromImage(img)
    if not np.all(np.isfinite(arr)):
        raise VCEInputError(f"{where}: {what} contains NaN or Inf values")
    if not allow_constant and float(arr.max()) == float(arr.min()):
        raise VCEInputError(f"{where}: {what} is constant (all voxels = {float(arr.max())})")


def _nifti_data_finite(path: Path, what: str) -> bool:
    """Check a NIfTI file's stored voxels with nibabel: ITK silently replaces NaN/Inf on reading
    and tolerates a truncated gzip stream, both of which must be refused."""
    if not path.name.endswith((".nii", ".nii.gz")):
        return True
    import nibabel as nib

    try:
        data = np.asanyarray(nib.load(str(path)).dataobj)
    except Exception as exc:  # noqa: BLE001 - truncated gzip, short data, bad header
        raise VCEInputError(f"{path}: cannot read {what}: truncated or corrupt NIfTI ({exc})") from exc
    return not np.issubdtype(data.dtype, np.floating) or bool(np.all(np.isfinite(data)))


def write_volume(img: sitk.Image, path: str | Path, description: str | None = None) -> None:
    """Write ``img`` to ``path`` atomically (compressed NIfTI when the name ends in .nii.gz).

    ``description`` (at most 79 characters) goes into the NIfTI header's ``descrip`` field.
    """
    suffix = ".nii.gz" if str(path).endswith(".nii.gz") else Path(path).suffix
    with atomic_file(path, suffix=suffix) as tmp:
        sitk.WriteImage(img, str(tmp), useCompression=str(path).endswith(".gz"))
        if description is not None:
            import nibabel as nib

            nii = nib.load(str(tmp), mmap=False)  # read fully: the file is overwritten below
            nii = nib.Nifti1Image(np.asanyarray(nii.dataobj), nii.affine, nii.header)
            nii.header["descrip"] = description[:79].encode()
            nib.save(nii, str(tmp))


def to_uint12(arr: np.ndarray) -> np.ndarray:
    """Round and clip to the 12-bit scanner range [0, 4095] as int16."""
    return np.clip(np.rint(arr), 0, 4095).astype(np.int16)
