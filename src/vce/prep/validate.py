"""``vce validate``: check a raw cohort before running the study, without changing it.

Per patient of ``<raw>/<pid>/`` (the layout of :mod:`vce.io.cohort`) it reports every problem it
finds, not only the first, each as an issue ``(patient, file, severity, check, message)``:

errors (the study would refuse the cohort): ``patient_id`` (unsafe directory name),
``duplicate_id`` (ids equal up to case), ``duplicate_patient`` (two ids whose T1, T2 or T1C hold
identical voxels: one patient under two ids), ``missing`` modality, ``unreadable`` (not an
image, empty), ``truncated`` (NIfTI data shorter than its header says, checked before reading),
``spacing`` (a voxel spacing that is zero/missing, negative, NaN or Inf), ``not_3d`` (e.g. 4D),
``not_scalar``, ``non_finite`` (NaN/Inf), ``constant`` (e.g. all zero), ``intensity_range``
(T1/T2/T1C outside the 12-bit scanner range [0, 4095], e.g. a 16-bit or signed cohort),
``mask_outside`` (tumour mask not overlapping the T2 volume at all), ``clean_grid`` (the optional
noise-free ``T1C_clean.nii.gz`` of a synthetic patient not on the T1C's grid), ``wm_grid`` (the
optional white-matter mask ``wm_mask.nii.gz`` not on the T2 grid), ``no_patients``,
``cohort_too_small`` (the configured split needs more). The optional files (tumour mask,
T1C_clean, wm_mask) may be absent.

warnings (the study runs, but look): ``tiny_fov`` (in-plane field of view below ``min_fov_mm``),
``fov_mismatch`` (physical extent of T1/T1C differs from T2 by more than ``fov_tolerance``,
relative, on some axis), ``mask_grid`` (tumour mask on another grid than T2: ``register``
resamples it onto the T2 grid), ``mask_values`` (mask not 0/1), ``empty_mask``,
``unexpected_file`` (an image file or folder with another name, e.g. ``t1.nii.gz`` or ``T1.nii``:
probably a misnamed modality).

The integrity pass (:data:`INTEGRITY_CHECKS`: truncated headers, spacing, intensity range,
duplicate patients, masks outside the T2 volume) is also enforced by ``vce register`` (on the
raw cohort) and ``vce split`` (on the registered one) through :func:`check_integrity`, before
either does any work, so no step runs on a cohort that validate would refuse for these reasons.

The report is written as JSON and CSV (atomically); nothing else is written.
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from ..io.atomic import write_json, write_text
from ..io.cohort import REQUIRED, case_duplicates, check_patient_id, content_duplicates, duplicate_message
from ..io.errors import VCEInputError
from ..io.nifti import (
    PATIENT_FILES,
    header_size_problem,
    header_spacing_problem,
    intensity_problem,
    resample_mask,
    spacing_problem,
    voxel_fingerprint,
)

logger = logging.getLogger(__name__)

#: files a patient directory may hold besides the volumes
KNOWN_EXTRA = {"motion.json", "transforms.json", "qc.json"}
#: image-like names that, when not one of the expected files, probably are a misnamed modality
_IMAGE_EXT = (".nii", ".nii.gz", ".mha", ".mhd", ".nrrd", ".dcm")
#: The checks of the integrity pass that ``register`` and ``split`` enforce too (:func:`check_integrity`).
INTEGRITY_CHECKS = frozenset({"truncated", "spacing", "intensity_range", "duplicate_patient", "mask_outside"})


@dataclass(frozen=True)
class Issue:
    patient: str
    file: str
    severity: str  # "error" | "warning"
    check: str
    message: str


def physical_extent(img: sitk.Image) -> np.ndarray:
    """(3,) extent in mm along the world axes: |direction| @ (size * spacing)."""
    d = np.abs(np.asarray(img.GetDirection(), float).reshape(3, 3))
    return d @ (np.asarray(img.GetSize(), float) * np.asarray(img.GetSpacing(), float))


def _header_problem(path: Path) -> tuple[str, str] | None:
    """(check, message) when the file's header alone shows it unusable: not a NIfTI header
    (``unreadable``), less data than the header claims (``truncated``), a bad ``pixdim``
    (``spacing``). Nothing is allocated from the header before this passes."""
    try:
        size = header_size_problem(path)
        if size:
            return "truncated", size
        spacing = header_spacing_problem(path)
    except VCEInputError as exc:
        return "unreadable", str(exc).removeprefix(f"{path}: ")
    return ("spacing", spacing) if spacing else None


def _nifti_content_problem(path: Path) -> tuple[str, str] | None:
    """(check, message) from the stored NIfTI voxels (nibabel): truncated data, not 3D, NaN/Inf."""
    import nibabel as nib

    try:
        data = np.asanyarray(nib.load(str(path)).dataobj)
    except Exception as exc:  # noqa: BLE001 - truncated gzip, short data
        return "truncated", f"truncated or corrupt NIfTI ({exc})"
    if data.ndim != 3 and not (data.ndim == 4 and data.shape[3] == 1):  # (x, y, z, 1) is 3D
        return "not_3d", f"must be a 3D volume, got {data.ndim}D NIfTI of shape {data.shape}"
    if np.issubdtype(data.dtype, np.floating) and not np.all(np.isfinite(data)):
        return "non_finite", f"{int(np.size(data) - np.isfinite(data).sum())} NaN/Inf voxel(s)"
    return None


def _read(path: Path, pid: str, what: str, issues: list[Issue]) -> sitk.Image | None:
    """Read ``path`` and run the content checks; append issues; the image if usable as 3D."""
    def err(check: str, msg: str) -> None:
        issues.append(Issue(pid, str(path), "error", check, f"{what}: {msg}"))

    problem = _header_problem(path)
    if problem is None:
        try:
            img = sitk.ReadImage(str(path))
        except RuntimeError as exc:
            last = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unreadable"
            problem = "unreadable", f"cannot read as an image ({last})"
    if problem is None and path.name.endswith((".nii", ".nii.gz")):
        problem = _nifti_content_problem(path)
    if problem is None and img.GetDimension() != 3:
        problem = "not_3d", f"must be a 3D volume, got {img.GetDimension()}D (size {img.GetSize()})"
    if problem is None and img.GetNumberOfComponentsPerPixel() != 1:
        problem = "not_scalar", f"has {img.GetNumberOfComponentsPerPixel()} components per voxel, need 1"
    if problem is None and not np.all(np.isfinite(sitk.GetArrayViewFromImage(img))):
        problem = "non_finite", "contains NaN/Inf"
    if problem is None and spacing_problem(img.GetSpacing()):
        problem = "spacing", spacing_problem(img.GetSpacing())
    if problem is not None:
        err(*problem)
        return None
    return img


def _check_mask_content(pid: str, path: Path, arr: np.ndarray, hi: float, issues: list[Issue]) -> None:
    """Warn about an all-zero tumour mask (max ``hi``) or one with values other than 0/1."""
    vals = np.unique(arr)
    if hi == 0:
        issues.append(Issue(pid, str(path), "warning", "empty_mask", "tumour mask is all zero"))
    elif not set(vals.tolist()) <= {0, 1}:
        issues.append(Issue(pid, str(path), "warning", "mask_values", f"tumour mask values {vals[:6].tolist()}... are not 0/1"))


def _check_modality_content(
    pid: str, path: Path, what: str, img: sitk.Image, lo: float, hi: float, min_fov_mm: float, issues: list[Issue]
) -> bool:
    """Constant and intensity-range (errors) and small-field-of-view (warning) checks of one modality
    with value range ``lo .. hi``; False if constant."""
    if lo == hi:
        issues.append(Issue(pid, str(path), "error", "constant", f"{what} is constant (all voxels = {lo:g})"))
        return False
    problem = intensity_problem(lo, hi)
    if problem:
        issues.append(Issue(pid, str(path), "error", "intensity_range", f"{what}: {problem}"))
    fov = np.asarray(img.GetSize()[:2], float) * np.asarray(img.GetSpacing()[:2], float)
    if fov.min() < min_fov_mm:
        issues.append(Issue(pid, str(path), "warning", "tiny_fov",
                            f"{what} in-plane field of view {fov[0]:.0f} x {fov[1]:.0f} mm is below {min_fov_mm:g} mm"))
    return True


#: Optional files of a patient (may be absent) and how issues name them.
OPTIONAL = {"mask": "tumour mask", "T1C_clean": "noise-free T1C", "wm": "white-matter mask"}


def _read_volumes(
    pdir: Path, pid: str, min_fov_mm: float, issues: list[Issue], fingerprints: dict[str, str]
) -> dict[str, sitk.Image]:
    """Read and check each modality and the optional files; the usable images by PATIENT_FILES key.

    ``fingerprints`` receives each readable modality's :func:`voxel_fingerprint` (duplicate
    patients). The noise-free T1C and the white-matter mask are only checked for readability
    here (their grids in :func:`_check_optional_grids`)."""
    imgs: dict[str, sitk.Image] = {}
    for mod in (*REQUIRED, *OPTIONAL):
        path = pdir / PATIENT_FILES[mod]
        what = OPTIONAL.get(mod, mod)
        if not path.exists():
            if mod not in OPTIONAL:
                issues.append(Issue(pid, str(path), "error", "missing", f"{what} file {path.name} is missing"))
            continue
        img = _read(path, pid, what, issues)
        if img is None:
            continue
        arr = sitk.GetArrayViewFromImage(img)
        lo, hi = float(arr.min()), float(arr.max())
        if mod in REQUIRED:
            fingerprints[mod] = voxel_fingerprint(img)
        if mod == "mask":
            _check_mask_content(pid, path, arr, hi, issues)
        elif mod not in OPTIONAL and not _check_modality_content(pid, path, what, img, lo, hi, min_fov_mm, issues):
            continue
        imgs[mod] = img
    return imgs


def _same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    """Same size, spacing (1e-3 mm), origin (1e-2 mm) and direction (1e-4)."""
    return (a.GetSize() == b.GetSize() and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-3)
            and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-2) and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-4))


def _check_optional_grids(pdir: Path, pid: str, imgs: dict[str, sitk.Image], issues: list[Issue]) -> None:
    """Errors ``clean_grid`` (T1C_clean not on the T1C's grid) and ``wm_grid`` (wm_mask not on the T2 grid)."""
    for key, ref_key, check in (("T1C_clean", "T1C", "clean_grid"), ("wm", "T2", "wm_grid")):
        if key in imgs and ref_key in imgs and not _same_grid(imgs[key], imgs[ref_key]):
            a, b = imgs[key], imgs[ref_key]
            issues.append(Issue(pid, str(pdir / PATIENT_FILES[key]), "error", check,
                                f"{PATIENT_FILES[key]} grid (size {a.GetSize()}, spacing {np.round(a.GetSpacing(), 3).tolist()}) "
                                f"is not the {ref_key} grid (size {b.GetSize()}, spacing {np.round(b.GetSpacing(), 3).tolist()})"))


def _check_against_t2(pdir: Path, pid: str, imgs: dict[str, sitk.Image], fov_tolerance: float, issues: list[Issue]) -> None:
    """Compare the T1/T1C extents and the tumour mask grid with T2's (nothing without a usable T2)."""
    t2 = imgs.get("T2")
    if t2 is None:
        return
    ref = physical_extent(t2)
    for mod in ("T1", "T1C"):
        if mod in imgs:
            ext = physical_extent(imgs[mod])
            rel = np.abs(ext - ref) / np.maximum(ref, 1e-6)
            if rel.max() > fov_tolerance:
                issues.append(Issue(pid, str(pdir / PATIENT_FILES[mod]), "warning", "fov_mismatch",
                                    f"{mod} extent {np.round(ext, 1).tolist()} mm differs from T2 extent "
                                    f"{np.round(ref, 1).tolist()} mm by {100 * rel.max():.0f}% (> {100 * fov_tolerance:g}%)"))
    if "mask" in imgs and not _same_grid(imgs["mask"], t2):
        issues.append(_mask_grid_issue(pid, pdir / PATIENT_FILES["mask"], imgs["mask"], t2))


def grid_text(img: sitk.Image) -> str:
    """Size, spacing and origin of ``img`` for messages."""
    return (f"size {list(img.GetSize())}, spacing {np.round(img.GetSpacing(), 3).tolist()} mm, "
            f"origin {np.round(img.GetOrigin(), 1).tolist()} mm")


def mask_outside_message(mask: sitk.Image, t2: sitk.Image) -> str:
    """Why a tumour mask that does not overlap the T2 volume is refused (validate and register)."""
    return (f"tumour mask ({grid_text(mask)}) does not overlap the T2 volume (T2 {grid_text(t2)}) at all: "
            "no T2 voxel lies inside it; it belongs to another scan or lost its geometry")


def _mask_grid_issue(pid: str, path: Path, mask: sitk.Image, t2: sitk.Image) -> Issue:
    """A tumour mask on another grid than T2: a ``mask_grid`` warning (register resamples it) or,
    when it does not overlap the T2 volume at all, a ``mask_outside`` error."""
    _, covered = resample_mask(mask, t2)
    if covered == 0:
        return Issue(pid, str(path), "error", "mask_outside", mask_outside_message(mask, t2))
    return Issue(pid, str(path), "warning", "mask_grid",
                 f"tumour mask grid ({grid_text(mask)}) is not the T2 grid ({grid_text(t2)}): register resamples it "
                 f"onto the T2 grid (nearest neighbour, physical space); it covers {100 * covered:.0f}% of the T2 volume")


def _check_unexpected_files(pdir: Path, pid: str, issues: list[Issue]) -> None:
    """Warn about image files or folders with another name than the expected ones (misnamed modality?)."""
    expected = set(PATIENT_FILES.values()) | KNOWN_EXTRA
    for f in sorted(pdir.iterdir()):
        if f.name.startswith(".") or f.name in expected or not (f.is_dir() or f.name.lower().endswith(_IMAGE_EXT)):
            continue  # other files (motion.json, notes, transforms) are fine
        issues.append(Issue(pid, str(f), "warning", "unexpected_file",
                            f"unexpected {'folder' if f.is_dir() else 'file'} {f.name} (ignored; expected {', '.join(PATIENT_FILES.values())})"))


def _validate_patient(
    pdir: Path, min_fov_mm: float, fov_tolerance: float
) -> tuple[list[Issue], dict[str, str]]:
    """Issues of one patient directory and its modalities' voxel fingerprints."""
    pid = pdir.name
    issues: list[Issue] = []
    try:
        check_patient_id(pid)
    except VCEInputError as exc:
        issues.append(Issue(pid, str(pdir), "error", "patient_id", str(exc)))
    fingerprints: dict[str, str] = {}
    imgs = _read_volumes(pdir, pid, min_fov_mm, issues, fingerprints)
    _check_against_t2(pdir, pid, imgs, fov_tolerance, issues)
    _check_optional_grids(pdir, pid, imgs, issues)
    _check_unexpected_files(pdir, pid, issues)
    return issues, fingerprints


def validate_patient(
    pdir: Path, *, min_fov_mm: float = 100.0, fov_tolerance: float = 0.2
) -> tuple[list[Issue], bool]:
    """Issues of one patient directory, and whether it is usable (no errors)."""
    issues, _ = _validate_patient(Path(pdir), min_fov_mm, fov_tolerance)
    return issues, not any(i.severity == "error" for i in issues)


def _cohort_issues(
    pdirs: list[Path], min_fov_mm: float, fov_tolerance: float
) -> dict[str, list[Issue]]:
    """Every patient's issues, with the cohort-level ones (ids equal up to case, one patient under
    two ids by voxel content) added to the later patient of each pair."""
    issues: dict[str, list[Issue]] = {}
    fingerprints: dict[str, dict[str, str]] = {}
    for p in pdirs:
        issues[p.name], fingerprints[p.name] = _validate_patient(p, min_fov_mm, fov_tolerance)
    for first, later in case_duplicates(p.name for p in pdirs):
        issues[later].append(Issue(later, str(pdirs[0].parent / later), "error", "duplicate_id",
                                   f"patient ids {first} and {later} differ only in case"))
    for first, later, mods in content_duplicates(fingerprints):
        issues[later].append(Issue(later, str(pdirs[0].parent / later), "error", "duplicate_patient",
                                   duplicate_message(first, later, mods)))
    return issues


def validate_cohort(
    raw: str | Path,
    *,
    min_fov_mm: float = 100.0,
    fov_tolerance: float = 0.2,
    split: Any = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Validate every patient of ``raw``; the report as a dict (see module docstring).

    ``split`` (a :class:`vce.config.SplitConfig`), if given, adds the check that the usable
    patients can be split as configured.
    """
    raw = Path(raw)
    if not raw.is_dir():
        raise VCEInputError(f"{raw}: cohort directory not found")
    pdirs = sorted(p for p in raw.iterdir() if p.is_dir() and not p.name.startswith("."))
    cohort: list[Issue] = []
    patients: dict[str, dict[str, Any]] = {}
    for pid, issues in _cohort_issues(pdirs, min_fov_mm, fov_tolerance).items():
        sev = {i.severity for i in issues}
        patients[pid] = {"status": "error" if "error" in sev else "warning" if sev else "ok",
                         "issues": [asdict(i) for i in issues]}
    usable = [pid for pid, p in patients.items() if p["status"] != "error"]
    if not pdirs:
        cohort.append(Issue("*", str(raw), "error", "no_patients", "no patient directories found"))
    elif split is not None:
        from .split import assign_split

        try:
            assign_split(usable, split.test_ratio, seed, getattr(split, "folds", 0), getattr(split, "fold", 0))
        except VCEInputError as exc:
            cohort.append(Issue("*", str(raw), "error", "cohort_too_small", f"{len(usable)} usable patient(s): {exc}"))
    all_issues = [i for p in patients.values() for i in p["issues"]] + [asdict(i) for i in cohort]
    n_err = sum(i["severity"] == "error" for i in all_issues)
    return {
        "raw": str(raw),
        "settings": {"min_fov_mm": min_fov_mm, "fov_tolerance": fov_tolerance},
        "n_patients": len(pdirs),
        "n_usable": len(usable),
        "n_errors": n_err,
        "n_warnings": len(all_issues) - n_err,
        "ok": n_err == 0,
        "patients": patients,
        "cohort": [asdict(i) for i in cohort],
    }


def check_integrity(cohort_dir: str | Path, pids: list[str], *, step: str) -> None:
    """The integrity pass of ``vce validate`` (:data:`INTEGRITY_CHECKS`) as ``step`` enforces it
    before doing any work: raise one :class:`VCEInputError` naming every patient, file and problem.

    ``register`` runs it on the raw cohort and ``split`` on the registered one, so a truncated
    header, an unusable spacing, intensities outside [0, 4095], one patient under two ids or a
    tumour mask outside the T2 volume stop every step the same way. Other problems (missing or
    unreadable files, ...) are left to the step's own reading, which names them as before."""
    cohort_dir = Path(cohort_dir)
    found = _cohort_issues([cohort_dir / p for p in pids], 100.0, 0.2) if pids else {}
    bad = [i for issues in found.values() for i in issues if i.severity == "error" and i.check in INTEGRITY_CHECKS]
    if not bad:
        return
    lines = [f"{i.file}: patient {i.patient}: {i.message}" for i in bad]
    if len(lines) == 1:
        raise VCEInputError(f"{lines[0]} ({step} refuses what `vce validate` reports as {bad[0].check})")
    raise VCEInputError(f"{step} refuses {cohort_dir}: {len(lines)} integrity problem(s) (`vce validate` reports them too):\n  "
                        + "\n  ".join(lines))


def report_rows(report: dict[str, Any]) -> list[dict[str, str]]:
    """All issues as flat rows (patient, file, severity, check, message)."""
    return [i for p in report["patients"].values() for i in p["issues"]] + list(report["cohort"])


def write_report(report: dict[str, Any], json_path: str | Path) -> tuple[Path, Path]:
    """Write ``report`` to ``json_path`` and its issues to the same name with ``.csv``, atomically."""
    json_path = Path(json_path)
    csv_path = json_path.with_suffix(".csv")
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=[f for f in Issue.__dataclass_fields__], lineterminator="\n")
    w.writeheader()
    w.writerows(report_rows(report))
    write_json(json_path, report)
    write_text(csv_path, buf.getvalue())
    return json_path, csv_path


def format_summary(report: dict[str, Any]) -> str:
    """Console summary: one line per patient with problems, then the totals."""
    lines = []
    for pid, p in report["patients"].items():
        if p["status"] == "ok":
            lines.append(f"{pid:>12}  ok")
            continue
        for i in p["issues"]:
            lines.append(f"{pid:>12}  {i['severity']:<7} {i['check']:<15} {i['message']}")
    for i in report["cohort"]:
        lines.append(f"{'(cohort)':>12}  {i['severity']:<7} {i['check']:<15} {i['message']}")
    lines.append(f"{report['n_patients']} patient(s), {report['n_usable']} usable: "
                 f"{report['n_errors']} error(s), {report['n_warnings']} warning(s)")
    return "\n".join(lines)
