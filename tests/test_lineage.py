"""Lineage (vce.lineage) against independent computations, and on real MLflow runs (SQLite in tmp).

The data md5 is checked against what the real ``dvc add`` writes into a .dvc file for the same
folder; the commit against ``git rev-parse``; the tags and the input dataset against a real store.
"""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT
from vce import lineage
from vce.lineage import Sources, collect, dvc_dir_md5, dvc_file_md5, git_state, sources_from_env


def _env() -> dict[str, str]:
    env = dict(os.environ, DVC_NO_ANALYTICS="1")
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    return env


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


def _repo(path: Path) -> Path:
    path.mkdir()
    _git(path, "init", "-q")
    _git(path, "config", "user.email", "t@example.org")
    _git(path, "config", "user.name", "t")
    return path


def _folder(root: Path) -> Path:
    """A cohort-like folder: nested files, binary bytes, CRLF text (DVC 3 hashes bytes as they are)."""
    (root / "P001").mkdir(parents=True)
    (root / "P002" / "deep").mkdir(parents=True)
    (root / "P001" / "T1.nii.gz").write_bytes(bytes(range(256)) * 7)
    (root / "P002" / "deep" / "notes.txt").write_bytes(b"line one\r\nline two\r\n")
    (root / "cohort.json").write_text(json.dumps({"seed": 7}))
    return root


def test_data_md5_equals_what_dvc_add_writes(tmp_path):
    repo = _repo(tmp_path / "r")
    data = _folder(repo / "data")
    (repo / "manifest.csv").write_text("patient,split\r\nP001,train\n")
    subprocess.run(["dvc", "init", "-q"], cwd=repo, env=_env(), check=True)
    subprocess.run(["dvc", "add", "-q", "data", "manifest.csv"], cwd=repo, env=_env(), check=True)
    dir_out = yaml.safe_load((repo / "data.dvc").read_text())["outs"][0]
    file_out = yaml.safe_load((repo / "manifest.csv.dvc").read_text())["outs"][0]
    assert dvc_dir_md5(data) == dir_out["md5"]
    assert dvc_file_md5(repo / "manifest.csv") == file_out["md5"]
    (data / "P001" / "T1.nii.gz").write_bytes(b"changed")
    assert dvc_dir_md5(data) != dir_out["md5"]


def test_git_commit_and_dirty_flag(tmp_path, monkeypatch):
    repo = _repo(tmp_path / "r")
    (repo / "a.txt").write_text("a")
    _git(repo, "add", "a.txt")
    _git(repo, "commit", "-qm", "one")
    assert git_state(repo) == (_git(repo, "rev-parse", "HEAD"), False)
    (repo / "untracked.txt").write_text("u")  # untracked files do not make the tree dirty
    assert git_state(repo)[1] is False
    (repo / "a.txt").write_text("b")
    assert git_state(repo) == (_git(repo, "rev-parse", "HEAD"), True)
    outside = tmp_path / "no_git"
    outside.mkdir()
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    monkeypatch.delenv(lineage.ENV_COMMIT, raising=False)
    assert git_state(outside) == (None, None)
    monkeypatch.setenv(lineage.ENV_COMMIT, "abc123")  # an image built from a commit
    assert git_state(outside) == ("abc123", None)


def test_sources_from_env(monkeypatch, tmp_path):
    for k in ("DVC_ROOT", lineage.ENV_RAW, lineage.ENV_SPLIT):
        monkeypatch.delenv(k, raising=False)
    assert sources_from_env() == Sources()
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))  # inside a dvc repro stage
    assert sources_from_env() == Sources(raw=tmp_path / "data", split=tmp_path / "outputs" / "split")
    monkeypatch.setenv(lineage.ENV_RAW, "/elsewhere/cohort")
    assert sources_from_env() == Sources(raw=Path("/elsewhere/cohort"))


def test_dvc_layout_is_dvc_yaml_s():
    """The paths lineage reads inside a DVC stage are the ones dvc.yaml's stages use."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert lineage.DVC_LAYOUT["raw"] in stages["register"]["deps"]
    assert lineage.DVC_LAYOUT["split"] in stages["split"]["outs"]
    assert f"--raw {lineage.DVC_LAYOUT['raw']} " in stages["register"]["cmd"]


def _split_dir(root: Path) -> Path:
    root.mkdir(parents=True)
    with open(root / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["patient", "split", "n_slices"])
        w.writerows([["P001", "train", "4"], ["P002", "test", "5"]])
    (root / "split.json").write_text(json.dumps({"seed": 7, "split_id": "f" * 64}))
    return root


def test_runs_record_lineage_in_a_real_store(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from vce.tracking import log_lineage, start_run

    for k in ("DVC_ROOT", lineage.ENV_RAW, lineage.ENV_SPLIT):
        monkeypatch.delenv(k, raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    data, split = _folder(tmp_path / "data"), _split_dir(tmp_path / "split")
    parent = start_run(uri, "study-tiny", tags={"vce.role": "study"}, lineage_sources=Sources(raw=data))
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))  # the child finds data/ and split/ like a DVC stage
    monkeypatch.setenv(lineage.ENV_SPLIT, str(split))
    monkeypatch.setenv(lineage.ENV_RAW, str(data))
    child = start_run(uri, "pgmgvce_main", parent_run_id=parent.run_id)
    log_lineage(parent, Sources(split=split))  # the parent, once its split exists
    client = MlflowClient(uri)
    commit, dirty = git_state(ROOT)
    for run_id in (parent.run_id, child.run_id):
        run = client.get_run(run_id)
        tags = run.data.tags
        assert tags["mlflow.source.git.commit"] == commit == _git(ROOT, "rev-parse", "HEAD")
        assert tags["vce.git.dirty"] == str(dirty).lower()
        assert tags["vce.data.md5"] == dvc_dir_md5(data)
        assert tags["vce.split_id"] == "f" * 64
        assert tags["vce.split.manifest_md5"] == dvc_file_md5(split / "manifest.csv")
        (inp,) = run.inputs.dataset_inputs
        assert inp.dataset.name == lineage.DATASET_NAME
        assert inp.dataset.digest == dvc_file_md5(split / "manifest.csv")
        assert str(split / "manifest.csv") in inp.dataset.source
        assert {t.key: t.value for t in inp.tags}["mlflow.data.context"] == "split"
        assert [c["name"] for c in json.loads(inp.dataset.schema)["mlflow_colspec"]] == ["patient", "split", "n_slices"]
    assert client.get_run(child.run_id).data.tags["mlflow.parentRunId"] == parent.run_id


def test_missing_sources_do_not_stop_a_run(tmp_path):
    got = collect(Sources(raw=tmp_path / "absent", split=tmp_path / "absent_split"))
    assert got.data_md5 is None and got.split_id is None and got.dataset is None
    assert set(got.tags()) <= {"mlflow.source.git.commit", "vce.git.dirty"}


@pytest.mark.parametrize("text, key, want", [
    ("amp: off", "amp", "off"), ("lr: 1e-05", "lr", 1e-05), ("iterations: 3", "iterations", 3),
    ("compile: false", "compile", False), ("keep: 'last'", "keep", "last"),
])
def test_params_scalars_read_as_dvc_writes_them(text, key, want):
    """ruamel.yaml (DVC) writes YAML 1.2: ``off`` is a string, ``1e-05`` a float (YAML 1.1: False, a string)."""
    from vce.config import load_yaml

    got = load_yaml(text)[key]
    assert got == want and type(got) is type(want)
