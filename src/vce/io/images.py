"""Read one 3D image from a NIfTI (or other ITK) file or from a DICOM series folder.

``read_image(path)`` is the single entry point other code uses: a file goes through
:func:`vce.io.nifti.read_volume`; a directory is searched (recursively) for DICOM series with
pydicom, one series is chosen (the only one, or by a :class:`SeriesRule`), its slices are sorted
along the slice normal and read with SimpleITK's ``ImageSeriesReader``. Either way the result is
checked (3D scalar, finite, not constant) and problems raise :class:`VCEInputError` naming the
file or folder.

Images read from DICOM carry geometry only (origin, spacing in mm, direction): no DICOM tag is
copied into the returned image's metadata, so nothing identifying can travel with it. Messages
name a series by its SeriesNumber, DICOM Modality, file count and folder, never by a DICOM text
field (SeriesDescription and ProtocolName can hold a patient's name); unreadable or truncated
DICOM files are all collected and named together (:func:`list_dicom_series`).

Series rules are case-insensitive regular expressions matched (``re.search``) against the text
``"<SeriesDescription> | <ProtocolName> | #<SeriesNumber>"``; a series is a candidate for a
modality when ``include`` matches and ``exclude`` (if any) does not.
"""

from __future__ import annotations

import contextlib
import locale
import logging
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from .errors import VCEInputError
from .nifti import check_volume, intensity_problem, read_volume, spacing_problem

logger = logging.getLogger(__name__)

#: Orientation every imported volume is resampled-free reoriented to (``sitk.DICOMOrient``).
#: ITK's "LPS" = identity direction matrix: index x grows to the patient's Left, y to Posterior,
#: z to Superior (nibabel reports the written NIfTI's axis codes as ('L', 'P', 'S')).
CANONICAL_ORIENTATION = "LPS"

# word boundaries that treat '_' as a separator (series descriptions like "T1_SE_GD")
_B, _E = r"(?<![a-z0-9])", r"(?![a-z0-9])"
_CONTRAST = (
    rf"post|{_B}gad|{_B}gd{_E}|\+\s*c{_E}|{_B}ce{_E}|t1c|t1\s*ce|"
    r"(?<!pre)(?<!pre[-_ ])(?<!non)(?<!non[-_ ])contrast"
)


@dataclass(frozen=True)
class SeriesRule:
    """Choose a series: ``include`` must match its text, ``exclude`` (if not empty) must not."""

    include: str
    exclude: str = ""

    def __post_init__(self) -> None:
        for name in ("include", "exclude"):
            try:
                re.compile(getattr(self, name))
            except re.error as exc:
                raise VCEInputError(f"series rule {name} {getattr(self, name)!r} is not a valid regular expression: {exc}") from exc

    def matches(self, text: str) -> bool:
        if not re.search(self.include, text, re.IGNORECASE):
            return False
        return not (self.exclude and re.search(self.exclude, text, re.IGNORECASE))


#: Default rules for the three modalities (override per modality from the CLI or a rules file).
DEFAULT_RULES: dict[str, SeriesRule] = {
    "T1C": SeriesRule(_CONTRAST, rf"{_B}pre{_E}|precontrast|{_B}non[-_ ]?contrast|{_B}sub(traction)?{_E}|{_B}mip{_E}"),
    "T1": SeriesRule(r"t1|mprage|spgr", rf"{_CONTRAST}|flair|{_B}map{_E}|{_B}mip{_E}|t1\s*map"),
    "T2": SeriesRule(r"t2", rf"flair|t2\s*\*|t2[-_ ]?star|{_B}swi{_E}|{_B}dwi{_E}|{_B}map{_E}|{_B}mip{_E}"),
}


