"""Process lifecycle: who owns a run, processes that die with their owner, one run per output.

``vce run`` is the *owner* of everything its study starts: kfp's SubprocessRunner launches each
component as ``sh -ec '... python3 -m kfp.dsl.executor_main ...'`` from one of its threads (kfp
2.17, ``kfp/local/subprocess_task_handler.py``). dash does not ``exec`` that last command, so a
component's parent is the ``sh``, not ``vce run``: ``PR_SET_PDEATHSIG`` alone (which fires when
the *parent thread* exits) would fire only when that ``sh`` dies, and ``kill -9`` of ``vce run``
leaves ``sh`` and the component running. Hence two mechanisms in :func:`die_with_parent`:

* ``prctl(PR_SET_PDEATHSIG, SIGKILL)``: the process dies with its direct parent (torchrun's
  workers with torchrun; a component with its ``sh``);
* the owner watch: ``vce run`` exports its pid (:data:`OWNER_PID_ENV`, inherited by every
  component); a component whose owner is not its parent waits on a pidfd of the owner in a
  daemon thread and, when the owner is gone, kills its own descendants (process pools,
  DataLoader workers) and itself. A component started after its owner died exits at once.

The owner's identity (:func:`owner`: host, pid, process start time, a token per run) is tagged
on each MLflow run the study opens, so that the next study can tell runs of a dead process
(``vce.tracking.reconcile_dead_runs``) from runs of a live one.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import logging
import os
import select
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .io.errors import VCEEnvironmentError

logger = logging.getLogger(__name__)

OWNER_PID_ENV = "VCE_OWNER_PID"
OWNER_START_ENV = "VCE_OWNER_START"
OWNER_TOKEN_ENV = "VCE_OWNER_TOKEN"
LOCK_NAME = ".vce-run.lock"
PR_SET_PDEATHSIG = 1
#: exit status of a process that stops because its owner is gone (as if killed by SIGKILL)
ORPHAN_EXIT = 128 + signal.SIGKILL


# --------------------------------------------------------------------------- /proc
def process_start(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (``/proc/<pid>/stat`` field 22), None if
    there is no such process (or no ``/proc``). With the pid it names a process uniquely."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def parent_pid(pid: int) -> int | None:
    """The parent of ``pid`` (``/proc/<pid>/stat`` field 4), None if there is no such process."""
    fields = _stat_fields(pid)
    return int(fields[1]) if fields else None


def _stat_fields(pid: int) -> list[str] | None:
    """``/proc/<pid>/stat`` after the command name (which may hold spaces and parentheses)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def is_alive(pid: int, start: int | None = None) -> bool:
    """Whether process ``pid`` exists (and, with ``start``, is the one started then, not a reuse)."""
    now = process_start(pid)
    if now is None:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return start is None  # no /proc: cannot compare start times
    return start is None or now == start


def ancestors(pid: int | None = None) -> list[int]:
    """The chain of parents of ``pid`` (default: this process), nearest first, up to pid 1."""
    out: list[int] = []
    p = parent_pid(os.getpid() if pid is None else pid)
    while p and p not in out:
        out.append(p)
        if p == 1:
            break
        p = parent_pid(p)
    return out


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (children, their children, ...), from one scan of ``/proc``."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            ppid = parent_pid(int(d.name))
            if ppid is not None:
                children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], list(children.get(pid, []))
    while todo:
        p = todo.pop()
        if p not in out:
            out.append(p)
            todo.extend(children.get(p, []))
    return out


# --------------------------------------------------------------------------- owner
@dataclass(frozen=True)
class Owner:
    """The process that owns a study's runs: ``vce run`` (or a lone ``vce train``)."""

    host: str
    pid: int
    start: int | None
    token: str

    def tags(self) -> dict[str, str]:
        """MLflow tags naming this owner (``vce.owner.*``)."""
        return {"vce.owner.host": self.host, "vce.owner.pid": str(self.pid),
                "vce.owner.start": "" if self.start is None else str(self.start), "vce.owner.token": self.token}


def owner() -> Owner:
    """The owner of what this process does: the one named in the environment (set by
    :func:`owning`, inherited by kfp components), else this process itself."""
    pid = os.environ.get(OWNER_PID_ENV)
    if pid:
        start = os.environ.get(OWNER_START_ENV)
        return Owner(socket.gethostname(), int(pid), int(start) if start else None,
                     os.environ.get(OWNER_TOKEN_ENV, ""))
    return Owner(socket.gethostname(), os.getpid(), process_start(os.getpid()), _own_token())


_TOKEN = uuid.uuid4().hex


def _own_token() -> str:
    return _TOKEN


