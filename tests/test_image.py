"""The project image for real: built here with podman (``make image``), ``vce --help`` and the
cohort step run inside it, and the tiny study DAG run through kfp's DockerRunner against
podman's Docker-compatible API (docs/container.md).

The fast tests check the build's pip-configuration writer and the runner plumbing; the image
tests are slow (the first build takes minutes; later ones reuse podman's layer cache).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT

SCRIPTS = ROOT / "scripts" / "image"
SOCKET = "/run/vce-podman.sock"
PYTHON_IN_IMAGE = "/opt/vce/bin/python3"
IMAGE_UID = 10001  # the Containerfile's VCE_UID
#: who the study's containers run as (vce.study.container_user): the image's user under root, else you
WRITER_UID = IMAGE_UID if os.geteuid() == 0 else os.geteuid()


def _image() -> str:
    import components

    return components.VCE_IMAGE


def podman(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    """``podman ARGS`` (the settings of /etc/containers/containers.conf, podman-setup.sh)."""
    r = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


# --------------------------------------------------------------------------- fast
def test_pip_build_config_mounts_every_local_path(tmp_path):
    """The build sees this machine's pip configuration only through read-only mounts under
    /run/vce-build, and the written config names no host path outside them."""
    r = subprocess.run([sys.executable, str(SCRIPTS / "pip_build_config.py"), str(tmp_path)],
                       capture_output=True, text=True, check=True)
    conf = (tmp_path / "pip.conf").read_text()
    args = (tmp_path / "podman-args").read_text().split()
    assert conf.startswith("[global]") and "pip build config" in r.stderr
    assert args[-1] == "--build-arg=PIP_CONFIG_FILE=/run/vce-build/pip.conf"
    mounts = [a[len("--volume="):].split(":") for a in args if a.startswith("--volume=")]
    assert all(mode == "ro" and dst.startswith("/run/vce-build/") for _, dst, mode in mounts)
    assert all(Path(src).exists() for src, _, _ in mounts)
    for line in conf.splitlines()[1:]:
        for tok in line.partition("=")[2].split():
            path = tok.removeprefix("file://")
            if path.startswith("/"):
                assert path.startswith("/run/vce-build/h/"), line
                host = path[len("/run/vce-build/h"):]
                assert any(host == src or host.startswith(src + "/") for src, _, _ in mounts), line


def test_runner_choice_and_sqlite_store(tmp_path):
    from vce.study import RUNNERS, run_study, sqlite_store_dir

    assert RUNNERS == ("subprocess", "docker")
    with pytest.raises(ValueError, match="runner 'kubernetes'"):
        run_study(None, data=tmp_path, out=tmp_path / "out", runner="kubernetes")
    assert sqlite_store_dir(f"sqlite:///{tmp_path}/m/mlflow.db") == tmp_path / "m"
    assert sqlite_store_dir("http://127.0.0.1:5000") is None and sqlite_store_dir(None) is None


def test_cli_run_takes_a_runner():
    from vce.cli import build_parser

    p = build_parser()
    assert p.parse_args(["run"]).runner == "subprocess"
    assert p.parse_args(["run", "--runner", "docker"]).runner == "docker"
    with pytest.raises(SystemExit):
        p.parse_args(["run", "--runner", "k8s"])


def test_containerignore_is_an_allow_list():
    lines = [ln for ln in (ROOT / ".containerignore").read_text().splitlines() if ln and not ln.startswith("#")]
    assert lines[0] == "*"
    allowed = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    assert allowed == {"requirements.txt", "pyproject.toml", "README.md", "src", "components", "pipelines"}
    text = (ROOT / "Containerfile").read_text()
    for src in ("requirements.txt", "pyproject.toml README.md", "src", "components", "pipelines"):
        assert f"COPY {src} " in text, src  # everything copied is allowed, nothing else is sent


# --------------------------------------------------------------------------- slow: the image
@pytest.fixture(scope="module")
def image() -> str:
    """The image, built (or reused from podman's layer cache) by ``scripts/image/build.sh``."""
    r = subprocess.run(["bash", str(SCRIPTS / "build.sh")], cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, f"image build failed:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    info = json.loads((ROOT / "build" / "image.json").read_text())
    assert info["image"] == _image() and info["size_bytes"] > 100e6
    return info["image"]


@pytest.mark.slow
def test_vce_help_runs_in_the_image_as_non_root(image):
    out = podman("run", "--rm", image).stdout  # the image's CMD: vce --help
    assert "usage: vce" in out and " run " in out.replace("{", " ").replace(",", " ")
    ids = podman("run", "--rm", image, "sh", "-c", "id -u; id -g; command -v python3; command -v vce").stdout.split()
    assert ids[0] != "0" and ids[1] != "0", ids
    assert ids[2:] == [PYTHON_IN_IMAGE, "/opt/vce/bin/vce"]
    cfg = json.loads(podman("image", "inspect", image).stdout)[0]["Config"]
    assert cfg["User"].split(":")[0] == ids[0] and not cfg.get("Entrypoint")


@pytest.mark.slow
def test_image_has_no_data_and_no_pip_configuration(image):
    """No pip configuration, wheel folder or index of this machine, no PIP_* variables, no data,
    outputs, MLflow stores or git/DVC files; the package is installed, not a source checkout.

    Outside the installed packages' own files (Debian's pip/setuptools wheels for venv, nilearn's
    MNI templates, nibabel's test images) and the build mounts' empty mount points, which podman
    leaves in the image (``/run/vce-build``: checked to hold only empty files)."""
    env = json.loads(podman("image", "inspect", image).stdout)[0]["Config"]["Env"]
    assert not [e for e in env if e.startswith("PIP_")], env
    script = r"""
set -e
ls /etc/pip.conf /etc/xdg/pip /root/.pip /root/.config/pip /opt/wheels /opt/pypi /opt/pypi-more 2>/dev/null || true
find / -xdev \( -path /proc -o -path /sys -o -path /usr/share/python-wheels -o -path /run/vce-build \
  -o -path '/opt/vce/lib/python3.11/site-packages/*' \) -prune -o \( -name '*.whl' -o -name 'pip.conf' -o -name '*.db' \
  -o -name 'mlruns' -o -name '.git' -o -name '.dvc' -o -name 'params.yaml' -o -name 'cohort.json' -o -name '*.nii.gz' \
  -o -name 'data' -o -name 'outputs' \) -print 2>/dev/null || true
cd /opt/vce/lib/python3.11/site-packages
find vce components pipelines \( -name '*.db' -o -name '*.nii*' -o -name '*.whl' -o -name '*.npy' -o -name 'mlruns' \) -print
ls /usr/share/python-wheels 2>/dev/null | grep -v -E '^(pip|setuptools|wheel)-' || true
find /run/vce-build -type f -size +0 2>/dev/null || true
find / -xdev -name 'pip.conf' -size +0 -print 2>/dev/null || true
echo END
python3 -c 'import vce, components, pipelines; print(vce.__file__); print(components.VCE_IMAGE)'
"""
    out = podman("run", "--rm", image, "sh", "-c", script).stdout.splitlines()
    end = out.index("END")
    assert out[:end] == [], out[:end]
    assert out[end + 1].startswith("/opt/vce/lib/python3.11/site-packages/vce/")
    assert out[end + 2] == _image()


@pytest.mark.slow
def test_the_cohort_step_runs_in_the_image(image, tmp_path, tiny_cfg):
    """``vce synth`` (what the cohort component does on an empty source) at the tiny profile,
    writing into a bind-mounted folder, checked here on the host."""
    uid = json.loads(podman("image", "inspect", image).stdout)[0]["Config"]["User"].split(":")[0]
    os.chown(tmp_path, int(uid), int(uid))
    podman("run", "--rm", "-v", f"{tmp_path}:/work:rw", "-v", f"{ROOT / 'params.yaml'}:/params.yaml:ro", image,
           "vce", "synth", "--params", "/params.yaml", "--profile", "tiny", "--out", "/work/data", timeout=600)
    data = tmp_path / "data"
    meta = json.loads((data / "cohort.json").read_text())
    patients = sorted(p for p in data.iterdir() if p.is_dir())
    assert len(patients) == tiny_cfg.synth.n_patients and meta["seed"] == tiny_cfg.seed
    for p in patients:
        assert len(list(p.glob("*.nii.gz"))) >= 3, p
    assert data.stat().st_uid == int(uid)  # written by the image's user, inside the container


# --------------------------------------------------------------------------- slow: the DAG in containers
@pytest.fixture(scope="module")
def docker_host(image):
    """podman's Docker API (scripts/image/podman-socket.sh) as $DOCKER_HOST for the module."""
    r = subprocess.run(["bash", str(SCRIPTS / "podman-socket.sh")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    host = r.stdout.strip().removeprefix("export DOCKER_HOST=")
    assert host == f"unix://{SOCKET}"
    saved = os.environ.get("DOCKER_HOST")
    os.environ["DOCKER_HOST"] = host
    yield host
    if saved is None:
        os.environ.pop("DOCKER_HOST", None)
    else:
        os.environ["DOCKER_HOST"] = saved


@pytest.fixture(scope="module")
def docker_study(docker_host, tmp_path_factory):
    """The tiny study, two variants (main and baseline: every step of the DAG, kept short), through
    ``run_study(runner="docker")``: every component a container of the image."""
    from vce.config import load_config
    from vce.study import run_study

    work = tmp_path_factory.mktemp("docker_study")
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["profiles"]["tiny"]["study"]["variants"] = ["pgmgvce_main", "baseline_mmgsn"]
    params = work / "params.yaml"
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    cfg = load_config(params, "tiny")
    uri = f"sqlite:///{work / 'mlflow' / 'mlflow.db'}"
    report = run_study(cfg, data=work / "data", out=work / "out", tracking_uri=uri, params_path=params, runner="docker")
    return {"work": work, "uri": uri, "report": report, "cfg": cfg}


@pytest.mark.slow
def test_tiny_study_through_the_docker_runner(docker_study):
    report = docker_study["report"]
    doc = json.loads((report / "metrics.json").read_text())
    assert set(doc["variants"]) == {"pgmgvce_main", "baseline_mmgsn"}
    assert {"summary.md", "report.html", "table1_accuracy.csv"} <= {p.name for p in report.iterdir()}
    # every task's outputs were written inside a container, by the image's non-root user
    kfp_root = docker_study["work"] / "out" / "kfp"
    written = [p for p in kfp_root.rglob("*") if p.is_file()]
    assert written and {p.stat().st_uid for p in written} == {WRITER_UID}


@pytest.mark.slow
def test_tasks_tracked_from_inside_the_image(docker_study):
    """The tasks reached the SQLite store on the bind-mounted folder: a finished parent with a
    finished child per variant holding metrics and the model; every artifact file was written by the
    user the study's containers run as (the image's own when the study runs as root, as in CI)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(docker_study["uri"])
    runs = client.search_runs([client.get_experiment_by_name("vce-study").experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert sorted(c.data.tags.get("vce.variant") for c in children) == ["baseline_mmgsn", "pgmgvce_main"]
    for c in children:
        assert c.info.status == "FINISHED" and {"loss_g", "mae_body"} <= set(c.data.metrics)
        assert "model" in {a.path for a in client.list_artifacts(c.info.run_id)}
    artifacts = [p for p in (docker_study["work"] / "mlflow" / "artifacts").rglob("*") if p.is_file()]
    assert any(p.name == "checkpoint.pt" for p in artifacts)
    assert {p.stat().st_uid for p in artifacts} == {WRITER_UID}


@pytest.mark.slow
def test_a_task_that_fails_fast_in_a_container_fails_the_dag(docker_host, image, tmp_path):
    """A component that exits with status 3 at once, through kfp's DockerRunner on podman: the
    DAG fails (kfp alone may read a container auto-removed before its wait as exit 0,
    tests/test_podman_compat.py); afterwards no container of it is left."""
    import docker
    from kfp import dsl, local

    from vce.podman_compat import TASK_LABEL, docker_runner_compat

    @dsl.component(base_image=image, install_kfp_package=False)
    def fails_op():
        raise SystemExit(3)

    @dsl.pipeline(name="fails-fast")
    def fails():
        fails_op()

    root = tmp_path / "kfp"
    root.mkdir()
    os.chown(root, IMAGE_UID, IMAGE_UID)
    local.init(runner=local.DockerRunner(network_mode="host", user=f"{IMAGE_UID}:{IMAGE_UID}"), pipeline_root=str(root),
               raise_on_error=True)
    with docker_runner_compat(), pytest.raises(RuntimeError, match="fails-op"):
        fails()
    client = docker.from_env()
    try:
        assert client.containers.list(all=True, filters={"label": TASK_LABEL}) == []
    finally:
        client.close()