@dataclass
class DicomSeries:
    """One DICOM series found in a folder: its files and the tags needed to choose and sort it."""

    uid: str
    number: int | None
    description: str
    protocol: str
    folder: Path
    files: list[Path] = field(default_factory=list)
    patient_ids: set[str] = field(default_factory=set)  # for duplicate detection only; never logged
    #: per file (same order as ``files``): (ImageOrientationPatient, ImagePositionPatient,
    #: InstanceNumber) as read while listing, so sorting the slices needs no second read
    slice_tags: list[tuple[Any, Any, Any]] = field(default_factory=list)
    modality: str = ""  # the DICOM Modality code (MR, CT, ...): a code, never free text
    root: Path | None = None  # the folder that was searched; messages name ``folder`` relative to its parent

    @property
    def text(self) -> str:
        """What series rules are matched against."""
        return f"{self.description} | {self.protocol} | #{self.number if self.number is not None else ''}"

    @property
    def label(self) -> str:
        """Short human name for messages: SeriesNumber, Modality code, file count and folder. Never a
        DICOM text field (SeriesDescription, ProtocolName, ... can carry identifiers)."""
        where = relative_name(self.folder, self.root.parent) if self.root is not None else self.folder.name
        return (f"series #{self.number if self.number is not None else '?'} ({self.modality or 'modality ?'}, "
                f"{len(self.files)} files, folder {where})")


def relative_name(path: Path, base: Path) -> str:
    """``path`` relative to ``base`` (as given when it is not below ``base``), '/'-separated."""
    try:
        return Path(path).relative_to(base).as_posix()
    except ValueError:
        return str(path)


def unreadable_message(base: Path, unreadable: list[tuple[Path, str]]) -> str:
    """One message for every unreadable file: the count, then each file relative to ``base`` and why."""
    return (f"{len(unreadable)} unreadable file(s) (relative to {base}): "
            + "; ".join(f"{relative_name(f, base)}: {why}" for f, why in unreadable))


_TAGS = [
    "SeriesInstanceUID", "SeriesNumber", "SeriesDescription", "ProtocolName", "PatientID", "Modality",
    "ImagePositionPatient", "ImageOrientationPatient", "InstanceNumber", "Rows", "Columns",
    "BitsAllocated", "SamplesPerPixel", "NumberOfFrames",
]


