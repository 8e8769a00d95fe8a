"""``vce submit`` / ``vce schedule`` against a loopback stand-in of the KFP v2beta1 API
(tests/kfp_standin.py): no cluster can run here, so the stand-in records every request and the
tests check what reached it (token, pipeline spec, parameters, cron, concurrency, catch-up,
namespace, experiment) and that every refusal is one line with exit status 2, fast."""

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from kfp_standin import API, KFPStandIn

ROOT = Path(__file__).resolve().parents[1]
VCE = ROOT / ".venv" / "bin" / "vce"
PIPELINE = ROOT / "pipelines" / "vce_study.yaml"
PARAMS = ROOT / "params.yaml"


def _env(home: Path, **extra: str) -> dict[str, str]:
    """The environment without any KFP setting of the caller, a fresh HOME (kfp reads
    ~/.config/kfp/context.json) and ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KFP_", "KF_PIPELINES"))}
    env.update(HOME=str(home), PYTHONPYCACHEPREFIX=str(ROOT / ".venv" / "pycache"), **extra)
    return env


def _vce(home: Path, *args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
    exe = [str(VCE)] if VCE.exists() else [sys.executable, "-m", "vce.cli"]
    return subprocess.run([*exe, *args], capture_output=True, text=True, timeout=timeout, env=_env(home, **env),
                          cwd=home)


def _compiled() -> list[dict]:
    return [d for d in yaml.safe_load_all(PIPELINE.read_text()) if d is not None]


def _expected_params_yaml() -> str:
    """The pipeline's own encoding of the params file (its compiled default)."""
    from pipelines.vce_study import default_arguments

    return default_arguments(PARAMS)["params_yaml"]


def _one_line_error(r: subprocess.CompletedProcess, step: str) -> str:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith(f"vce {step}: error: ")]
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    return lines[0]


@pytest.fixture()
def home(tmp_path: Path) -> Path:
    d = tmp_path / "home"
    d.mkdir()
    return d