@contextlib.contextmanager
def owning() -> Iterator[Owner]:
    """This process owns what it launches in the block: its pid, start time and a fresh token
    are exported (:data:`OWNER_PID_ENV` ...) to every child; the environment is restored after."""
    names = (OWNER_PID_ENV, OWNER_START_ENV, OWNER_TOKEN_ENV)
    saved = {k: os.environ.get(k) for k in names}
    me = Owner(socket.gethostname(), os.getpid(), process_start(os.getpid()), uuid.uuid4().hex)
    os.environ.update({OWNER_PID_ENV: str(me.pid), OWNER_START_ENV: "" if me.start is None else str(me.start),
                       OWNER_TOKEN_ENV: me.token})
    try:
        yield me
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def owner_alive(tags: dict[str, str], host: str | None = None) -> bool | None:
    """Whether the owner named by a run's ``vce.owner.*`` tags is alive: None when the run has no
    owner tags or its owner ran on another host (its liveness cannot be told from here)."""
    if not tags.get("vce.owner.pid") or tags.get("vce.owner.host") != (host or socket.gethostname()):
        return None
    start = tags.get("vce.owner.start")
    return is_alive(int(tags["vce.owner.pid"]), int(start) if start else None)


# --------------------------------------------------------------------------- dying with the owner
def _set_pdeathsig(sig: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_PDEATHSIG): {os.strerror(err)}")


def die_with_parent() -> None:
    """Make this process die with the process that launched it (call it first thing in a
    component body, or a torchrun worker).

    Sets ``PR_SET_PDEATHSIG`` to SIGKILL (exits at once when the parent is gone already, i.e.
    ``getppid()`` changed), and so for the children it forks from its main thread (process
    pools: the setting is not inherited across fork); when an owner is exported
    (:func:`owning`) that is not the parent, watches it: see the module docstring. Linux only;
    a no-op elsewhere."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    _set_pdeathsig(signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(ORPHAN_EXIT)
    _arm_forked_children()
    pid = os.environ.get(OWNER_PID_ENV)
    if not pid or int(pid) == os.getpid():
        return
    owner_pid, start = int(pid), os.environ.get(OWNER_START_ENV)
    if owner_pid not in ancestors() or not is_alive(owner_pid, int(start) if start else None):
        logger.error("owner process %s is gone: exiting", owner_pid)
        os._exit(ORPHAN_EXIT)
    if owner_pid != parent:
        threading.Thread(target=_watch_owner, args=(owner_pid,), name="vce-owner-watch", daemon=True).start()


_FORK_FROM_MAIN = [False]
_FORK_HOOKED = [False]


def _arm_forked_children() -> None:
    """Children forked from the main thread get ``PR_SET_PDEATHSIG`` SIGKILL too. Not those
    forked from other threads: the signal fires when the forking *thread* exits, which could
    be long before the process does."""
    if _FORK_HOOKED[0]:
        return
    _FORK_HOOKED[0] = True

    def before() -> None:
        _FORK_FROM_MAIN[0] = threading.current_thread() is threading.main_thread()

    def child() -> None:
        if _FORK_FROM_MAIN[0]:
            with contextlib.suppress(OSError):
                _set_pdeathsig(signal.SIGKILL)

    os.register_at_fork(before=before, after_in_child=child)


def _watch_owner(owner_pid: int) -> None:
    """Block until ``owner_pid`` exits (pidfd, else polling), then kill this process's tree."""
    try:
        fd = os.pidfd_open(owner_pid)
    except ProcessLookupError:
        _kill_own_tree()
    except (AttributeError, OSError):  # no pidfd (old kernel): poll the ancestry
        while owner_pid in ancestors():
            time.sleep(0.5)
        _kill_own_tree()
    else:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        while not poller.poll():
            pass
        _kill_own_tree()


def _kill_own_tree() -> None:
    """SIGKILL every descendant of this process, then this process."""
    for p in descendants(os.getpid()):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(p, signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


# --------------------------------------------------------------------------- one run per output
@contextlib.contextmanager
def exclusive_run(out: str | Path, what: str = "vce run") -> Iterator[Path]:
    """Hold an exclusive, non-blocking ``flock`` on ``<out>/.vce-run.lock`` for the block.

    The lock file holds the holder's pid (for the message); the lock itself goes with the
    process (no stale lock after ``kill -9``), and its descriptor is not inherited by children.
    Raises :class:`VCEEnvironmentError` naming ``out`` and the holder's pid when another
    process holds it, or when ``out`` cannot be written."""
    out = Path(out)
    lock = out / LOCK_NAME
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise VCEEnvironmentError(f"{out}: cannot create the run lock {LOCK_NAME}: {exc.strerror or exc}") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise VCEEnvironmentError(f"{lock}: cannot lock: {exc.strerror or exc}") from exc
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise VCEEnvironmentError(
                f"{out}: another {what} (pid {holder}) is using this output directory; "
                "wait for it to finish or use another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield lock
    finally:
        os.close(fd)  # releases the lock