def is_dicom_file(path: str | Path) -> bool:
    """True when ``path`` has the DICOM preamble magic ``DICM`` at byte 128."""
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def _slice_problem(path: Path, ds: Any) -> str | None:
    """Why a parsed DICOM file is a truncated image (None when it is fine or not an image at all):
    its file meta says image storage but the image attributes are missing, or the file is shorter
    than its uncompressed pixel data alone."""
    meta = getattr(ds, "file_meta", None)
    sop = getattr(meta, "MediaStorageSOPClassUID", None) if meta is not None else None
    is_image = "Image Storage" in str(getattr(sop, "name", ""))
    if "Rows" not in ds or not ds.get("SeriesInstanceUID"):
        return "truncated DICOM file (it ends before the image attributes)" if is_image else None
    syntax = getattr(meta, "TransferSyntaxUID", None) if meta is not None else None
    if syntax is None or getattr(syntax, "is_compressed", True) or getattr(syntax, "is_deflated", True):
        return None  # encapsulated or deflated pixel data: the file may be smaller than the pixels
    try:
        need = (int(ds.Rows) * int(ds.get("Columns", 0) or 0) * -(-int(ds.get("BitsAllocated", 16) or 16) // 8)
                * int(ds.get("SamplesPerPixel", 1) or 1) * int(ds.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return None
    size = path.stat().st_size
    return f"truncated DICOM file ({size} bytes; its pixel data alone needs {need})" if size < need else None


def _read_slice_header(f: Path, unreadable: list[tuple[Path, str]]) -> Any | None:
    """The tags of one DICOM file (pydicom, no pixels), or None after appending why it is unreadable."""
    import pydicom

    try:
        ds = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=_TAGS)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on a corrupt file
        unreadable.append((f, f"unreadable DICOM file ({type(exc).__name__})"))
        return None
    problem = _slice_problem(f, ds)
    if problem:
        unreadable.append((f, problem))
        return None
    return ds


def _add_slice(series: dict[str, DicomSeries], ds: Any, f: Path, folder: Path, root: Path) -> None:
    """Add DICOM file ``f`` (tags ``ds``) to its series in ``series`` (non-image files are skipped)."""
    uid = str(ds.get("SeriesInstanceUID", "") or "")
    if not uid or "Rows" not in ds:
        return
    s = series.get(uid)
    if s is None:
        num = ds.get("SeriesNumber", None)
        s = series[uid] = DicomSeries(
            uid=uid,
            number=int(num) if num not in (None, "") else None,
            description=str(ds.get("SeriesDescription", "") or "").strip(),
            protocol=str(ds.get("ProtocolName", "") or "").strip(),
            folder=folder,
            modality=re.sub(r"[^A-Z0-9]", "", str(ds.get("Modality", "") or "").upper())[:16],
            root=root,
        )
    s.files.append(f)
    s.slice_tags.append((ds.get("ImageOrientationPatient"), ds.get("ImagePositionPatient"), ds.get("InstanceNumber", 0)))
    if ds.get("PatientID"):
        s.patient_ids.add(str(ds.PatientID))


def list_dicom_series(folder: str | Path, unreadable: list[tuple[Path, str]] | None = None) -> list[DicomSeries]:
    """All image series under ``folder`` (recursive), sorted by series number then description.

    Files without the DICOM magic (other than ``*.dcm`` files, which are then unreadable) and
    DICOM files without image rows (e.g. DICOMDIR) are skipped. Files that look like DICOM but
    cannot be parsed or are truncated are collected: appended to ``unreadable`` as ``(path,
    why)`` when a list is given (the caller reports them), else all named in one
    :class:`VCEInputError` after the whole folder was listed.
    """
    folder = Path(folder)
    bad: list[tuple[Path, str]] = [] if unreadable is None else unreadable
    series: dict[str, DicomSeries] = {}
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            f = Path(root) / name
            if name.startswith("."):
                continue
            if not is_dicom_file(f):
                if name.lower().endswith(".dcm"):
                    bad.append((f, "not a DICOM file (no 'DICM' marker: truncated or another format)"))
                continue
            ds = _read_slice_header(f, bad)
            if ds is not None:
                _add_slice(series, ds, f, Path(root), folder)
    if unreadable is None and bad:
        raise VCEInputError(f"{folder}: {unreadable_message(folder, bad)}")
    return sorted(series.values(), key=lambda s: (s.number if s.number is not None else 1 << 30, s.description, s.uid))


def choose_series(
    series: list[DicomSeries], rule: SeriesRule | None, *, where: str, what: str
) -> DicomSeries:
    """The one series of ``series`` that ``rule`` selects (``rule=None``: the only series).

    Raises :class:`VCEInputError` naming ``where`` and listing the candidates when none or
    several match.
    """
    listing = "; ".join(s.label for s in series) or "none"
    if not series:
        raise VCEInputError(f"{where}: no DICOM image series found for {what}")
    if rule is None:
        if len(series) == 1:
            return series[0]
        raise VCEInputError(f"{where}: {len(series)} DICOM series, cannot tell which is {what} (give a series rule); series: {listing}")
    hits = [s for s in series if rule.matches(s.text)]
    if len(hits) == 1:
        return hits[0]
    if not hits:
        raise VCEInputError(
            f"{where}: no DICOM series matches the {what} rule (include {rule.include!r}, exclude {rule.exclude!r}); series: {listing}"
        )
    raise VCEInputError(
        f"{where}: {what} is ambiguous, {len(hits)} series match its rule: {'; '.join(s.label for s in hits)} "
        f"(override with --series-rule, e.g. matching '#<SeriesNumber>')"
    )


def _sorted_files(s: DicomSeries, what: str) -> list[str]:
    """Slice files sorted along the slice normal; refuse 4D / multi-echo / mixed-orientation series."""
    keys = []
    orients = set()
    for f, (iop, ipp, instance) in zip(s.files, s.slice_tags, strict=True):
        if iop is not None and ipp is not None:
            r, c = np.asarray(iop[:3], float), np.asarray(iop[3:], float)
            orients.add(tuple(np.round(np.r_[r, c], 3)))
            keys.append((round(float(np.dot(np.cross(r, c), np.asarray(ipp, float))), 3), str(f)))
        else:
            keys.append((float(instance or 0), str(f)))
    if len(orients) > 1:
        raise VCEInputError(f"{s.folder}: {what} {s.label} mixes {len(orients)} slice orientations (not one 3D volume)")
    positions = {k for k, _ in keys}
    if len(positions) < len(keys):
        raise VCEInputError(
            f"{s.folder}: {what} {s.label} has {len(keys)} images at {len(positions)} slice positions: "
            "a 4D (dynamic, multi-echo, diffusion) series is not a 3D volume"
        )
    if len(keys) < 2:
        raise VCEInputError(f"{s.folder}: {what} {s.label} has a single slice: need a 3D volume")
    if orients:  # positions along the slice normal (mm): must be evenly spaced (no missing slice)
        gaps = np.diff(sorted(positions))
        med = float(np.median(gaps))
        if np.max(np.abs(gaps - med)) > 0.1 * med:
            mine = set(s.files)
            odd = [str(f) for f in sorted(s.folder.iterdir()) if f.is_file() and f not in mine and is_dicom_file(f)]
            raise VCEInputError(
                f"{s.folder}: {what} {s.label} has missing or unevenly spaced slices (gaps {float(gaps.min()):g} to "
                f"{float(gaps.max()):g} mm); "
                + (f"unreadable or truncated DICOM file(s) there: {', '.join(odd[:5])}" if odd else "a slice file is absent?")
            )
    return [f for _, f in sorted(keys)]


@contextlib.contextmanager
def preserve_locale() -> Iterator[None]:
    """Restore the C library's locale afterwards: GDCM (SimpleITK's DICOM IO) switches the whole
    process to the "C" locale, which would make later ``open()``/``read_text()`` calls ASCII-only."""
    saved = locale.setlocale(locale.LC_ALL)
    try:
        yield
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def read_dicom_series(s: DicomSeries, *, what: str = "volume", allow_constant: bool = False) -> sitk.Image:
    """Read and check one series as a 3D ``sitk.Image`` (geometry only, no DICOM tags)."""
    files = _sorted_files(s, what)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOff()
    reader.LoadPrivateTagsOff()
    try:
        with preserve_locale():
            img = reader.Execute()
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unreadable"
        raise VCEInputError(f"{s.folder}: cannot read {what} {s.label} as an image ({first})") from exc
    clean = sitk.Image(img)
    for k in clean.GetMetaDataKeys():
        clean.EraseMetaData(k)
    check_volume(clean, s.folder, what=f"{what} ({s.label})", allow_constant=allow_constant)
    return clean


def read_image(
    path: str | Path,
    *,
    what: str = "volume",
    rule: SeriesRule | str | None = None,
    allow_constant: bool = False,
    orientation: str | None = None,
    scanner_range: bool = False,
) -> sitk.Image:
    """Read a 3D volume from a NIfTI/ITK file or a DICOM series folder, checked.

    Args:
        path: an image file (``.nii.gz``, ``.nii``, ``.mha``, ...) or a folder holding DICOM files.
        what: what the image is, for error messages (e.g. ``"T1 of patient P0001"``).
        rule: for folders with several series, which one to take: a :class:`SeriesRule`, a
            modality name of :data:`DEFAULT_RULES` (``"T1"``, ``"T2"``, ``"T1C"``) or a regex
            (include). ``None``: the folder must hold exactly one series.
        allow_constant: accept a constant image (masks).
        orientation: if given (e.g. :data:`CANONICAL_ORIENTATION`), reorient with
            ``sitk.DICOMOrient`` (axis permutation/flip, no resampling; spacing kept).
        scanner_range: also refuse intensities outside the 12-bit range
            (:data:`vce.io.nifti.SCANNER_RANGE`), as the study's inputs must be.

    Returns:
        ``sitk.Image`` in physical space (origin and spacing in mm, direction cosines).

    Raises:
        VCEInputError: missing, unreadable, truncated, non-image, 4D, NaN/Inf, constant, or no /
            several matching series; the message names the file or folder.
    """
    path = Path(path)
    if path.is_dir():
        if isinstance(rule, str):
            rule = DEFAULT_RULES.get(rule.upper(), None) or SeriesRule(rule)
        series = list_dicom_series(path)  # none: choose_series raises, naming the folder
        img = read_dicom_series(choose_series(series, rule if len(series) > 1 else None, where=str(path), what=what),
                                what=what, allow_constant=allow_constant)
        arr = sitk.GetArrayViewFromImage(img)
        problem = spacing_problem(img.GetSpacing()) or (
            intensity_problem(float(arr.min()), float(arr.max())) if scanner_range else None)
        if problem:
            raise VCEInputError(f"{path}: {what}: {problem}")
    else:
        img = read_volume(path, what=what, allow_constant=allow_constant, scanner_range=scanner_range)
    if orientation:
        img = sitk.DICOMOrient(img, orientation)
    return img


def parse_rules(specs: list[str] | None = None, file: str | Path | None = None,
                base: Mapping[str, SeriesRule] | None = None) -> dict[str, SeriesRule]:
    """Series rules: ``base`` (default :data:`DEFAULT_RULES`), then a YAML/JSON ``file``, then ``specs``.

    ``file`` maps a modality to a regex (include) or to ``{include: ..., exclude: ...}``.
    ``specs`` are ``MOD=REGEX`` (replace the include regex and drop the default exclude) or
    ``MOD!=REGEX`` (replace the exclude regex).
    """
    rules = dict(base if base is not None else DEFAULT_RULES)
    if file is not None:
        import yaml

        file = Path(file)
        if not file.is_file():
            raise VCEInputError(f"{file}: series rules file not found")
        try:
            raw = yaml.safe_load(file.read_text())  # JSON is YAML
        except yaml.YAMLError as exc:
            raise VCEInputError(f"{file}: not valid YAML/JSON: {exc}") from exc
        if not isinstance(raw, dict):
            raise VCEInputError(f"{file}: expected a mapping modality -> rule")
        for mod, r in raw.items():
            mod = _modality(str(mod), str(file))
            if isinstance(r, str):
                rules[mod] = SeriesRule(r)
            elif isinstance(r, dict) and set(r) <= {"include", "exclude"} and "include" in r:
                rules[mod] = SeriesRule(str(r["include"]), str(r.get("exclude") or ""))
            else:
                raise VCEInputError(f"{file}: rule for {mod} must be a regex or {{include: ..., exclude: ...}}, got {r!r}")
    for spec in specs or []:
        m = re.match(r"^\s*([A-Za-z0-9]+)\s*(!?=)(.*)$", spec)
        if not m:
            raise VCEInputError(f"series rule {spec!r}: expected MOD=REGEX or MOD!=REGEX (MOD in T1, T2, T1C)")
        mod, op, rx = _modality(m.group(1), "--series-rule"), m.group(2), m.group(3)
        old = rules.get(mod, SeriesRule(".*"))
        rules[mod] = SeriesRule(rx) if op == "=" else SeriesRule(old.include, rx)
    return rules


def _modality(name: str, where: str) -> str:
    up = name.upper()
    if up not in DEFAULT_RULES:
        raise VCEInputError(f"{where}: unknown modality {name!r} in series rules (use T1, T2, T1C)")
    return up
