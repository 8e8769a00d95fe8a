"""``vce import``: bring real patients (NIfTI files or DICOM series) into the raw cohort layout.

```
<src>/<any folder name>/T1.nii.gz | T1/ (DICOM) | DICOM series anywhere below, chosen by rule
<src>/<any folder name>/T2..., T1C...            same
<src>/<any folder name>/tumor_mask.nii.gz        optional
        |
        v
<out>/<pseudonym>/{T1,T2,T1C}.nii.gz [tumor_mask.nii.gz]    pseudonym P0001, P0002, ...
<out>/import.json                                           orientation, sizes, spacings, 12-bit rescale factors (no identifiers)
<mapping>                                                   pseudonym <-> source folder / DICOM PatientID
```

De-identification: only voxel data and geometry (origin, spacing, direction) are written; the
NIfTI text fields (``descrip``, ``aux_file``, ``intent_name``, ``db_name``) are set to fixed safe
values and no header extension is written. Pseudonyms are sequential (``P0001``...) in sorted
order of the source folder names, so they carry no information and need no secret; the mapping
(JSON) is the only link back, it is written next to the source data (default
``<src>/.vce_pseudonyms.json``), never inside ``<out>``, and is re-used on re-import so a patient
keeps their pseudonym (matched by source folder name, else by DICOM PatientID). Log messages name
pseudonyms only; error messages name the source folder (the user's own name for it) and series by
SeriesNumber, DICOM Modality and folder, never a DICOM text field (SeriesDescription,
ProtocolName, PatientName, ... can carry identifiers). Every unreadable file of every patient is
reported together (relative to ``src``, with the count).

Intensities: the pipeline works in 12-bit scanner units [0, 4095]. With ``rescale_12bit`` each
patient's modality whose maximum exceeds 4095 is scaled linearly by ``4095 / max`` (zero stays
zero); the factor is recorded per modality in ``import.json``. Without it such volumes are
imported as they are (with a warning) and ``vce validate`` / ``register`` refuse them.

Every volume is reoriented with ``sitk.DICOMOrient`` to :data:`CANONICAL_ORIENTATION` (ITK "LPS",
identity direction; no resampling, spacing kept). ``<out>`` is written atomically: complete or
absent (a rerun replaces it as a whole).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from ..io.atomic import atomic_dir, atomic_file, write_json
from ..io.cohort import REQUIRED, case_duplicates, check_patient_id
from ..io.errors import VCEInputError
from ..io.images import (
    CANONICAL_ORIENTATION,
    DEFAULT_RULES,
    DicomSeries,
    SeriesRule,
    choose_series,
    list_dicom_series,
    read_dicom_series,
    relative_name,
    unreadable_message,
)
from ..io.nifti import PATIENT_FILES, SCANNER_RANGE, header_size_problem, intensity_problem, read_volume

logger = logging.getLogger(__name__)

MAPPING_NAME = ".vce_pseudonyms.json"
NIFTI_DESCRIPTION = "vce import (de-identified)"
_IMAGE_EXT = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd")
_PSEUDO = re.compile(r"^P(\d{4,})$")


@dataclass
class Source:
    """Where one modality of one patient comes from."""

    kind: str  # "file" | "dicom"
    path: Path
    series: DicomSeries | None = None


@dataclass
class Case:
    """One source folder resolved to its modality sources (headers only, nothing read yet)."""

    folder: Path
    sources: dict[str, Source] = field(default_factory=dict)
    patient_ids: set[str] = field(default_factory=set)


def default_mapping_path(src: str | Path) -> Path:
    return Path(src) / MAPPING_NAME


def _stem(name: str) -> str | None:
    low = name.lower()
    for ext in _IMAGE_EXT:
        if low.endswith(ext):
            return low[: -len(ext)]
    return None


def _probe_file(path: Path) -> str | None:
    """Why an image file cannot be read, from its header alone (nothing allocated); None when it can."""
    try:
        problem = header_size_problem(path)
    except VCEInputError as exc:
        return str(exc).removeprefix(f"{path}: ")
    if problem:
        return problem
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        last = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unreadable"
        return f"cannot read as an image ({last})"
    return None


def resolve_case(folder: Path, rules: dict[str, SeriesRule], unreadable: list[tuple[Path, str]] | None = None) -> Case:
    """Find the T1, T2, T1C (and optional tumour mask) sources of one source folder.

    Per modality, in order: an image file named like the modality (``T1.nii.gz``, ``t1c.nii``,
    case-insensitive), a sub-folder named like it (its DICOM series; by rule if several), else
    the DICOM series anywhere below ``folder`` chosen by the modality's rule. Unreadable files
    (image files whose header is unusable, corrupt or truncated DICOM files) are appended to
    ``unreadable`` when given (else they raise)."""
    bad: list[tuple[Path, str]] = [] if unreadable is None else unreadable
    n_bad = len(bad)
    case = Case(folder)
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    files = {_stem(p.name): p for p in entries if p.is_file() and _stem(p.name)}
    dirs = {p.name.lower(): p for p in entries if p.is_dir()}
    pool: list[DicomSeries] | None = None
    for mod in REQUIRED:
        what = f"{mod} of source folder {folder.name}"
        if mod.lower() in files:
            case.sources[mod] = Source("file", files[mod.lower()])
        elif mod.lower() in dirs:
            d = dirs[mod.lower()]
            series = list_dicom_series(d, bad)
            s = choose_series(series, rules[mod] if len(series) > 1 else None, where=str(d), what=what)
            case.sources[mod] = Source("dicom", d, s)
        else:
            if pool is None:
                pool = list_dicom_series(folder, bad)
            if not pool:
                raise VCEInputError(
                    f"{folder}: source folder {folder.name} has no {mod} (no {mod}.nii.gz, no {mod}/ folder, no DICOM series)"
                )
            s = choose_series(pool, rules[mod], where=str(folder), what=what)
            case.sources[mod] = Source("dicom", s.folder, s)
    if "tumor_mask" in files:
        case.sources["mask"] = Source("file", files["tumor_mask"])
    bad += [(src.path, why) for src in case.sources.values() if src.kind == "file" and (why := _probe_file(src.path))]
    if unreadable is None and len(bad) > n_bad:
        raise VCEInputError(f"{folder}: {unreadable_message(folder, bad)}")
    _check_chosen(folder, case)
    return case


def _check_chosen(folder: Path, case: Case) -> None:
    """Refuse one series chosen for two modalities, and series of several patients in one folder."""
    uids: dict[str, str] = {}
    for mod, src in case.sources.items():
        s = src.series
        if s is None:
            continue
        if s.uid in uids:
            raise VCEInputError(f"{folder}: the same {s.label} was chosen for {uids[s.uid]} and {mod}; adjust the series rules")
        uids[s.uid] = mod
        case.patient_ids |= s.patient_ids
    if len(case.patient_ids) > 1:
        raise VCEInputError(
            f"{folder}: the series chosen for source folder {folder.name} carry {len(case.patient_ids)} different "
            "PatientIDs (several patients in one folder?)"
        )


# --- pseudonym mapping ---------------------------------------------------------------------

def load_mapping(path: Path) -> list[dict[str, Any]]:
    """Entries ``{"pseudonym", "sources": [folder names], "patient_ids": [...]}`` ([] if absent)."""
    if not path.is_file():
        return []
    try:
        raw = json.loads(path.read_text())
        entries = raw["patients"]
        for e in entries:
            if not _PSEUDO.match(e["pseudonym"]) or not isinstance(e["sources"], list) or not isinstance(e["patient_ids"], list):
                raise ValueError(f"bad entry {e.get('pseudonym')!r}")
    except (ValueError, KeyError, TypeError) as exc:
        raise VCEInputError(f"{path}: not a valid pseudonym mapping ({exc})") from exc
    if len({e["pseudonym"] for e in entries}) != len(entries):
        raise VCEInputError(f"{path}: pseudonym mapping lists a pseudonym twice")
    return entries


def assign_pseudonyms(cases: list[Case], entries: list[dict[str, Any]], mapping_path: Path) -> dict[str, str]:
    """``{source folder name: pseudonym}``, re-using ``entries`` and extending them in place."""
    by_source = {s: e for e in entries for s in e["sources"]}
    by_pid = {p: e for e in entries for p in e["patient_ids"]}
    nxt = max((int(_PSEUDO.match(e["pseudonym"]).group(1)) for e in entries), default=0) + 1
    out: dict[str, str] = {}
    for c in cases:
        name = c.folder.name
        e = by_source.get(name)
        via_pid = {id(by_pid[p]): by_pid[p] for p in c.patient_ids if p in by_pid}
        if e is not None and via_pid and id(e) not in via_pid:
            raise VCEInputError(
                f"{c.folder}: source folder {name} is mapped to {e['pseudonym']} in {mapping_path}, but its DICOM "
                f"PatientID belongs to {next(iter(via_pid.values()))['pseudonym']}; fix the folder or the mapping"
            )
        if e is None and via_pid:
            e = next(iter(via_pid.values()))
            e["sources"].append(name)
        if e is None:
            e = {"pseudonym": f"P{nxt:04d}", "sources": [name], "patient_ids": []}
            nxt += 1
            entries.append(e)
        e["patient_ids"] = sorted(set(e["patient_ids"]) | c.patient_ids)
        out[name] = check_patient_id(e["pseudonym"])
    dup: dict[str, list[str]] = {}
    for name, p in out.items():
        dup.setdefault(p, []).append(name)
    clashes = {p: n for p, n in dup.items() if len(n) > 1}
    if clashes:
        p, names = next(iter(clashes.items()))
        raise VCEInputError(f"{mapping_path}: source folders {', '.join(names)} map to the same pseudonym {p} (same patient twice?)")
    return out


# --- writing -------------------------------------------------------------------------------

def write_deidentified(img: sitk.Image, path: Path) -> None:
    """Write ``img``'s voxels and geometry only to a .nii.gz, text header fields set to safe values."""
    import nibabel as nib

    arr = sitk.GetArrayFromImage(img)
    if arr.dtype == np.float64:
        arr = arr.astype(np.float32)
    clean = sitk.GetImageFromArray(arr)
    clean.CopyInformation(img)  # origin, spacing, direction only (no metadata)
    with atomic_file(path, suffix=".nii.gz") as tmp:
        sitk.WriteImage(clean, str(tmp), useCompression=True)
        nii = nib.load(str(tmp))
        hdr = nii.header.copy()
        hdr["descrip"] = NIFTI_DESCRIPTION.encode()
        for key in ("aux_file", "intent_name", "db_name", "data_type"):
            hdr[key] = b""
        del hdr.extensions[:]
        nib.save(nib.Nifti1Image(np.asanyarray(nii.dataobj), nii.affine, hdr), str(tmp))


