"""docs/cluster.md: every command of its ``bash`` blocks is one the tests run, render or validate.

Each line is matched to a checker below; a command no checker knows fails the test, so the page
cannot grow a command nobody checks. What a checker does is said in its docstring (run for real
here, rendered, or validated against what the rest of the repository names).
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from conftest import ROOT

import test_k8s
from kfp_standin import KFPStandIn

DOC = ROOT / "docs" / "cluster.md"


def doc_commands() -> list[list[str]]:
    """The shell commands of the page's ``bash`` blocks (comments dropped), as argv lists."""
    blocks = re.findall(r"```bash\n(.*?)```", DOC.read_text(), re.S)
    lines = [ln for b in blocks for ln in b.replace("\\\n", " ").splitlines()]
    return [shlex.split(ln, comments=True) for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


# --------------------------------------------------------------------------- checkers, one per command form


def _podman(argv: list[str], state: dict, tmp: Path) -> None:
    """``podman build``: every ``--build-arg`` is an ARG of the Containerfile, the tag is the image
    the components name (the slow tests/test_image.py builds it for real here); ``podman push``:
    the image just built."""
    from components import DEFAULT_IMAGE

    if argv[1] == "build":
        args = set(re.findall(r"^ARG (\w+)", (ROOT / "Containerfile").read_text(), re.M))
        given = [a.split("=", 1)[0] for i, a in enumerate(argv) if argv[i - 1] == "--build-arg"]
        assert given and set(given) <= args, (given, args)
        tag = argv[argv.index("-t") + 1]
        assert tag == DEFAULT_IMAGE and argv[-1] == "."
        state["built"] = tag
    else:
        assert argv[1] == "push" and argv[2] == state.get("built") == DEFAULT_IMAGE, argv


def _make(argv: list[str], state: dict, tmp: Path) -> None:
    """``make T``: a Makefile target (``image`` and ``image-test`` run in CI's slow job)."""
    assert re.search(rf"^{re.escape(argv[1])}:", (ROOT / "Makefile").read_text(), re.M), argv


def _compile_with_image(argv: list[str], state: dict, tmp: Path) -> None:
    """``VCE_IMAGE=X python -m pipelines.vce_study``: compiled for real (into tmp, not over the
    committed file), every executor runs image X."""
    env_var, image = argv[0].split("=", 1)
    assert env_var == "VCE_IMAGE" and argv[1:] == ["python", "-m", "pipelines.vce_study"]
    out = tmp / "compiled.yaml"
    code = f"from pathlib import Path; from pipelines.vce_study import compile_pipeline; compile_pipeline(Path({str(out)!r}))"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**_env(), "VCE_IMAGE": image})
    assert r.returncode == 0, r.stderr[-2000:]
    spec = next(yaml.safe_load_all(out.read_text()))
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert images == {image}, images


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != "VCE_IMAGE"}


def _secret_refs(docs: list[dict]) -> dict[str, set[str]]:
    """Secret name -> keys referenced by secretKeyRef in rendered manifests."""
    refs: dict[str, set[str]] = {}
    for m in re.finditer(r"secretKeyRef:\s*\n\s*key: (\S+)\s*\n\s*name: (\S+)", yaml.safe_dump(docs)):
        refs.setdefault(m.group(2), set()).add(m.group(1))
    return refs


def _pipeline_secret_refs() -> dict[str, set[str]]:
    """Secret name -> keys the compiled pipeline's tasks read as env vars."""
    docs = list(yaml.safe_load_all((ROOT / "pipelines" / "vce_study.yaml").read_text()))
    refs: dict[str, set[str]] = {}
    for m in re.finditer(r"secretName: (\S+)", yaml.safe_dump(docs[1])):
        refs.setdefault(m.group(1), set())
    from pipelines.vce_study import MLFLOW_SECRET, MLFLOW_SECRET_ENV

    refs[MLFLOW_SECRET] = set(MLFLOW_SECRET_ENV)
    return refs


def _kubectl(argv: list[str], state: dict, tmp: Path) -> None:
    """Rendered or validated: namespaces, Secrets and their keys, stacks, labels, port-forwards are
    what the manifests (``kubectl kustomize``, validated strictly in tests/test_k8s.py) and the
    compiled pipeline name."""
    ns = argv[argv.index("-n") + 1] if "-n" in argv else None
    verb = [a for a in argv[1:] if a != "-n" and a != ns]
    docs = test_k8s.rendered("overlays/gpu-cluster")
    if verb[:2] == ["create", "namespace"]:
        assert test_k8s.one(docs, "Namespace", verb[2])
    elif verb[:3] == ["create", "secret", "generic"]:
        name, keys = verb[3], {a.split("=", 2)[1] for a in verb if a.startswith("--from-literal=")}
        if ns == test_k8s.NS:
            assert keys == test_k8s.SECRETS[name] and _secret_refs(docs)[name] <= keys, (name, keys)
        else:
            pvc = [d for d in docs if d["kind"] == "PersistentVolumeClaim" and d["metadata"]["name"] == "vce-data"]
            assert pvc and pvc[0]["metadata"]["namespace"] == ns, "the secret goes to the pipeline namespace"
            assert _pipeline_secret_refs()[name] <= keys, (name, keys)
    elif verb[:2] == ["apply", "-k"]:
        rel = verb[2].removeprefix("k8s/")
        assert rel in test_k8s.KUSTOMIZATIONS and test_k8s.rendered(rel)
    elif verb[:3] == ["label", "namespace", "kubeflow"]:
        key, value = verb[3].split("=")
        assert {key: value} == test_k8s.PIPELINE_NS_LABEL
        pol = test_k8s.one(docs, "NetworkPolicy", "mlflow-from-pipelines")
        assert pol["spec"]["ingress"][0]["from"] == [{"namespaceSelector": {"matchLabels": {key: value}}}]
    elif verb[0] == "port-forward":
        svc, ports = verb[1].removeprefix("svc/"), verb[2].split(":")
        assert test_k8s._service_port(docs, svc) == int(ports[1]) and ns == test_k8s.NS
    else:
        pytest.fail(f"no checker for: {shlex.join(argv)}")


