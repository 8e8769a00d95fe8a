"""DVC remotes with the real DVC CLI: push a synthesised cohort, lose cache and data, pull it back
bit for bit, to a local folder remote and to a real S3 endpoint on loopback (moto's server,
as a MinIO stand-in that installs here); and why `dvc status data.dvc` says "not in cache" on a
fresh clone (an empty cache, not different data) and what fixes it. All but the config check are
slow (`make test-slow`).
"""

import dataclasses
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT
from vce.lineage import dvc_dir_md5, dvc_file_md5


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, DVC_NO_ANALYTICS="1", **extra)
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    return env


def _run(cwd: Path, *cmd: str, env: dict[str, str] | None = None) -> str:
    r = subprocess.run(cmd, cwd=cwd, env=env or _env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout}\n{r.stderr}"
    return r.stdout + r.stderr


def _synth(out: Path) -> None:
    """A 2-patient cohort of the tiny profile, through the real synthesiser."""
    from vce import steps
    from vce.config import load_config

    cfg = load_config(ROOT / "params.yaml", "tiny")
    steps.synth(out, dataclasses.replace(cfg, synth=dataclasses.replace(cfg.synth, n_patients=2)), workers=1)


def _files(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): dvc_file_md5(p) for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("cohort") / "data"
    _synth(d)
    return d


def _project(path: Path, cohort: Path) -> Path:
    """A git + DVC project whose data/ (a copy of ``cohort``) is added and committed."""
    path.mkdir()
    _run(path, "git", "init", "-q")
    _run(path, "git", "config", "user.email", "t@example.org")
    _run(path, "git", "config", "user.name", "t")
    _run(path, "dvc", "init", "-q")
    subprocess.run(["cp", "-r", str(cohort), str(path / "data")], check=True)
    _run(path, "dvc", "add", "-q", "data")
    _run(path, "git", "add", "-A")
    _run(path, "git", "commit", "-qm", "data")
    return path


def _lose_and_pull(repo: Path, remote: str | None = None, env: dict[str, str] | None = None) -> None:
    """Remove the cache and the data, then ``dvc pull`` them (from ``remote`` or the default)."""
    subprocess.run(["rm", "-rf", str(repo / ".dvc" / "cache"), str(repo / "data")], check=True)
    _run(repo, "dvc", "pull", *(["-r", remote] if remote else []), env=env)


def test_default_remote_is_a_local_folder_outside_the_repo():
    listed = _run(ROOT, "dvc", "remote", "list")
    (default,) = [line.split() for line in listed.splitlines() if "(default)" in line]
    assert Path(default[1]) == Path.home() / ".cache" / "vce" / "dvc-remote"  # DVC expands the config's ~
    assert "url = ~/" in (ROOT / ".dvc" / "config").read_text()  # outside the tracked tree, on every clone
    assert "s3://" not in listed  # the S3 remote is documented (README), not forced on a fresh clone


@pytest.mark.slow  # real DVC CLI round trips: about 20 s each on 2 cores
def test_push_pull_local_remote_round_trip(tmp_path, cohort):
    repo = _project(tmp_path / "repo", cohort)
    before = _files(repo / "data")
    recorded = yaml.safe_load((repo / "data.dvc").read_text())["outs"][0]
    _run(repo, "dvc", "remote", "add", "-d", "tmp", str(tmp_path / "remote"))
    assert "pushed" in _run(repo, "dvc", "push")
    _lose_and_pull(repo)
    assert _files(repo / "data") == before and len(before) == recorded["nfiles"]
    assert dvc_dir_md5(repo / "data") == recorded["md5"]
    assert "up to date" in _run(repo, "dvc", "status", "data.dvc")


@pytest.mark.slow  # real DVC CLI round trips: about 20 s each on 2 cores
def test_fresh_clone_not_in_cache_means_empty_cache(tmp_path, cohort):
    """On a fresh clone DVC's cache is empty: `dvc status data.dvc` says "not in cache" for the very
    same data (synthesis is deterministic), "modified" for other data. `dvc commit data.dvc`
    caches the synthesised cohort; then status is up to date and data.dvc unchanged."""
    origin = _project(tmp_path / "origin", cohort)
    clone = tmp_path / "clone"
    _run(tmp_path, "git", "clone", "-q", str(origin), str(clone))
    _synth(clone / "data")  # a fresh synthesis, as the README says
    status = _run(clone, "dvc", "status", "data.dvc")
    assert "not in cache" in status and "modified" not in status
    _run(clone, "dvc", "commit", "data.dvc")
    assert "up to date" in _run(clone, "dvc", "status", "data.dvc")
    assert _run(clone, "git", "status", "--porcelain", "data.dvc") == ""  # the same data: nothing to commit
    (clone / "data" / "cohort.json").write_text("{}")
    assert "modified" in _run(clone, "dvc", "status", "data.dvc")


