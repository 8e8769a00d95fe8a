"""Atomic outputs: a step's file or directory is complete or absent, never half-written.

Write into a temporary sibling (same filesystem), then ``os.replace`` it into place. A rerun
replaces the previous output in one rename, so steps are safe to rerun.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import VCEEnvironmentError

#: Head-room kept free beyond a write's own size (logs, MLflow, the OS).
FREE_SPACE_MARGIN = 64 * 2**20


def ensure_free_space(directory: str | Path, nbytes: int, what: str) -> None:
    """Refuse to start a write of ``nbytes`` under ``directory`` that the disk cannot hold.

    Memory-mapped writes (the slice store, the normalised store) do not fail on a full disk:
    the process dies of SIGBUS, half-written. Checking first turns that into one clear error.
    Raises :class:`VCEEnvironmentError` naming ``directory``, ``what`` and both sizes."""
    directory = Path(directory)
    probe = directory
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < nbytes + FREE_SPACE_MARGIN:
        raise VCEEnvironmentError(
            f"{directory}: not enough free disk space for {what}: needs {_mb(nbytes + FREE_SPACE_MARGIN)} "
            f"({_mb(nbytes)} + {_mb(FREE_SPACE_MARGIN)} head-room), {_mb(free)} free"
        )


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


@contextlib.contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Yield a temporary directory that becomes ``final`` only if the block succeeds.

    An existing ``final`` is replaced; on error the temporary directory is removed and
    ``final`` is left untouched.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it 0700; outputs are ordinary directories
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if final.exists():
        old = final.parent / f".{final.name}.old-{os.getpid()}"
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(final: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary file path (same directory, same ``suffix``) renamed to ``final`` on success."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{final.name}.tmp-", suffix=suffix or "".join(final.suffixes), dir=final.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if tmp.exists():
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it 0600
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented, key-sorted JSON, atomically."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n")


def write_text(path: str | Path, text: str) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(text)


def _jsonable(x: Any) -> Any:
    import numpy as np

    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serialisable: {type(x)}")
