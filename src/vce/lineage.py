"""Lineage of a tracked run: which code, which data, which split.

:func:`collect` computes, without MLflow or DVC:

- the git commit of the code (``mlflow.source.git.commit``, MLflow's own tag) and whether the
  work tree had uncommitted changes to tracked files (``vce.git.dirty``); outside a git checkout
  (an installed package, a container image) ``$VCE_GIT_COMMIT`` names it, else it is absent;
- the data version: the DVC md5 of the raw cohort directory, exactly as ``dvc add`` writes it
  into ``data.dvc`` (``<md5>.dir``: :func:`dvc_dir_md5`), and the DVC md5 of the split's
  ``manifest.csv`` (:func:`dvc_file_md5`);
- the split's ``split_id`` (``outputs/split/split.json``) and a description of the split
  manifest as a dataset (name, digest, source) that :mod:`vce.tracking` logs with
  ``mlflow.log_input``.

Which directories: :class:`Sources`, given by the caller, else :func:`sources_from_env`
(``$VCE_LINEAGE_RAW`` / ``$VCE_LINEAGE_SPLIT``, else, inside a ``dvc repro`` / ``dvc exp run``
stage, the DVC pipeline's layout :data:`DVC_LAYOUT` under ``$DVC_ROOT``). Nothing here guesses
a path outside those rules: a run whose sources are unknown records the git commit only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

CHUNK = 1 << 20
#: Names DVC never hashes inside a tracked directory (its built-in ignore rules).
DVC_ALWAYS_IGNORED = frozenset({".git", ".hg", ".dvc"})
#: The raw cohort and split directories of the DVC pipeline (dvc.yaml's paths, relative to
#: ``$DVC_ROOT``); tests/test_lineage.py checks dvc.yaml uses them.
DVC_LAYOUT = {"raw": "data", "split": "outputs/split"}
ENV_RAW, ENV_SPLIT, ENV_COMMIT = "VCE_LINEAGE_RAW", "VCE_LINEAGE_SPLIT", "VCE_GIT_COMMIT"
DATASET_NAME = "vce-split"
PROJECT_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Sources:
    """The raw cohort and split directories of a run (either may be unknown: ``None``)."""

    raw: Path | None = None
    split: Path | None = None


@dataclass(frozen=True)
class Dataset:
    """The split manifest as an MLflow dataset: ``name``, ``digest`` (its DVC md5), ``source``
    (the manifest file) and its ``rows`` (one per patient, the manifest's columns)."""

    name: str
    digest: str
    source: str
    rows: list[dict[str, str]]


@dataclass(frozen=True)
class Lineage:
    """What :func:`collect` found; :meth:`tags` are the run tags."""

    commit: str | None = None
    dirty: bool | None = None
    data_md5: str | None = None
    data_path: str | None = None
    manifest_md5: str | None = None
    split_id: str | None = None
    dataset: Dataset | None = None

    def tags(self) -> dict[str, str]:
        """Run tags: ``mlflow.source.git.commit``, ``vce.git.dirty``, ``vce.data.md5``,
        ``vce.data.path``, ``vce.split.manifest_md5``, ``vce.split_id`` (the known ones)."""
        tags = {"mlflow.source.git.commit": self.commit, "vce.data.md5": self.data_md5,
                "vce.data.path": self.data_path, "vce.split.manifest_md5": self.manifest_md5,
                "vce.split_id": self.split_id}
        if self.dirty is not None:
            tags["vce.git.dirty"] = str(self.dirty).lower()
        return {k: v for k, v in tags.items() if v is not None}


def dvc_file_md5(path: str | Path) -> str:
    """The md5 DVC 3 records for one file: of its bytes, as they are (no line-ending conversion)."""
    h = hashlib.md5()  # noqa: S324 - DVC's content address, not a security use
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _dir_entries(root: Path) -> list[dict[str, str]]:
    """``[{"md5", "relpath"}]`` of every file under ``root`` (DVC's built-in ignores left out),
    sorted by posix relative path, as DVC lists a directory's tree."""
    entries = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in DVC_ALWAYS_IGNORED]
        for name in filenames:
            if name in DVC_ALWAYS_IGNORED:
                continue
            f = Path(dirpath) / name
            entries.append({"md5": dvc_file_md5(f), "relpath": f.relative_to(root).as_posix()})
    return sorted(entries, key=lambda e: e["relpath"])


