"""NIfTI volumes via SimpleITK, with validation that names the file and the problem.

Volumes are handled as ``SimpleITK.Image`` (physical space: origin, spacing in mm, direction)
and as numpy arrays in SimpleITK's (z, y, x) index order.
"""

from __future__ import annotations

import hashlib
import math
import os
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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


#: The pipeline's intensity range: 12-bit scanner units. Volumes are stored, predictions clipped
#: and metrics scored in [0, 4095] (``vce.metrics.similarity.DATA_RANGE``, ``to_uint12``).
SCANNER_RANGE = (0.0, 4095.0)
#: How far past :data:`SCANNER_RANGE` a value may lie and still count as inside (float rounding
#: of interpolated, registered volumes; half a scanner unit).
RANGE_SLACK = 0.5
#: Compressed bytes read, and decompressed bytes produced, per step of :func:`header_size_problem`.
_GZ_CHUNK = 1 << 20


def read_volume(
    path: str | Path, *, what: str = "volume", allow_constant: bool = False, scanner_range: bool = False
) -> sitk.Image:
    """Read a 3D image and check it is usable (exists, header consistent with the file size, readable,
    3D scalar, finite, positive finite spacing, not constant; with ``scanner_range`` also intensities
    in :data:`SCANNER_RANGE`). Every refusal names ``path`` and ``what``."""
    path = Path(path)
    if not path.is_file():
        raise VCEInputError(f"{path}: missing {what} file")
    problem = header_size_problem(path) or header_spacing_problem(path)
    if problem:
        raise VCEInputError(f"{path}: {what}: {problem}")
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unreadable"
        raise VCEInputError(f"{path}: cannot read {what} as an image ({first})") from exc
    if img.GetDimension() == 3 and not _nifti_data_finite(path, what):
        raise VCEInputError(f"{path}: {what} contains NaN or Inf values")
    check_volume(img, path, what=what, allow_constant=allow_constant)
    problem = spacing_problem(img.GetSpacing())
    if problem is None and scanner_range:
        arr = sitk.GetArrayViewFromImage(img)
        problem = intensity_problem(float(arr.min()), float(arr.max()))
    if problem:
        raise VCEInputError(f"{path}: {what}: {problem}")
    return img


def nifti_header(path: str | Path) -> Any | None:
    """The header of a ``.nii`` / ``.nii.gz`` file exactly as stored (nibabel, no fix-ups such as
    "setting 0 dims to 1"); None for other formats. Raises :class:`VCEInputError` when unreadable."""
    import gzip

    import nibabel as nib

    path = Path(path)
    if not path.name.endswith((".nii", ".nii.gz")):
        return None
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read(540)
    except (OSError, EOFError, zlib.error) as exc:
        raise VCEInputError(f"{path}: cannot read the NIfTI header ({exc})") from exc
    if len(raw) < 348:
        raise VCEInputError(f"{path}: not a NIfTI file (only {len(raw)} header bytes, need 348)")
    import io

    size = int.from_bytes(raw[:4], "little")
    size = size if size in (348, 540) else int.from_bytes(raw[:4], "big")
    klass = nib.Nifti2Header if size == 540 else nib.Nifti1Header
    try:
        hdr = klass.from_fileobj(io.BytesIO(raw), check=False)
    except Exception as exc:  # noqa: BLE001 - nibabel raises several types for a bad header
        raise VCEInputError(f"{path}: not a valid NIfTI header ({exc})") from exc
    if bytes(hdr["magic"]).rstrip(b"\0") not in (b"n+1", b"n+2"):
        raise VCEInputError(f"{path}: not a NIfTI file (no 'n+1' magic in its header)")
    return hdr