@pytest.mark.slow
def test_demo_synthesis_is_what_data_dvc_records(tmp_path):
    """`vce synth --out data` (demo profile) gives exactly the cohort data.dvc records."""
    _run(tmp_path, "vce", "synth", "--out", str(tmp_path / "data"), "--profile", "demo")
    recorded = yaml.safe_load((ROOT / "data.dvc").read_text())["outs"][0]
    assert dvc_dir_md5(tmp_path / "data") == recorded["md5"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def s3_endpoint(tmp_path):
    """moto's standalone S3 server on loopback: ``(endpoint url, credentials env)``."""
    moto = Path(sys.executable).parent / "moto_server"
    assert moto.is_file(), "moto_server missing: pip install -r requirements.txt (moto[server])"
    port = _free_port()
    log = open(tmp_path / "moto.log", "w")
    proc = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    creds = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.2)
        else:
            pytest.fail(f"moto_server did not listen on {port}: {(tmp_path / 'moto.log').read_text()}")
        yield url, creds
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


@pytest.mark.slow  # real DVC CLI round trips: about 20 s each on 2 cores
def test_push_pull_s3_remote_on_loopback(tmp_path, cohort, s3_endpoint):
    import boto3

    url, creds = s3_endpoint
    s3 = boto3.client("s3", endpoint_url=url, aws_access_key_id="testing", aws_secret_access_key="testing",
                      region_name="us-east-1")
    s3.create_bucket(Bucket="vce-data")
    repo = _project(tmp_path / "repo", cohort)
    before = _files(repo / "data")
    # as the README documents it (credentials from the environment, never in .dvc/config)
    _run(repo, "dvc", "remote", "add", "s3", "s3://vce-data/dvc")
    _run(repo, "dvc", "remote", "modify", "s3", "endpointurl", url)
    env = _env(**creds)
    assert "pushed" in _run(repo, "dvc", "push", "-r", "s3", env=env)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="vce-data", Prefix="dvc/")["Contents"]]
    recorded = yaml.safe_load((repo / "data.dvc").read_text())["outs"][0]
    assert len(keys) == recorded["nfiles"] + 1  # every file + the directory's .dir listing
    assert any(k.endswith(".dir") for k in keys)
    _lose_and_pull(repo, "s3", env)
    assert _files(repo / "data") == before
    assert "testing" not in (repo / ".dvc" / "config").read_text()


def _expected_stages() -> dict[str, str]:
    """dvc.yaml's stages as DVC names them (``foreach`` over params.yaml's mappings -> ``stage@key``)
    with their commands, ``${key}`` substituted."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    out: dict[str, str] = {}
    for name, st in stages.items():
        if "foreach" not in st:
            out[name] = st["cmd"]
            continue
        items = params[st["foreach"].strip("${}")]
        for key in items:
            out[f"{name}@{key}"] = st["do"]["cmd"].replace("${key}", key)
    return out


def test_dvc_lock_lists_dvc_yaml_stages_with_their_commands():
    """The committed dvc.lock (a tiny-profile `dvc repro`) lists exactly dvc.yaml's stages with the
    same commands. Deliberately not compared: the md5s of the code deps, which change with every
    edit of the sources (the lock is refreshed by a repro, not kept byte-exact by tests)."""
    lock = yaml.safe_load((ROOT / "dvc.lock").read_text())
    assert lock["schema"] == "2.0"
    expected = _expected_stages()
    assert set(lock["stages"]) == set(expected)
    for name, cmd in expected.items():
        assert lock["stages"][name]["cmd"] == cmd, name
        assert lock["stages"][name]["outs"], f"{name}: no outputs recorded"
    assert lock["stages"]["register"]["params"]["params.yaml"]["profile"] == "tiny"
