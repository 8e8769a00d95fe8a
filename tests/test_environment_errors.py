"""The machine's faults: one line naming the path, exit 2, no traceback, no temporary debris.

The CLI's one error boundary (:func:`vce.cli.main`, :func:`vce.io.errors.environment_error`),
the free-space preflight and the stale temporary siblings of :mod:`vce.io.atomic`. Read-only and
full disks are real tmpfs mounts (root only, as in CI; skipped elsewhere); dead and live owners
of temporary siblings are real processes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import mount_tmpfs
from vce.cli import main
from vce.io.atomic import atomic_dir, atomic_file, ensure_free_space, remove_stale_siblings, write_json
from vce.io.errors import VCEEnvironmentError, environment_error, untemp




@pytest.fixture
def read_only(tmp_path) -> Iterator[Path]:
    yield from mount_tmpfs(tmp_path / "ro", "size=1m,ro")


@pytest.fixture
def full_disk(tmp_path) -> Iterator[Path]:
    """A 3 MiB tmpfs with 256 KiB left: room to start a step, not to finish it."""
    for mnt in mount_tmpfs(tmp_path / "small", "size=3m"):
        free = shutil.disk_usage(mnt).free
        (mnt / "filler").write_bytes(b"\0" * max(0, free - 256 * 1024))
        yield mnt


def _cli(capsys, *argv: str) -> tuple[int, str]:
    rc = main([*argv, "--profile", "tiny"])
    return rc, capsys.readouterr().err


def _debris(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob(".*") if ".tmp-" in p.name or ".old-" in p.name)


def _one_error_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ": error: " in ln]
    assert len(lines) == 1, err
    return lines[0]


# --------------------------------------------------------------------------- read-only output


@pytest.mark.parametrize("step", ["normalize", "train", "validate"])
def test_read_only_output_is_one_line_naming_the_path(read_only, tiny_cohort, tiny_split, tiny_normalized, capsys, step):
    out = read_only / step
    argv = {
        "normalize": ["normalize", "--split", str(tiny_split), "--out", str(out)],
        "train": ["train", "--variant", "pgmgvce_main", "--normalized", str(tiny_normalized), "--out", str(out),
                  "--no-tracking", "--device", "cpu"],
        "validate": ["validate", "--raw", str(tiny_cohort), "--report", str(out / "report.json")],
    }[step]
    rc, err = _cli(capsys, *argv)
    line = _one_error_line(err)
    assert rc == 2
    assert line == f"vce {step}: error: {argv[argv.index('--out') + 1] if '--out' in argv else out / 'report.json'}: " \
                   "read-only file system, cannot write there; choose another output directory"
    assert list(read_only.iterdir()) == []


def test_read_only_write_inside_atomic_dir_names_the_output(read_only):
    """The real EROFS of a write (not the CLI's preflight): named as the output, not its temporary sibling."""
    with pytest.raises(VCEEnvironmentError) as info:
        with atomic_dir(read_only / "out"):
            pass
    assert str(info.value) == f"{read_only / 'out'}: read-only file system, cannot write there; choose another output directory"
    try:
        (read_only / "x.txt").write_text("x")
    except OSError as exc:
        assert str(environment_error(exc)) == f"{read_only / 'x.txt'}: read-only file system, cannot write there; " \
                                              "choose another output directory"
    else:
        pytest.fail("a read-only tmpfs accepted a write")


# --------------------------------------------------------------------------- full disk


def test_full_disk_train_torch_write_is_one_line_naming_the_output(full_disk, tiny_normalized, capsys):
    """torch's zip writer fails with a RuntimeError (no errno) on a full disk: reported as no space, naming the file."""
    out = full_disk / "run"
    rc, err = _cli(capsys, "train", "--variant", "pgmgvce_main", "--normalized", str(tiny_normalized), "--out", str(out),
                   "--no-tracking", "--device", "cpu")
    line = _one_error_line(err)
    assert rc == 2 and str(out) in line and "no space left on device" in line, line
    assert ".tmp-" not in line
    assert not out.exists() and _debris(full_disk) == []


def test_full_disk_normalize_is_refused_before_the_memory_mapped_write(full_disk, tiny_split, capsys):
    out = full_disk / "normalized"
    rc, err = _cli(capsys, "normalize", "--split", str(tiny_split), "--out", str(out))
    line = _one_error_line(err)
    assert rc == 2
    assert line.startswith(f"vce normalize: error: {out}: not enough free disk space for the normalised slice store: needs ")
    assert line.endswith(" free") and "head-room" in line
    assert not out.exists() and _debris(full_disk) == []


def test_full_disk_failures_as_the_machine_raises_them(full_disk, tmp_path):
    """Real exceptions from a real full disk: OSError ENOSPC, torch's RuntimeError, numpy's EOFError
    on the truncated file; the same RuntimeError / EOFError on a roomy disk are bugs (None)."""
    (full_disk / "t.npy").write_bytes(b"")  # a write the full disk cut short: nothing landed
    big = full_disk / "big.bin"
    with pytest.raises(OSError) as info:
        big.write_bytes(b"\1" * (2 * 2**20))
    assert info.value.filename is None  # write(2) names no file: the caller's output is named
    err = environment_error(info.value, big)
    assert str(err) == f"{big}: no space left on device; free some space or choose another output directory"

    with pytest.raises(RuntimeError) as info:
        torch.save({"w": torch.zeros(2**20)}, full_disk / "w.pt")
    err = environment_error(info.value, full_disk / "w.pt")
    assert str(err) == (f"{full_disk / 'w.pt'}: no space left on device; free some space or choose another output "
                        "directory (the write failed with the disk full)")
    assert environment_error(info.value, tmp_path / "w.pt") is None  # plenty of space there: not the disk

    with pytest.raises(EOFError) as info:
        np.load(full_disk / "t.npy")
    assert "no space left on device" in str(environment_error(info.value, full_disk / "t.npy"))
    assert environment_error(info.value, tmp_path) is None


def test_ensure_free_space_names_the_output_and_both_sizes(full_disk):
    with pytest.raises(VCEEnvironmentError) as info:
        ensure_free_space(full_disk, 2**20, "the slice store", final=full_disk / "split")
    msg = str(info.value)
    assert msg.startswith(f"{full_disk / 'split'}: not enough free disk space for the slice store: needs 65.0 MiB "
                          "(1.0 MiB + 64.0 MiB head-room), ")
    ensure_free_space(full_disk.parent, 2**20, "the slice store")  # the roomy disk above: fine


# --------------------------------------------------------------------------- other OSErrors, bugs


def test_oserror_naming_a_file_is_one_line(tiny_cohort, tmp_path, capsys):
    """``--report`` naming an existing directory: the rename fails with IsADirectoryError."""
    (tmp_path / "rep").mkdir()
    rc, err = _cli(capsys, "validate", "--raw", str(tiny_cohort), "--report", str(tmp_path / "rep"))
    line = _one_error_line(err)
    assert rc == 2 and line == f"vce validate: error: {tmp_path / 'rep'}: Is a directory"
    assert _debris(tmp_path) == []


def test_bugs_are_not_environment_errors(tmp_path):
    assert environment_error(KeyError("generator"), tmp_path) is None
    assert environment_error(ValueError("bad"), tmp_path) is None
    assert environment_error(OSError("no errno, no file"), tmp_path) is None
    assert environment_error(RuntimeError("PytorchStreamWriter failed writing file data/0"), tmp_path) is None
    try:
        open(tmp_path / "missing" / "x")  # noqa: SIM115
    except OSError as exc:
        assert str(environment_error(exc)) == f"{tmp_path / 'missing' / 'x'}: No such file or directory"
        assert environment_error(exc, any_oserror=False) is None


def test_temporary_siblings_are_named_as_their_output():
    assert untemp("/d/.run.tmp-vm-12-ab_c9/checkpoint.pt: x") == "/d/run/checkpoint.pt: x"
    assert untemp("/d/.report.json.tmp-host.lan-7-k2j3.json") == "/d/report.json"
    assert untemp("/d/.a.old-h-3-99/b") == "/d/a/b"
    assert untemp("/d/.hidden/file") == "/d/.hidden/file"


# --------------------------------------------------------------------------- stale temporary siblings


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _own_temp_name(parent: Path) -> tuple[str, int]:
    """(host, pid) as written into a temporary sibling's name by this process."""
    with atomic_dir(parent / "probe") as tmp:
        name = tmp.name
    shutil.rmtree(parent / "probe")
    host, pid = name[len(".probe.tmp-"):].split("-")[:2]
    return host, int(pid)


def test_temp_names_carry_host_and_pid(tmp_path):
    host, pid = _own_temp_name(tmp_path)
    assert pid == os.getpid() and host and "-" not in host
    with atomic_file(tmp_path / "a.json") as tmp:
        assert tmp.name.startswith(f".a.json.tmp-{host}-{pid}-") and tmp.name.endswith(".json")
        tmp.write_text("{}")


@pytest.mark.parametrize("writer", ["dir", "file"])
def test_stale_siblings_of_dead_processes_are_removed_live_ones_kept(tmp_path, writer):
    host, _ = _own_temp_name(tmp_path)
    dead = _dead_pid()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        final = tmp_path / ("out" if writer == "dir" else "out.json")
        n = final.name
        stale = [f".{n}.tmp-{host}-{dead}-abcd1234", f".{n}.old-{host}-{dead}-ef56", f".{n}.tmp-{host}-{dead}-x.json"]
        kept = [f".{n}.tmp-{host}-{live.pid}-abcd1234",  # a live process is still writing it
                f".{n}.tmp-otherhost-{dead}-abcd1234",  # another machine's process: cannot tell
                f".{n}.tmp-k2j3l4m5",  # the old format, without owner
                f".other.tmp-{host}-{dead}-abcd1234",  # another output's
                f".{n}.partial"]
        for name in stale[:2] + kept:
            (tmp_path / name).mkdir()
            (tmp_path / name / "part.npy").write_bytes(b"x")
        (tmp_path / stale[2]).write_text("{}")
        if writer == "dir":
            with atomic_dir(final) as tmp:
                (tmp / "a").write_text("a")
        else:
            write_json(final, {"a": 1})
        left = {p.name for p in tmp_path.iterdir()}
        assert not left & set(stale)
        assert set(kept) <= left and final.exists()
        assert remove_stale_siblings(final) == []  # nothing more to remove
    finally:
        live.kill()
        live.wait()


def test_object_array_error_names_the_file(tmp_path):
    from vce.io.errors import npy_error

    path = tmp_path / "T1.npy"
    np.save(path, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError) as info:
        np.load(path, mmap_mode="r", allow_pickle=False)
    assert str(npy_error(path, info.value)) == (
        f"{path}: holds an object array (pickled Python objects, dtype object), not numbers; it is not loaded "
        "(a pickle can run code); rewrite it with the step that makes it")