def _claimed_voxel_bytes(hdr: Any) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, voxel bytes) a NIfTI header claims; ValueError when its dims/datatype are invalid."""
    dim = [int(d) for d in hdr["dim"]]
    if not 1 <= dim[0] <= 7 or any(d < 1 for d in dim[1 : dim[0] + 1]):
        raise ValueError(f"invalid dimensions dim={dim[: max(1, min(dim[0], 7)) + 1]}")
    shape = tuple(dim[1 : dim[0] + 1])
    try:
        dtype = hdr.get_data_dtype()
    except Exception as exc:  # noqa: BLE001 - unknown datatype code
        raise ValueError(f"unsupported datatype code {int(hdr['datatype'])}") from exc
    return shape, dtype, math.prod(shape) * dtype.itemsize


def header_size_problem(path: str | Path) -> str | None:
    """What is wrong when a NIfTI header claims more voxel data than the file holds, checked before
    anything allocates it (a 38 KB file whose header claims 3.2 GB must not cost 3.2 GB of memory).

    ``.nii``: ``vox_offset + prod(shape) * bytes per voxel`` against the file size. ``.nii.gz``:
    the stream is decompressed in 1 MiB steps, counting bytes (memory stays bounded) and stopping
    as soon as the claimed size is reached (the gzip ISIZE trailer is not trusted: it is the size
    modulo 4 GiB and a crafted file can state anything). None when consistent or not NIfTI."""
    path = Path(path)
    hdr = nifti_header(path)
    if hdr is None:
        return None
    try:
        shape, dtype, nbytes = _claimed_voxel_bytes(hdr)
    except ValueError as exc:
        return f"NIfTI header is not usable: {exc}"
    vox_offset = float(hdr["vox_offset"])
    if not math.isfinite(vox_offset) or vox_offset < 0:
        return f"NIfTI header is not usable: vox_offset {vox_offset}"
    offset = max(int(vox_offset), int(hdr.sizeof_hdr))
    need = offset + nbytes
    gz = path.name.endswith(".gz")
    have = _gunzipped_size(path, need) if gz else os.path.getsize(path)
    if have is None:
        return "corrupt gzip stream (not a readable .nii.gz)"
    if have >= need:
        return None
    return (f"NIfTI header claims {'x'.join(map(str, shape))} {dtype} voxels = {_human(nbytes)} ({need} bytes with "
            f"the {offset}-byte header), but the file holds {have} bytes{' decompressed' if gz else ''}: "
            "truncated file or corrupt header")


def _gunzipped_size(path: Path, limit: int) -> int | None:
    """Decompressed size of a gzip file, counted in bounded steps and stopping at ``limit``
    (then ``>= limit``); concatenated gzip members are followed. None when the stream is corrupt."""
    total = 0
    with open(path, "rb") as fh:
        d = zlib.decompressobj(31)
        pending = b""
        try:
            while total < limit:
                if not pending:
                    pending = fh.read(_GZ_CHUNK)
                    if not pending:
                        break
                total += len(d.decompress(pending, _GZ_CHUNK))
                if d.eof:
                    pending = d.unused_data
                    if pending and not pending.startswith(b"\x1f\x8b"):
                        break  # trailing padding after the last member
                    d = zlib.decompressobj(31)
                else:
                    pending = d.unconsumed_tail
        except zlib.error:
            return total if total >= limit else None
    return total


def _human(n: int) -> str:
    """``n`` bytes as a short human size (KB/MB/GB are powers of 1000)."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def spacing_problem(spacing: Sequence[float], source: str = "voxel spacing") -> str | None:
    """What is wrong with a voxel spacing (mm): any axis zero or missing, negative, NaN or Inf; None if usable."""
    bad = []
    for axis, v in zip("xyz", spacing):
        v = float(v)
        if not math.isfinite(v):
            bad.append(f"{axis} is {v}")
        elif v == 0:
            bad.append(f"{axis} is zero (missing)")
        elif v < 0:
            bad.append(f"{axis} is negative")
    if len(spacing) < 3:
        bad.append(f"only {len(spacing)} axes given")
    if not bad:
        return None
    shown = ", ".join(f"{float(v):g}" for v in spacing)
    return (f"{source} [{shown}] mm is not usable ({'; '.join(bad)}): every axis needs a positive, finite "
            "spacing in mm; fix the file's header")


def header_spacing_problem(path: str | Path) -> str | None:
    """:func:`spacing_problem` of a NIfTI file's stored ``pixdim[1:4]``: ITK silently turns a zero or
    NaN pixdim into 1 mm (and a negative one into its absolute value), so the header is checked
    as written. None for other formats (their spacing is checked after reading)."""
    hdr = nifti_header(path)
    if hdr is None:
        return None
    ndim = int(hdr["dim"][0])
    return spacing_problem([float(v) for v in hdr["pixdim"][1 : 1 + min(max(ndim, 3), 3)]], "voxel spacing (NIfTI pixdim)")


def intensity_problem(lo: float, hi: float) -> str | None:
    """What is wrong when intensities ``lo .. hi`` leave :data:`SCANNER_RANGE` (beyond :data:`RANGE_SLACK`),
    with how to fix it; None when inside."""
    r0, r1 = SCANNER_RANGE
    if lo >= r0 - RANGE_SLACK and hi <= r1 + RANGE_SLACK:
        return None
    msg = (f"intensities {lo:g} .. {hi:g} are outside the pipeline's 12-bit scanner range [{r0:g}, {r1:g}] "
           "(volumes are stored, predicted and scored in that range, so the study would be silently wrong)")
    if lo < r0 - RANGE_SLACK:
        msg += ("; negative values are not MR magnitudes (signed or CT-like data?): convert to magnitudes in "
                f"[{r0:g}, {r1:g}] before importing")
    if hi > r1 + RANGE_SLACK:
        msg += f"; rescale into [{r0:g}, {r1:g}], e.g. re-import with `vce import ... --rescale-12bit`"
    return msg


def resample_mask(mask: sitk.Image, ref: sitk.Image) -> tuple[sitk.Image, float]:
    """``mask`` on ``ref``'s grid by nearest neighbour in physical space (uint8, 0 where ``ref``'s
    voxels fall outside the mask's volume), and the fraction of ``ref``'s voxels inside that volume
    (0: the two do not overlap at all)."""
    identity = sitk.Transform()
    out = sitk.Resample(sitk.Cast(mask, sitk.sitkUInt8), ref, identity, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    ones = sitk.Image(mask.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(mask)
    cover = sitk.Resample(ones, ref, identity, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return out, float(sitk.GetArrayViewFromImage(cover).mean())


def voxel_fingerprint(img: sitk.Image) -> str:
    """sha256 of a volume's voxel values (as float32) and shape: equal for copies of one scan also
    after re-compression or an integer/float change; geometry is not included."""
    arr = np.ascontiguousarray(sitk.GetArrayViewFromImage(img), dtype=np.float32)
    h = hashlib.sha256(repr(arr.shape).encode())
    h.update(arr.tobytes())
    return h.hexdigest()


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