@pytest.fixture()
def kfp_home(home: Path, monkeypatch) -> Path:
    """For in-process calls: HOME and kfp's context file (a path kfp fixes at import) in ``home``."""
    from kfp.client.client import Client

    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setattr(Client, "_LOCAL_KFP_CONTEXT", str(home / ".config" / "kfp" / "context.json"))
    for var in ("KFP_HOST", "KFP_TOKEN", "KFP_NAMESPACE", "KFP_UI_HOST", "KF_PIPELINES_ENDPOINT", "KF_PIPELINES_UI_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    return home


# ---------------------------------------------------------------------------- happy paths (real entry point)


def test_submit_sends_the_compiled_spec_parameters_token_namespace_experiment(home: Path) -> None:
    with KFPStandIn(token="s3cret-token") as kfp:
        r = _vce(home, "submit", "--params", str(PARAMS), "--profile", "tiny", "--namespace", "team-a",
                 "--kfp-experiment", "vce-nightly", "--arg", "tracking_uri=http://mlflow.vce.svc:5000",
                 "--run-name", "tiny-check", KFP_HOST=kfp.url, KFP_TOKEN="s3cret-token")
        assert r.returncode == 0, r.stderr
        assert kfp.requests and all(q.headers.get("authorization") == "Bearer s3cret-token" for q in kfp.requests)
        assert all(q.status == 200 for q in kfp.requests), [(q.method, q.path, q.status) for q in kfp.requests]

        (exp_req,) = kfp.find("POST", f"{API}/experiments")
        assert exp_req.body["display_name"] == "vce-nightly" and exp_req.body["namespace"] == "team-a"
        listed = kfp.find("GET", f"{API}/experiments")
        assert listed and listed[0].query["namespace"] == "team-a"

        (run_req,) = kfp.find("POST", f"{API}/runs")
        body = run_req.body
        (exp,) = kfp.state.experiments.values()
        assert body["experiment_id"] == exp["experiment_id"] and body["display_name"] == "tiny-check"
        spec, platform = _compiled()
        assert body["pipeline_spec"]["pipeline_spec"] == spec  # the compiled package, unchanged
        assert body["pipeline_spec"]["platform_spec"] == platform  # its Kubernetes settings too
        assert body["runtime_config"]["parameters"] == {
            "params_yaml": _expected_params_yaml(), "profile": "tiny", "tracking_uri": "http://mlflow.vce.svc:5000"}

        (run_id,) = kfp.state.runs
    assert f"run id: {run_id}" in r.stdout
    assert f"UI: {kfp.url}/#/runs/details/{run_id}" in r.stdout


def test_schedule_uploads_the_package_and_creates_a_cron_run_one_at_a_time_no_catchup(home: Path) -> None:
    token_file = home / "kfp.token"
    token_file.write_text("file-token\n")
    with KFPStandIn(token="file-token") as kfp:
        r = _vce(home, "schedule", "--host", kfp.url, "--token-file", str(token_file), "--params", str(PARAMS),
                 "--cron", "0 30 2 * * *", "--name", "nightly", "--arg", "source_dir=/data/patients")
        assert r.returncode == 0, r.stderr
        assert all(q.headers.get("authorization") == "Bearer file-token" for q in kfp.requests)

        (upload,) = kfp.find("POST", f"{API}/pipelines/upload")
        assert upload.body["uploadfile"] == PIPELINE.read_bytes()  # the compiled YAML, byte for byte
        assert upload.query["name"] == _compiled()[0]["pipelineInfo"]["name"]

        (rr_req,) = kfp.find("POST", f"{API}/recurringruns")
        body = rr_req.body
        (pid,) = kfp.state.pipelines
        (version,) = kfp.state.versions[pid]
        assert body["pipeline_version_reference"] == {"pipeline_id": pid, "pipeline_version_id": version["pipeline_version_id"]}
        assert body["trigger"] == {"cron_schedule": {"cron": "0 30 2 * * *"}}
        assert str(body["max_concurrency"]) == "1"
        assert body["no_catchup"] is True
        assert body["mode"] == "ENABLE" and body["display_name"] == "nightly"
        default_profile = yaml.safe_load(PARAMS.read_text())["profile"]
        assert body["runtime_config"]["parameters"] == {
            "params_yaml": _expected_params_yaml(), "profile": default_profile, "source_dir": "/data/patients"}
        (rid,) = kfp.state.recurring_runs
    assert f"recurring run id: {rid}" in r.stdout
    assert f"UI: {kfp.url}/#/recurringrun/details/{rid}" in r.stdout
    assert f"pipeline version id: {version['pipeline_version_id']}" in r.stdout


# ---------------------------------------------------------------------------- refusals (real entry point)


def test_refused_token_is_one_line_exit_2(home: Path) -> None:
    with KFPStandIn(token="right") as kfp:
        r = _vce(home, "submit", "--host", kfp.url, "--params", str(PARAMS), KFP_TOKEN="wrong")
        line = _one_line_error(r, "submit")
        assert "HTTP 401" in line and "token was refused" in line and "KFP_TOKEN" in line
        assert kfp.requests and kfp.requests[0].headers["authorization"] == "Bearer wrong"
        assert not kfp.state.runs and not kfp.find("POST", f"{API}/runs")

        r = _vce(home, "schedule", "--host", kfp.url, "--params", str(PARAMS), "--cron", "0 0 0 * * *")
        line = _one_line_error(r, "schedule")
        assert "HTTP 401" in line and "needs a token" in line
        assert not kfp.state.recurring_runs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_endpoint_fails_fast(home: Path) -> None:
    port = _free_port()  # closed again: connection refused
    t0 = time.monotonic()
    r = _vce(home, "submit", "--host", f"http://127.0.0.1:{port}", "--params", str(PARAMS), timeout=30)
    line = _one_line_error(r, "submit")
    assert f"cannot reach KFP at http://127.0.0.1:{port}" in line and "refused" in line.lower()
    assert time.monotonic() - t0 < 15  # a loaded 2-core machine starts vce in seconds; kfp alone would retry ~25 s


def test_silent_endpoint_times_out_after_timeout(home: Path) -> None:
    """A host that accepts and never answers (a black-holed port-forward) fails after --timeout."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])
            except OSError:
                pass

    threading.Thread(target=accept, daemon=True).start()
    try:
        t0 = time.monotonic()
        r = _vce(home, "schedule", "--cron", "0 0 * * * *", "--host", f"http://127.0.0.1:{srv.getsockname()[1]}",
                 "--timeout", "1", "--params", str(PARAMS), timeout=30)
        elapsed = time.monotonic() - t0
    finally:
        stop.set()
        for c in held:
            c.close()
        srv.close()
    line = _one_line_error(r, "schedule")
    assert "cannot reach KFP" in line and "timed out" in line and "1 s" in line
    assert elapsed < 15  # without the timeout kfp's client would wait forever on this socket


def test_unknown_arg_names_it_and_sends_nothing(home: Path) -> None:
    with KFPStandIn() as kfp:
        r = _vce(home, "submit", "--host", kfp.url, "--params", str(PARAMS), "--arg", "tracking_uri=x",
                 "--arg", "gpu_count=2")
        line = _one_line_error(r, "submit")
        assert "gpu_count" in line and "no parameter" in line and "tracking_uri" in line  # names it and the known ones
        assert kfp.requests == []


def test_invalid_cron_and_no_host_refused_before_any_request(home: Path) -> None:
    with KFPStandIn() as kfp:
        r = _vce(home, "schedule", "--host", kfp.url, "--params", str(PARAMS), "--cron", "0 0 25 * * *")
        line = _one_line_error(r, "schedule")
        assert "invalid cron expression '0 0 25 * * *'" in line and "hour" in line
        assert kfp.requests == []
    r = _vce(home, "submit", "--params", str(PARAMS))
    line = _one_line_error(r, "submit")
    assert "no KFP endpoint" in line and "KFP_HOST" in line


# ---------------------------------------------------------------------------- library


def test_second_schedule_uploads_a_new_version_and_forbidden_run_is_one_error(kfp_home: Path) -> None:
    from vce import submit
    from vce.io.errors import VCEInputError

    args = submit.pipeline_arguments(PIPELINE, PARAMS, "tiny")
    with KFPStandIn() as kfp:
        ep = submit.resolve_endpoint(kfp.url, env={})
        first = submit.schedule_run(ep, PIPELINE, args, "0 0 2 * * *")
        second = submit.schedule_run(ep, PIPELINE, args, "0 0 3 * * 1-5")
        assert first.pipeline_id == second.pipeline_id and first.pipeline_version_id != second.pipeline_version_id
        (up,) = kfp.find("POST", f"{API}/pipelines/upload_version")
        assert up.query["pipelineid"] == first.pipeline_id and up.body["uploadfile"] == PIPELINE.read_bytes()
        assert [v["pipeline_version_id"] for v in kfp.state.versions[first.pipeline_id]] == [
            first.pipeline_version_id, second.pipeline_version_id]
        assert kfp.state.recurring_runs[second.id]["pipeline_version_reference"]["pipeline_version_id"] == second.pipeline_version_id
        assert "Authorization" not in json.dumps([q.headers for q in kfp.requests])  # no token: none sent

        uncached = submit.submit_run(ep, PIPELINE, args, cache=False)  # vce submit --no-cache
        sent = kfp.state.runs[uncached.id]["pipeline_spec"]["pipeline_spec"]
        compiled = _compiled()[0]
        assert _cached_tasks(compiled), "the compiled pipeline caches no task: this check proves nothing"
        assert _cached_tasks(sent) == []  # no task of any DAG (the steps sit inside the exit handler's)
        assert _tasks(sent) == _tasks(compiled)  # the same tasks otherwise

        kfp.fail[("POST", f"{API}/runs")] = (403, "user is not allowed to create runs in namespace team-b")
        t0 = time.monotonic()
        with pytest.raises(VCEInputError, match=r"HTTP 403: user is not allowed to create runs in namespace team-b"):
            submit.submit_run(ep, PIPELINE, args)
        assert time.monotonic() - t0 < 10  # no retry loop


def _tasks(spec: dict) -> dict[str, dict]:
    """Every task of every DAG of a pipeline spec, keyed 'dag/task', without its caching options."""
    dags = {"root": spec["root"].get("dag", {})} | {n: c.get("dag", {}) for n, c in spec.get("components", {}).items()}
    return {f"{d}/{t}": {k: v for k, v in task.items() if k != "cachingOptions"}
            for d, dag in dags.items() for t, task in dag.get("tasks", {}).items()}


def _cached_tasks(spec: dict) -> list[str]:
    dags = {"root": spec["root"].get("dag", {})} | {n: c.get("dag", {}) for n, c in spec.get("components", {}).items()}
    return [f"{d}/{t}" for d, dag in dags.items() for t, task in dag.get("tasks", {}).items()
            if task.get("cachingOptions", {}).get("enableCache")]


@pytest.mark.parametrize("expr", ["0 0 2 * * *", "0 */15 * * * *", "0 0 9 ? * 2-6", "0 0 0 1 JAN-MAR MON,FRI",
                                  "30 5 4 1-15/2 * *", "  0  0  2 * * *  "])
def test_valid_cron(expr: str) -> None:
    from vce.submit import validate_cron

    assert validate_cron(expr) == " ".join(expr.split())


@pytest.mark.parametrize("expr,why", [
    ("0 2 * * *", "use '0 0 2 * * *'"), ("", "expected 6 fields"), ("0 0 2 * * * *", "got 7"),
    ("60 0 2 * * *", "second"), ("0 0 2 32 * *", "day of month"), ("0 0 2 * 13 *", "month"),
    ("0 0 2 * * 7", "day of week"), ("0 ? 2 * * *", "'?' is only allowed"), ("0 */0 * * * *", "step 0"),
    ("0 0 5-2 * * *", "backwards"), ("0 0 2 * * FOO", "FOO"), ("@sometimes", "expected 6 fields"),
    ("@daily", "use the six-field form '0 0 0 * * *'"),
])
def test_invalid_cron(expr: str, why: str) -> None:
    from vce.submit import CronError, validate_cron

    with pytest.raises(CronError, match="invalid cron expression") as err:
        validate_cron(expr)
    assert why in str(err.value)


def test_args_typed_by_the_declared_parameter_and_token_sources(tmp_path: Path) -> None:
    from vce.io.errors import VCEInputError
    from vce.submit import parse_args, read_token, resolve_endpoint

    declared = {"n": "NUMBER_INTEGER", "x": "NUMBER_DOUBLE", "on": "BOOLEAN", "l": "LIST", "s": "STRING",
                "params_yaml": "STRING", "profile": "STRING"}
    assert parse_args(["n=3", "x=0.5", "on=True", "l=[1, 2]", "s=a=b"], declared) == {
        "n": 3, "x": 0.5, "on": True, "l": [1, 2], "s": "a=b"}
    for bad, msg in (("n=3.5", "NUMBER_INTEGER"), ("on=yes", "BOOLEAN"), ("l={}", "LIST"), ("novalue", "KEY=VALUE"),
                     ("profile=paper", "--params/--profile")):
        with pytest.raises(VCEInputError, match=msg):
            parse_args([bad], declared)

    empty = tmp_path / "empty.token"
    empty.write_text("\n")
    with pytest.raises(VCEInputError, match="empty"):
        read_token(str(empty))
    with pytest.raises(VCEInputError, match="cannot read the token file"):
        read_token(str(tmp_path / "absent.token"))
    assert read_token(None, {"KFP_TOKEN": " t0k "}) == "t0k"
    ep = resolve_endpoint(None, env={"KFP_HOST": "kfp.example.org/pipeline/", "KFP_NAMESPACE": "team-a"})
    assert (ep.host, ep.namespace, ep.token) == ("https://kfp.example.org/pipeline", "team-a", None)


def test_multi_user_endpoint_without_namespace_is_refused(kfp_home: Path) -> None:
    from vce import submit
    from vce.io.errors import VCEInputError

    args = submit.pipeline_arguments(PIPELINE, PARAMS, "tiny")
    with KFPStandIn(multi_user=True) as kfp:
        with pytest.raises(VCEInputError, match="multi-user: pass --namespace"):
            submit.submit_run(submit.resolve_endpoint(kfp.url, env={}), PIPELINE, args)
        assert [q.path for q in kfp.requests] == [f"{API}/healthz"]
        done = submit.submit_run(submit.resolve_endpoint(kfp.url, namespace="team-a", env={}), PIPELINE, args)
        assert kfp.state.runs[done.id]["experiment_id"] == done.experiment_id
        assert kfp.state.experiments[done.experiment_id]["namespace"] == "team-a"

        context = kfp_home / ".config" / "kfp" / "context.json"  # what `kfp` / set_user_namespace leave behind
        context.parent.mkdir(parents=True)
        context.write_text(json.dumps({"namespace": "team-c"}))
        done = submit.submit_run(submit.resolve_endpoint(kfp.url, env={}), PIPELINE, args)
        assert kfp.state.experiments[done.experiment_id]["namespace"] == "team-c"


def test_typed_parameters_of_a_compiled_pipeline_reach_the_run(kfp_home: Path, tmp_path: Path) -> None:
    """A pipeline with integer, struct and list parameters (compiled here by kfp's compiler): --arg
    values arrive typed as the package declares them."""
    from kfp import compiler, dsl

    from vce import submit

    @dsl.component(base_image="python:3.11")
    def echo(params_yaml: str, profile: str, gpus: int, selector: dict, tolerations: list) -> str:
        return profile

    @dsl.pipeline(name="typed-check")
    def typed(params_yaml: str = "{}", profile: str = "tiny", gpus: int = 1, selector: dict = {}, tolerations: list = []):
        echo(params_yaml=params_yaml, profile=profile, gpus=gpus, selector=selector, tolerations=tolerations)

    package = tmp_path / "typed.yaml"
    compiler.Compiler().compile(typed, package_path=str(package))
    args = submit.pipeline_arguments(package, PARAMS, "tiny", [
        "gpus=2", 'selector={"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}',
        'tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]'])
    with KFPStandIn() as kfp:
        done = submit.submit_run(submit.resolve_endpoint(kfp.url, env={}), package, args)
        sent = kfp.state.runs[done.id]["runtime_config"]["parameters"]
    assert sent["gpus"] == 2 and sent["selector"] == {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}
    assert sent["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert sent["profile"] == "tiny" and json.loads(sent["params_yaml"]) == yaml.safe_load(PARAMS.read_text())


def _doc_commands() -> list[list[str]]:
    """The ``vce submit`` / ``vce schedule`` commands of docs/submit.md's Example section."""
    import re
    import shlex

    text = (ROOT / "docs" / "submit.md").read_text()
    block = re.search(r"## Example\s+```bash\n(.*?)```", text, re.S).group(1).replace("\\\n", " ")
    return [shlex.split(line, comments=True) for line in block.splitlines() if line.startswith("vce ")]


def test_the_documented_example_runs_against_the_standin(kfp_home: Path, monkeypatch, capsys) -> None:
    from vce import cli

    commands = _doc_commands()
    assert [c[1] for c in commands] == ["submit", "schedule"]
    token = kfp_home / ".kfp-token"
    token.write_text("doc-token\n")
    with KFPStandIn(token="doc-token", multi_user=True) as kfp:
        monkeypatch.setenv("KFP_HOST", kfp.url)
        monkeypatch.setenv("KFP_NAMESPACE", "team-a")
        for argv in commands:
            argv = [str(token) if a == "~/.kfp-token" else a for a in argv[1:]]
            assert cli.main([*argv, "--params", str(PARAMS)]) == 0, capsys.readouterr().err
        (run,) = kfp.state.runs.values()
        (rr,) = kfp.state.recurring_runs.values()
    for job in (run, rr):
        assert job["runtime_config"]["parameters"]["profile"] == "paper"
        assert job["runtime_config"]["parameters"]["tracking_uri"] == "http://mlflow.vce.svc:5000"
    assert rr["trigger"]["cron_schedule"]["cron"] == "0 0 2 * * *" and rr["display_name"] == "vce-paper-nightly"
    assert {e["namespace"] for e in kfp.state.experiments.values()} == {"team-a"}


@pytest.mark.parametrize("status,headers,body,expected", [
    (302, {"Location": "https://dex.example.org/auth"}, b"", "redirected to a login page https://dex.example.org/auth"),
    (404, {}, b"404 page not found", "HTTP 404: not a KFP v2 API endpoint"),
    (200, {"Content-Type": "text/html"}, b"<html>Kubeflow Central Dashboard</html>", "did not answer JSON"),
    (503, {}, b'{"error": "upstream connect error", "code": 14}', "HTTP 503: upstream connect error"),
    (403, {}, b"RBAC: access denied", "HTTP 403: RBAC: access denied): it needs a token"),
])
def test_probe_names_what_answered(status: int, headers: dict, body: bytes, expected: str) -> None:
    """What an ingress, a login proxy or another service answers instead of the KFP API."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from vce.io.errors import VCEInputError
    from vce.submit import Endpoint, check_endpoint

    class Answer(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a: object) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        with pytest.raises(VCEInputError) as err:
            check_endpoint(Endpoint(host=f"http://127.0.0.1:{srv.server_address[1]}", timeout=5))
    finally:
        srv.shutdown()
        srv.server_close()
    assert expected in str(err.value) and "\n" not in str(err.value)
