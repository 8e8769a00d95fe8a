"""Atomic outputs: a step's file or directory is complete or absent, never half-written.

Write into a temporary sibling (same filesystem), then ``os.replace`` it into place. A rerun
replaces the previous output in one rename, so steps are safe to rerun. A temporary sibling
names its owner (``.{name}.tmp-{host}-{pid}-XXXX``); one left by a killed process is removed
the next time that output is written (:func:`remove_stale_siblings`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import socket
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .errors import ENVIRONMENT_ERRNOS, VCEEnvironmentError, VCEInputError, environment_error

#: Head-room kept free beyond a write's own size (logs, MLflow, the OS).
FREE_SPACE_MARGIN = 64 * 2**20


def ensure_free_space(directory: str | Path, nbytes: int, what: str, final: str | Path | None = None) -> None:
    """Refuse to start a write of ``nbytes`` under ``directory`` that the disk cannot hold.

    Memory-mapped writes (the slice store, the normalised store) do not fail on a full disk:
    the process dies of SIGBUS, half-written. Checking first turns that into one clear error.
    ``final``: the output to be written; its temporary siblings left by killed processes are
    removed first (they may be what fills the disk), and the error names it.
    Raises :class:`VCEEnvironmentError` naming ``final`` (else ``directory``), ``what`` and both sizes."""
    directory = Path(directory)
    if final is not None and Path(final).parent.is_dir():
        remove_stale_siblings(final)
    probe = directory
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < nbytes + FREE_SPACE_MARGIN:
        raise VCEEnvironmentError(
            f"{final if final is not None else directory}: not enough free disk space for {what}: needs "
            f"{_mb(nbytes + FREE_SPACE_MARGIN)} ({_mb(nbytes)} + {_mb(FREE_SPACE_MARGIN)} head-room), {_mb(free)} free"
        )


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def check_writable(path: str | Path) -> None:
    """Refuse, before any work, an output ``path`` whose nearest existing ancestor directory cannot
    be written (read-only filesystem, no permission). Creates nothing.
    Raises :class:`VCEEnvironmentError` naming ``path``."""
    path = Path(path)
    probe = path
    while not probe.is_dir() and probe != probe.parent:
        probe = probe.parent
    try:
        read_only = bool(os.statvfs(probe).f_flag & os.ST_RDONLY)
    except OSError:
        return
    if read_only:
        raise VCEEnvironmentError(f"{path}: {ENVIRONMENT_ERRNOS[errno.EROFS]}")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise VCEEnvironmentError(f"{path}: {ENVIRONMENT_ERRNOS[errno.EACCES]} ({probe} is not writable)")


#: Kinds of temporary sibling: ``tmp`` (being written), ``old`` (the previous output, during the swap).
_SIBLING_KINDS = ("tmp", "old")


def _host() -> str:
    """This machine's name as it appears in temporary names (no ``-``, so the name parses)."""
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname())[:48] or "host"


def _prefix(final: Path, kind: str) -> str:
    """``.{name}.{kind}-{host}-{pid}-``: a temporary sibling names its owner, so a later run can tell
    whether the process that made it is gone (:func:`remove_stale_siblings`)."""
    return f".{final.name}.{kind}-{_host()}-{os.getpid()}-"


def _pid_is_dead(pid: int) -> bool:
    """True only when no process ``pid`` exists on this machine (a live one of another user counts as alive)."""
    if pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # PermissionError: it exists, owned by someone else
        return False
    return False


def remove_stale_siblings(final: str | Path) -> list[Path]:
    """Remove the temporary siblings of ``final`` (``.{name}.tmp-*`` / ``.{name}.old-*``) left by a
    process of this host that no longer exists (killed mid-write). Siblings of live processes, of
    other hosts and of unknown format are left alone. Returns the paths removed."""
    final = Path(final)
    host, removed = _host(), []
    heads = tuple(f".{final.name}.{kind}-" for kind in _SIBLING_KINDS)
    try:
        names = [e.name for e in os.scandir(final.parent) if e.name.startswith(heads)]
    except OSError:
        return removed
    for name in names:
        rest = name[len(next(h for h in heads if name.startswith(h))):]
        m = re.match(r"([^-]+)-(\d+)(?:-|$)", rest)
        if not (m and m[1] == host and _pid_is_dead(int(m[2]))):
            continue
        p = final.parent / name
        try:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink(missing_ok=True)
        except OSError:  # gone meanwhile, or not ours to remove: leave it
            continue
        removed.append(p)
    return removed


def _new_temp(final: Path, make: Callable[[str], Path]) -> Path:
    """Create ``final``'s parent and a temporary sibling with ``make(prefix)``, after removing
    stale siblings; an unwritable or full disk is a :class:`VCEEnvironmentError` naming ``final``."""
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_siblings(final)
        return make(_prefix(final, "tmp"))
    except OSError as exc:
        err = environment_error(exc, final)
        if err is None:
            raise
        raise err from exc


def _failure(exc: BaseException, final: Path) -> VCEEnvironmentError | None:
    """What a failure while writing ``final``'s temporary sibling tells the user, when the machine
    caused it (an environment error from a nested write is renamed onto ``final``); checked
    before the temporary sibling is removed, while a full disk is still full."""
    if not isinstance(exc, Exception) or (isinstance(exc, VCEInputError) and not isinstance(exc, VCEEnvironmentError)):
        return None
    return environment_error(exc, final, any_oserror=False)


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _swap_in(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` to ``final``; an existing ``final`` goes aside first (restored if the rename fails)."""
    old = None
    if final.exists():
        old = final.parent / f"{_prefix(final, 'old')}{uuid.uuid4().hex[:8]}"
        os.replace(final, old)
    try:
        os.replace(tmp, final)
    except BaseException:
        if old is not None:
            os.replace(old, final)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Yield a temporary directory that becomes ``final`` only if the block succeeds.

    An existing ``final`` is replaced; on error the temporary directory is removed and
    ``final`` is left untouched. The temporary sibling is ``.{name}.tmp-{host}-{pid}-XXXX``;
    siblings of ``final`` left by dead processes of this host are removed first. A full or
    read-only disk is a :class:`VCEEnvironmentError` naming ``final``.
    """
    final = Path(final)
    tmp = _new_temp(final, lambda prefix: Path(tempfile.mkdtemp(prefix=prefix, dir=final.parent)))
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it 0700; outputs are ordinary directories
        yield tmp
        _swap_in(tmp, final)
    except BaseException as exc:
        err = _failure(exc, final)
        shutil.rmtree(tmp, ignore_errors=True)
        if err is not None and err is not exc:
            raise err from exc
        raise


def _make_temp_file(final: Path, suffix: str) -> Callable[[str], Path]:
    def make(prefix: str) -> Path:
        fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix or "".join(final.suffixes), dir=final.parent)
        os.close(fd)
        return Path(name)

    return make


@contextlib.contextmanager
def atomic_file(final: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary file path (same directory, same ``suffix``) renamed to ``final`` on success.

    Named, cleaned up and reported like :func:`atomic_dir`'s temporary directory."""
    final = Path(final)
    tmp = _new_temp(final, _make_temp_file(final, suffix))
    try:
        yield tmp
        if tmp.exists():
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600
        os.replace(tmp, final)
    except BaseException as exc:
        err = _failure(exc, final)
        tmp.unlink(missing_ok=True)
        if err is not None and err is not exc:
            raise err from exc
        raise


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