def _read(source: Source, mod: str, pseudonym: str) -> sitk.Image:
    """Read, check and reorient one modality (``mod`` in T1, T2, T1C, mask)."""
    what = f"{'tumour mask' if mod == 'mask' else mod} ({pseudonym})"
    if source.kind == "file":
        img = read_volume(source.path, what=what, allow_constant=mod == "mask")
    else:
        img = read_dicom_series(source.series, what=what, allow_constant=mod == "mask")
    return sitk.DICOMOrient(img, CANONICAL_ORIENTATION)


def _inside(a: Path, b: Path) -> bool:
    a, b = a.resolve(), b.resolve()
    return a == b or b in a.parents


def _check_locations(src: Path, out: Path, mapping_path: Path) -> None:
    """Refuse a missing ``src``, nested ``src``/``out``, and a mapping inside ``out``."""
    if not src.is_dir():
        raise VCEInputError(f"{src}: source directory not found")
    if _inside(out, src) or _inside(src, out):
        raise VCEInputError(f"--out {out} and --src {src} must not contain each other")
    if _inside(mapping_path, out):
        raise VCEInputError(f"{mapping_path}: the pseudonym mapping must not be written inside the de-identified output {out}")


def _source_folders(src: Path) -> list[Path]:
    """The patient folders of ``src`` (sorted, hidden ones skipped); at least one."""
    folders = sorted(p for p in src.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise VCEInputError(f"{src}: no patient folders found")
    return folders


def _shared_patient_ids(cases: list[Case]) -> list[str]:
    """One problem per case whose DICOM PatientID an earlier case already holds."""
    errors = []
    owner: dict[str, Case] = {}
    for c in cases:
        for p in c.patient_ids:
            if p in owner:
                errors.append(
                    f"{c.folder}: source folders {owner[p].folder.name} and {c.folder.name} hold the same DICOM PatientID "
                    "(duplicate patient); import each patient once"
                )
            owner[p] = c
    return errors


def _failure(src: Path, unreadable: list[tuple[Path, str]], errors: list[str]) -> VCEInputError:
    """One error for a failed import: every unreadable file (count, names relative to ``src``), then
    every other problem, one per line."""
    lines = [f"unreadable: {relative_name(f, src)}: {why}" for f, why in unreadable] + errors
    head = f"import of {src} failed"
    if unreadable:
        head += f": {len(unreadable)} unreadable file(s) (relative to {src})" + (f", {len(errors)} other problem(s)" if errors else "")
    else:
        head += f" ({len(errors)} problem(s))"
    return VCEInputError(head + ":\n  " + "\n  ".join(lines))


def _resolve_cases(src: Path, folders: list[Path], rules: dict[str, SeriesRule]) -> list[Case]:
    """Resolve every source folder; all problems together in one :class:`VCEInputError`, every
    unreadable file of every patient included."""
    errors = [f"{src / later}: source folders {first} and {later} differ only in case (duplicate patient?)"
              for first, later in case_duplicates(f.name for f in folders)]
    unreadable: list[tuple[Path, str]] = []
    cases: list[Case] = []
    for f in folders:
        try:
            cases.append(resolve_case(f, rules, unreadable))
        except VCEInputError as exc:
            errors.append(str(exc))
    errors += _shared_patient_ids(cases)
    if errors or unreadable:
        raise _failure(src, unreadable, errors)
    return cases


def rescale_to_12bit(img: sitk.Image) -> tuple[sitk.Image, float | None]:
    """``img`` scaled linearly by ``4095 / max`` into [0, 4095] (float32) when its maximum exceeds
    4095, with the factor; else ``img`` unchanged and None. Zero stays zero (body masks and the
    field-of-view rule rely on exact zeros); negative values are not shifted (validate refuses them)."""
    arr = sitk.GetArrayViewFromImage(img)
    hi = float(arr.max())
    top = SCANNER_RANGE[1]
    if not hi > top:
        return img, None
    factor = top / hi
    scaled = np.minimum(np.asarray(arr, dtype=np.float32) * np.float32(factor), np.float32(top))
    out = sitk.GetImageFromArray(scaled)
    out.CopyInformation(img)
    return out, factor


def _import_case(case: Case, pid: str, patient_out: Path, rescale_12bit: bool = False) -> dict[str, dict[str, Any]]:
    """Read, reorient (and with ``rescale_12bit`` rescale, :func:`rescale_to_12bit`) and write one
    case's volumes into the new folder ``patient_out``; per modality its summary."""
    patient_out.mkdir()
    info = {}
    try:
        for mod, source in case.sources.items():
            img = _read(source, mod, pid)
            factor = None
            if mod != "mask" and rescale_12bit:
                img, factor = rescale_to_12bit(img)
            elif mod != "mask":
                _warn_range(img, mod, pid)
            write_deidentified(img, patient_out / PATIENT_FILES[mod])
            info[mod] = {
                "source": "dicom" if source.kind == "dicom" else "file",
                "size": list(img.GetSize()),
                "spacing_mm": [round(s, 4) for s in img.GetSpacing()],
            }
            if factor is not None:
                info[mod]["rescale_12bit_factor"] = factor
    except VCEInputError as exc:
        raise VCEInputError(f"source folder {case.folder.name} ({pid}): {exc}") from exc
    logger.info("imported %s: %s", pid, ", ".join(f"{m} {v['source']} {v['size']}" for m, v in info.items()))
    return info


def _warn_range(img: sitk.Image, mod: str, pid: str) -> None:
    """Warn (pseudonym and modality only) when ``img`` leaves the 12-bit range: validate will refuse it."""
    arr = sitk.GetArrayViewFromImage(img)
    problem = intensity_problem(float(arr.min()), float(arr.max()))
    if problem:
        logger.warning("%s %s: %s (vce validate and register will refuse it)", pid, mod, problem)


def _import_all(cases: list[Case], pseudo: dict[str, str], tmp: Path, src: Path, rescale_12bit: bool) -> dict[str, Any]:
    """Import every case into ``tmp``; every case's problem together in one :class:`VCEInputError`."""
    summary: dict[str, Any] = {}
    errors = []
    for c in cases:
        pid = pseudo[c.folder.name]
        try:
            summary[pid] = _import_case(c, pid, tmp / pid, rescale_12bit)
        except VCEInputError as exc:
            errors.append(str(exc))
    if errors:
        raise _failure(src, [], errors)
    return summary


def _write_mapping(mapping_path: Path, entries: list[dict[str, Any]]) -> None:
    """Write the pseudonym mapping (entries sorted by pseudonym)."""
    write_json(mapping_path, {
        "note": "vce import pseudonym mapping: links pseudonyms to real patients. Keep it with the "
                "identifiable source data; never share it with the de-identified cohort.",
        "version": 1,
        "patients": sorted(entries, key=lambda e: e["pseudonym"]),
    })


def import_cohort(
    src: str | Path,
    out: str | Path,
    mapping: str | Path | None = None,
    rules: dict[str, SeriesRule] | None = None,
    rescale_12bit: bool = False,
) -> dict[str, str]:
    """Import every patient folder of ``src`` into ``out`` (raw layout); returns ``{pseudonym: kinds}``.

    All source folders are resolved first and every problem is reported together (one
    :class:`VCEInputError`, each line naming the source folder, every unreadable file named
    relative to ``src``); ``out`` and the mapping are only written when every patient imports
    cleanly. ``rescale_12bit``: scale each modality whose maximum exceeds 4095 into [0, 4095]
    (:func:`rescale_to_12bit`; factors in ``import.json``).
    """
    src, out = Path(src), Path(out)
    mapping_path = Path(mapping) if mapping else default_mapping_path(src)
    rules = {**DEFAULT_RULES, **(rules or {})}
    _check_locations(src, out, mapping_path)
    cases = _resolve_cases(src, _source_folders(src), rules)
    entries = load_mapping(mapping_path)
    pseudo = assign_pseudonyms(cases, entries, mapping_path)

    with atomic_dir(out) as tmp:
        summary = _import_all(cases, pseudo, tmp, src, rescale_12bit)
        write_json(tmp / "import.json", {"orientation": CANONICAL_ORIENTATION, "tool": "vce import",
                                         "nifti_description": NIFTI_DESCRIPTION, "rescale_12bit": bool(rescale_12bit),
                                         "patients": summary})
        _write_mapping(mapping_path, entries)
    logger.info("imported %d patient(s) into %s (mapping: kept next to the source data)", len(summary), out)
    return {p: ",".join(sorted(v)) for p, v in summary.items()}
