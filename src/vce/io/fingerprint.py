"""The content fingerprint of a raw cohort: what the pipeline's cache is keyed on.

A cluster run caches the cohort snapshot (and everything after it) on its inputs; a path alone
would let new patients under the same path reuse the old cohort. :func:`cohort_digest` hashes
exactly what the cohort step copies (every file of every patient directory, and ``cohort.json``),
by relative path and content, so a changed, added or removed file changes the digest and the same
files elsewhere give the same digest.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path

from .cohort import list_patients

logger = logging.getLogger(__name__)

CHUNK = 1 << 20
#: Files of the cohort directory itself that the cohort step copies besides the patients.
COHORT_FILES = ("cohort.json",)


def _cohort_files(root: Path) -> Iterator[tuple[str, Path]]:
    """``(relative posix path, file)`` of what the cohort step copies, sorted by path."""
    files: list[tuple[str, Path]] = []
    for pid in list_patients(root):  # the same validation and patient list as the cohort step
        files += [(f.relative_to(root).as_posix(), f) for f in (root / pid).rglob("*") if f.is_file()]
    files += [(name, root / name) for name in COHORT_FILES if (root / name).is_file()]
    yield from sorted(files)


def file_sha256(path: Path) -> str:
    """sha256 of one file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def cohort_digest(source_dir: str | Path) -> str:
    """``sha256:<hex>`` over the sorted relative paths and the sha256 of each file the cohort step
    copies from ``source_dir`` (raises :class:`~vce.io.errors.VCEInputError` for what
    :func:`~vce.io.cohort.list_patients` refuses); ``""`` when ``source_dir`` is empty (the
    cohort is synthesised from the params, which key the cache themselves)."""
    if not str(source_dir):
        return ""
    root = Path(source_dir)
    h = hashlib.sha256()
    n = size = 0
    for rel, f in _cohort_files(root):
        h.update(f"{rel}\0{file_sha256(f)}\n".encode())
        n += 1
        size += f.stat().st_size
    digest = f"sha256:{h.hexdigest()}"
    logger.info("cohort %s: %d files, %.1f MB, digest %s", root, n, size / 1e6, digest)
    return digest