def dvc_dir_md5(path: str | Path) -> str:
    """The md5 DVC 3 records for a directory (``dvc add DIR`` -> ``DIR.dvc``'s ``md5``):
    ``<md5 of the tree's JSON>.dir``, the tree being :func:`_dir_entries` dumped as DVC does
    (``json.dumps(..., sort_keys=True)``). Raises ``NotADirectoryError`` for a non-directory."""
    root = Path(path)
    if not root.is_dir():
        raise NotADirectoryError(f"{root}: not a directory")
    tree = json.dumps(_dir_entries(root), sort_keys=True).encode("utf-8")
    return hashlib.md5(tree).hexdigest() + ".dir"  # noqa: S324


def git_state(repo: str | Path = PROJECT_ROOT) -> tuple[str | None, bool | None]:
    """``(commit, dirty)`` of the git checkout holding ``repo``; dirty: tracked files differ
    from the commit (untracked files do not count). ``(None, None)`` outside a checkout or
    without git, unless ``$VCE_GIT_COMMIT`` names the commit (``(commit, None)``: unknown dirt)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True,
                              timeout=30).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        env = os.environ.get(ENV_COMMIT) or None
        return env, None
    return commit, dirty


def sources_from_env() -> Sources:
    """``$VCE_LINEAGE_RAW`` / ``$VCE_LINEAGE_SPLIT`` when set; else, in a DVC stage
    (``$DVC_ROOT`` set by ``dvc repro`` / ``dvc exp run``), :data:`DVC_LAYOUT` under it; else none."""
    raw, split = os.environ.get(ENV_RAW), os.environ.get(ENV_SPLIT)
    dvc_root = os.environ.get("DVC_ROOT")
    if dvc_root and not (raw or split):
        raw, split = (str(Path(dvc_root) / DVC_LAYOUT[k]) for k in ("raw", "split"))
    return Sources(raw=Path(raw) if raw else None, split=Path(split) if split else None)


def split_dataset(split_dir: str | Path) -> Dataset:
    """The split's ``manifest.csv`` as a :class:`Dataset` (digest: its DVC md5)."""
    import csv

    manifest = Path(split_dir) / "manifest.csv"
    with open(manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    return Dataset(name=DATASET_NAME, digest=dvc_file_md5(manifest), source=str(manifest.resolve()), rows=rows)


def collect(sources: Sources | None = None, repo: str | Path = PROJECT_ROOT) -> Lineage:
    """The :class:`Lineage` of a run over ``sources`` (default :func:`sources_from_env`) with the
    code of ``repo``. A missing directory is left out with a warning, never an error: lineage
    must not stop a run."""
    src = sources if sources is not None else sources_from_env()
    commit, dirty = git_state(repo)
    found: dict[str, object] = {"commit": commit, "dirty": dirty}
    if src.raw is not None:
        if src.raw.is_dir():
            found.update(data_md5=dvc_dir_md5(src.raw), data_path=str(src.raw))
        else:
            logger.warning("lineage: raw cohort %s is not a directory; its version is not recorded", src.raw)
    if src.split is not None:
        manifest, summary = src.split / "manifest.csv", src.split / "split.json"
        if manifest.is_file() and summary.is_file():
            found.update(manifest_md5=dvc_file_md5(manifest), dataset=split_dataset(src.split),
                         split_id=json.loads(summary.read_text()).get("split_id"))
        else:
            logger.warning("lineage: %s holds no manifest.csv + split.json; the split is not recorded", src.split)
    lineage = Lineage(**found)  # type: ignore[arg-type]
    logger.info("lineage: commit %s%s, data %s, split %s", (commit or "unknown")[:12], " (dirty)" if dirty else "",
                lineage.data_md5 or "unknown", (lineage.split_id or "unknown")[:12])
    return lineage
