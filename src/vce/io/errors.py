"""Errors about bad input and about the machine. Each names the file (and patient) and says what is wrong.

:class:`VCEInputError`: an input is missing, unreadable or not what the step needs.
:class:`VCEEnvironmentError`: the machine cannot do what the step needs (a full disk, a read-only
or forbidden output, an unreachable server). The CLI prints either on one line and exits 2.

:func:`environment_error` is the one place that decides whether an exception raised by the
operating system or a library (``OSError``, torch's zip writer, an ``EOFError`` from a truncated
write) is such an environment problem; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "VCEInputError", "VCEEnvironmentError", "NEARLY_FULL", "disk_nearly_full", "environment_error", "npy_error", "untemp",
]


class VCEInputError(ValueError):
    """An input file or directory is missing, unreadable or not what the step needs."""


class VCEEnvironmentError(VCEInputError):
    """The machine cannot do what the step needs (disk full, read-only output, unreachable server).

    Names the path or address and what is wrong; the CLI prints it on one line and exits 2."""


#: errno of an ``OSError`` that is always the machine's, never the program's -> what to tell the user.
ENVIRONMENT_ERRNOS: dict[int, str] = {
    errno.EROFS: "read-only file system, cannot write there; choose another output directory",
    errno.EACCES: "permission denied; choose a directory you can write (or fix its permissions)",
    errno.EPERM: "operation not permitted; choose a directory you can write (or fix its permissions)",
    errno.ENOSPC: "no space left on device; free some space or choose another output directory",
    errno.EDQUOT: "disk quota exceeded (no space left for this user); free some space or choose another output directory",
}
#: What torch's zip writer raises (a ``RuntimeError`` without errno) when a write fails, typically a full disk.
TORCH_WRITE_FAILED = ("PytorchStreamWriter failed writing file", "enforce fail at inline_container", "file write failed")
#: Free bytes below which a failed write (torch's ``RuntimeError``, an ``EOFError``) is put down to a full disk.
NEARLY_FULL = 16 * 2**20


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the exceptions it was raised from or while handling (cycle-safe)."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def disk_nearly_full(path: str | Path) -> bool:
    """Whether the filesystem holding ``path`` (or its nearest existing ancestor) has less than
    :data:`NEARLY_FULL` bytes free."""
    probe = Path(os.path.abspath(path))
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return shutil.disk_usage(probe).free < NEARLY_FULL
    except OSError:
        return False


#: A temporary sibling made by :mod:`vce.io.atomic` (``.{name}.tmp-{host}-{pid}-XXXX[suffix]``) in a path.
_TEMP_SIBLING = re.compile(r"\.([^/\s]+?)\.(?:tmp|old)-[^-/\s]+-\d+-[^/\s:]*")


def untemp(text: str) -> str:
    """``text`` with every temporary sibling in a path replaced by the output it was to become
    (``out/.run.tmp-host-12-ab/checkpoint.pt`` -> ``out/run/checkpoint.pt``): errors name what the user asked for."""
    return _TEMP_SIBLING.sub(r"\1", text)


def _named(filename: object, path: str | Path | None) -> str:
    """The path an error names: the exception's own file (temporary siblings named as their
    output), or the output ``path`` when the exception names none."""
    if filename is None or filename == "":
        return str(path) if path is not None else "(output)"
    return untemp(str(filename))


def environment_error(
    exc: BaseException, path: str | Path | None = None, any_oserror: bool = True
) -> VCEEnvironmentError | None:
    """The :class:`VCEEnvironmentError` that ``exc`` stands for, or ``None`` when it is not one.

    * an ``OSError`` (anywhere in the exception chain) with errno in :data:`ENVIRONMENT_ERRNOS`
      (read-only filesystem, permission denied, disk full, quota);
    * with ``any_oserror``, any other ``OSError`` that names a file (``No such file or directory``...);
    * torch's failed zip write (:data:`TORCH_WRITE_FAILED`) or an ``EOFError`` when the disk of
      ``path`` is (nearly) full: the misleading forms a full disk takes.

    ``path``: the output being written, named when the exception names no file. A file inside a
    temporary sibling is named as the output it was to become (:func:`untemp`).
    """
    if isinstance(exc, VCEEnvironmentError):
        msg = untemp(str(exc))
        return exc if msg == str(exc) else VCEEnvironmentError(msg)
    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno in ENVIRONMENT_ERRNOS:
            return VCEEnvironmentError(f"{_named(e.filename, path)}: {ENVIRONMENT_ERRNOS[e.errno]}")
    if any_oserror and isinstance(exc, OSError) and exc.filename:
        reason = exc.strerror or (exc.args[0] if exc.args else type(exc).__name__)
        return VCEEnvironmentError(f"{_named(exc.filename, path)}: {reason}")
    torch_write = isinstance(exc, RuntimeError) and any(m in str(exc) for m in TORCH_WRITE_FAILED)
    if (torch_write or isinstance(exc, EOFError)) and path is not None and disk_nearly_full(path):
        return VCEEnvironmentError(f"{path}: {ENVIRONMENT_ERRNOS[errno.ENOSPC]} (the write failed with the disk full)")
    return None


def npy_error(path: str | Path, exc: BaseException) -> VCEInputError:
    """The error for an ``.npy`` file that ``np.load`` refused, naming the file and, for an object
    array (pickled Python objects, never loaded), saying so."""
    import numpy as np

    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)  # the header only: no data, nothing unpickled
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            dtype = read(fh)[2]
    except Exception:  # noqa: BLE001 - not even a readable header: report the loader's reason
        dtype = None
    if dtype is not None and dtype.hasobject:
        return VCEInputError(f"{path}: holds an object array (pickled Python objects, dtype {dtype}), not numbers; "
                             "it is not loaded (a pickle can run code); rewrite it with the step that makes it")
    return VCEInputError(f"{path}: not a readable .npy array: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
