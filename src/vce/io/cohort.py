"""The raw and registered cohort layout: one directory per patient.

```
<cohort>/<patient_id>/T1.nii.gz          T1-weighted (any grid)
<cohort>/<patient_id>/T2.nii.gz          T2-weighted (the reference grid)
<cohort>/<patient_id>/T1C.nii.gz         contrast-enhanced T1 (training/evaluation target)
<cohort>/<patient_id>/tumor_mask.nii.gz  optional, on the T2 grid
<cohort>/<patient_id>/wm_mask.nii.gz     optional, normal white matter on the T2 grid (enh_ratio_wm)
<cohort>/<patient_id>/T1C_clean.nii.gz   optional, synthetic only: T1C without noise (same grid as T1C)
<cohort>/<patient_id>/motion.json        optional, synthetic patients only (true T2->T1/T1C transforms)
```
Patient ids are directory names of letters, digits, ``_`` and ``-``; directories starting with ``.``
are ignored.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from pathlib import Path

from .errors import VCEInputError
from .nifti import PATIENT_FILES

_PID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
#: Dot-folders that tools keep next to data (not patients; skipped without a word).
_TOOL_DIRS = frozenset({".dvc", ".git", ".ipynb_checkpoints", ".cache"})
logger = logging.getLogger(__name__)
REQUIRED = ("T1", "T2", "T1C")


def check_patient_id(pid: str) -> str:
    """Return ``pid`` if it is a safe patient id (no path separators, no ``..``), else raise."""
    if not _PID.match(pid):
        raise VCEInputError(
            f"invalid patient id {pid!r}: use 1-64 letters, digits, '_' or '-' (no path separators or '..')"
        )
    return pid


def case_duplicates(names: Iterable[str]) -> list[tuple[str, str]]:
    """``(first, later)`` pairs of ``names`` that differ only in letter case (a patient copied twice,
    or two ids that collide on case-insensitive file systems), in input order."""
    seen: dict[str, str] = {}
    pairs = []
    for n in names:
        if n.lower() in seen:
            pairs.append((seen[n.lower()], n))
        else:
            seen[n.lower()] = n
    return pairs


def content_duplicates(fingerprints: dict[str, dict[str, str]]) -> list[tuple[str, str, list[str]]]:
    """``(first, later, modalities)`` for every pair of patients (in input order) whose listed
    modalities have equal fingerprints (``{pid: {modality: hash}}``): identical voxels in two
    patients are one scan under two ids, which would leak across the train/test split."""
    owner: dict[tuple[str, str], str] = {}
    pairs: dict[tuple[str, str], list[str]] = {}
    for pid, prints in fingerprints.items():
        for mod in REQUIRED:
            h = prints.get(mod)
            if h is None:
                continue
            if (mod, h) in owner:
                pairs.setdefault((owner[mod, h], pid), []).append(mod)
            else:
                owner[mod, h] = pid
    return [(a, b, mods) for (a, b), mods in pairs.items()]


def duplicate_message(first: str, later: str, modalities: list[str]) -> str:
    """The error for one patient under two ids (validate, register and split say the same)."""
    return (f"patients {first} and {later} have identical {', '.join(modalities)} (same content hash): one patient "
            "under two ids would leak across the train/test split; remove the copy")


def list_patients(cohort_dir: str | Path, required: tuple[str, ...] = REQUIRED) -> list[str]:
    """Sorted patient ids of ``cohort_dir``, checking each has the ``required`` modalities."""
    cohort_dir = Path(cohort_dir)
    if not cohort_dir.is_dir():
        raise VCEInputError(f"{cohort_dir}: cohort directory not found")
    pids = []
    hidden = []
    for p in sorted(cohort_dir.iterdir()):
        if p.name.startswith(".") and p.is_dir() and p.name not in _TOOL_DIRS:
            hidden.append(p.name)
        if p.name.startswith(".") or not p.is_dir():
            continue
        check_patient_id(p.name)
        twins = case_duplicates([*pids, p.name])
        if twins:
            raise VCEInputError(f"{p}: patient ids {twins[0][0]} and {p.name} differ only in case (duplicate patient?)")
        missing = [PATIENT_FILES[m] for m in required if not (p / PATIENT_FILES[m]).is_file()]
        if missing:
            raise VCEInputError(f"{p}: patient {p.name} is missing {', '.join(missing)}")
        pids.append(p.name)
    if hidden:
        logger.warning("%s: %d folder(s) starting with '.' are not read as patients: %s", cohort_dir, len(hidden),
                       ", ".join(hidden))
    if not pids:
        hint = f" ({len(hidden)} hidden folder(s) starting with '.' are never patients)" if hidden else ""
        raise VCEInputError(f"{cohort_dir}: no patient directories found{hint}")
    return pids
