#!/usr/bin/env python3
"""This machine's pip configuration, for ``podman build`` only (never baked into the image).

Reads the merged configuration (``pip config list``: the config files and the ``PIP_*``
environment variables, the environment winning), rewrites every local path it names (the CA
certificate, the constraint file, ``--find-links`` folders such as ``/opt/wheels`` with the
pinned torch wheel, ``file://`` indexes) to a place under ``MOUNT_ROOT``, and writes:

* ``OUT/pip.conf``: the ``[global]`` section with the rewritten paths;
* ``OUT/podman-args``: one ``podman build`` argument per line, the read-only bind mounts of those
  paths and of ``pip.conf`` plus ``--build-arg PIP_CONFIG_FILE=...``.

On a machine with no pip configuration both are empty apart from the (empty) config: the
Containerfile then builds with plain pip against the public index.

    python3 scripts/image/pip_build_config.py OUT_DIR
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

MOUNT_ROOT = "/run/vce-build"
PATH_KEYS = {"cert", "client-cert", "constraint", "find-links", "extra-index-url", "index-url", "requirement"}


def merged_config(pip: list[str]) -> dict[str, str]:
    """``{key: value}`` of the global/install options, environment variables last (they win)."""
    out = subprocess.run([*pip, "config", "list"], capture_output=True, text=True, check=True).stdout
    files, env = {}, {}
    for line in out.splitlines():
        name, _, raw = line.partition("=")
        section, _, key = name.rpartition(".")
        value = " ".join(shlex.split(raw))  # strips pip's quoting
        if section == ":env:":
            env[key] = value
        elif section in ("global", "install", "download", "wheel"):
            files[key] = value
    return {**files, **env}


def rewrite(value: str, mounts: dict[str, str]) -> str:
    """Each whitespace-separated token that is an existing local path (or ``file://`` URL) is
    moved under :data:`MOUNT_ROOT`; the mapping host path -> build path goes into ``mounts``."""
    tokens = []
    for tok in value.split():
        scheme = "file://" if tok.startswith("file://") else ""
        path = tok[len(scheme):]
        if path.startswith("/") and Path(path).exists():
            host = Path(path).resolve()
            # a file:// index links to its files relatively (../../files/...): mount its parent
            top = host.parent if scheme and host.name == "simple" else host
            mounts[str(top)] = f"{MOUNT_ROOT}/h{top}"
            tok = scheme + f"{MOUNT_ROOT}/h{host}"
        tokens.append(tok)
    return " ".join(tokens)


def main(out_dir: str) -> int:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = merged_config([sys.executable, "-m", "pip"])
    mounts: dict[str, str] = {}
    lines = ["[global]"] + [f"{k} = {rewrite(v, mounts) if k in PATH_KEYS else v}" for k, v in sorted(cfg.items())]
    (out / "pip.conf").write_text("\n".join(lines) + "\n")
    args = [f"--volume={host}:{dst}:ro" for host, dst in sorted(mounts.items())]
    args += [f"--volume={(out / 'pip.conf').resolve()}:{MOUNT_ROOT}/pip.conf:ro",
             f"--build-arg=PIP_CONFIG_FILE={MOUNT_ROOT}/pip.conf"]
    (out / "podman-args").write_text("\n".join(args) + "\n")
    print(f"pip build config: {len(cfg)} options, {len(mounts)} local paths mounted read-only", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