def _dvc(argv: list[str], state: dict, tmp: Path) -> None:
    """``dvc remote add/modify``: run for real in a fresh git+DVC repository, read back with
    ``dvc remote list`` / ``dvc config``; ``dvc push`` to S3 runs for real against a loopback S3
    in tests/test_dvc_remote.py."""
    repo = tmp / "dvcrepo"
    dvc = str(Path(sys.executable).with_name("dvc"))
    if not repo.exists():
        repo.mkdir()
        subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
        subprocess.run([dvc, "init", "-q"], cwd=repo, check=True)
    if argv[1] == "push":
        text = (ROOT / "tests" / "test_dvc_remote.py").read_text()
        assert "s3://" in text and '"push"' in text and "moto" in text
        return
    r = subprocess.run([dvc, *argv[1:]], cwd=repo, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    listed = subprocess.run([dvc, "remote", "list"], cwd=repo, capture_output=True, text=True).stdout
    if argv[1:3] == ["remote", "add"]:
        name, url = argv[-2], argv[-1]
        assert f"{name}\t{url}" in listed.replace("  ", "\t") or re.search(rf"{name}\s+{re.escape(url)}", listed)
        core = subprocess.run([dvc, "config", "core.remote"], cwd=repo, capture_output=True, text=True).stdout
        assert core.strip() == name
    else:
        name, opt, value = argv[3:6]
        got = subprocess.run([dvc, "config", f"remote.{name}.{opt}"], cwd=repo, capture_output=True, text=True)
        assert got.stdout.strip() == value


def _vce(argv: list[str], state: dict, tmp: Path) -> None:
    """``vce submit`` / ``vce schedule``: run for real against the loopback KFP API stand-in (the
    documented host replaced by the stand-in's); the run carries the documented arguments."""
    from kfp.client.client import Client

    from vce import cli

    args = argv[1:]
    ns = args[args.index("--namespace") + 1]
    with KFPStandIn(token="t0ken", multi_user=True) as kfp:
        args[args.index("--host") + 1] = kfp.url
        (tmp / "home").mkdir(exist_ok=True)
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("HOME", str(tmp / "home"))
            mp.setenv("KFP_TOKEN", "t0ken")
            mp.setattr(Client, "_LOCAL_KFP_CONTEXT", str(tmp / "home" / "context.json"))
            assert cli.main([*args, "--params", str(ROOT / "params.yaml")]) == 0
        jobs = list(kfp.state.runs.values()) + list(kfp.state.recurring_runs.values())
        (job,) = jobs
        assert {e["namespace"] for e in kfp.state.experiments.values()} == {ns}
    params = job["runtime_config"]["parameters"]
    for kv in (args[i + 1] for i, a in enumerate(args) if a == "--arg"):
        key, value = kv.split("=", 1)
        assert str(params[key]) == value, (key, params.get(key))
    assert params["profile"] == args[args.index("--profile") + 1]
    if argv[1] == "schedule":
        assert job["trigger"]["cron_schedule"]["cron"] == args[args.index("--cron") + 1]
        assert str(job["max_concurrency"]) == "1" and job["no_catchup"] is True


CHECKERS: dict[str, Callable[[list[str], dict, Path], None]] = {
    "podman": _podman, "make": _make, "kubectl": _kubectl, "dvc": _dvc, "vce": _vce,
}


def test_every_command_of_the_cluster_page_is_checked(tmp_path):
    commands = doc_commands()
    assert len(commands) >= 15, commands
    state: dict = {}
    for argv in commands:
        if "=" in argv[0] and argv[0].split("=")[0].isupper():
            _compile_with_image(argv, state, tmp_path)
            continue
        checker = CHECKERS.get(argv[0])
        assert checker is not None, f"docs/cluster.md: no test checks {shlex.join(argv)!r}"
        checker(argv, state, tmp_path)
    seen = {a[0] if "=" not in a[0] else "VCE_IMAGE" for a in commands}
    assert seen == {"podman", "make", "VCE_IMAGE", "kubectl", "dvc", "vce"}, seen
