"""Faults survived (issue 11): processes die with their owner, one study per --out, an unreachable
tracking server is one line in seconds, run status is closed after a failure and reconciled after
a kill -9, and the MLflow UI runs with authentication. Real processes, real MLflow stores/servers."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import ROOT

PY = sys.executable
VCE = str(Path(sys.executable).parent / "vce")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid: int) -> bool:
    """Alive and not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait_gone(pids: list[int], timeout: float = 10.0) -> list[int]:
    """The pids still alive after ``timeout`` seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if _alive(p)]


def _killpg(pgid: int) -> None:
    """Clean up what a test started (its own session); nothing left is fine."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _read_pids(path: Path, n: int, timeout: float = 30.0) -> list[int]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.is_file():
            lines = path.read_text().split()
            if len(lines) >= n:
                return [int(x) for x in lines[:n]]
        time.sleep(0.05)
    raise AssertionError(f"{path}: no {n} pids written")


# --------------------------------------------------------------------------- processes die with their owner
# The owner launches `sh -ec 'python3 worker'` from a thread, as kfp 2.17's SubprocessRunner does; the
# worker (the component) forks a child of its own (a process pool worker). A second worker does not call
# die_with_parent: it is what every component was before (it survives the owner).
OWNER = textwrap.dedent("""
    import subprocess, sys, threading, time
    from vce.runtime import owning
    def launch(code):
        subprocess.run(["sh", "-ec", 'printf x >/dev/null\\n' + sys.executable + ' -c "$0"\\n', code])
    with owning():
        for code in sys.argv[1:]:
            threading.Thread(target=launch, args=(code,)).start()
        time.sleep(600)
""")
WORKER = textwrap.dedent("""
    import os, sys, time
    {call}
    child = os.fork()
    if child == 0:
        time.sleep(600); os._exit(0)
    with open({pids!r}, "a") as f:
        f.write(f"{{os.getpid()}} {{child}}\\n")
    time.sleep(600)
""")


def test_components_die_with_their_owner_through_kfps_shell(tmp_path):
    """kill -9 of the owner (`vce run`): a worker that called die_with_parent() and its forked child are
    gone within seconds, though its parent is kfp's `sh` (which PR_SET_PDEATHSIG alone would not cover);
    a worker that did not call it survives (so the test can fail)."""
    good, bad = tmp_path / "good.pids", tmp_path / "bad.pids"
    codes = [WORKER.format(call="from vce.runtime import die_with_parent; die_with_parent()", pids=str(good)),
             WORKER.format(call="pass", pids=str(bad))]
    owner = subprocess.Popen([PY, "-c", OWNER, *codes], start_new_session=True)
    try:
        watched, survivor = _read_pids(good, 2), _read_pids(bad, 2)
        from vce.runtime import parent_pid

        sh = parent_pid(watched[0])
        assert sh != owner.pid and parent_pid(sh) == owner.pid  # the component's parent is the shell
        os.kill(owner.pid, signal.SIGKILL)
        owner.wait()
        t0 = time.time()
        assert _wait_gone(watched, 10) == []
        assert time.time() - t0 < 5
        assert all(_alive(p) for p in survivor)  # without die_with_parent: orphans keep running
    finally:
        _killpg(owner.pid)


def test_a_process_dies_with_its_parent_thread_pdeathsig(tmp_path):
    """PR_SET_PDEATHSIG: a direct child (a torchrun worker) is killed when its parent is."""
    pids = tmp_path / "pids"
    code = WORKER.format(call="from vce.runtime import die_with_parent; die_with_parent()", pids=str(pids))
    parent = subprocess.Popen([PY, "-c", f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {code!r}]); "
                                         "time.sleep(600)"], start_new_session=True)
    try:
        child = _read_pids(pids, 1)[0]
        from vce.runtime import parent_pid

        assert parent_pid(child) == parent.pid and "VCE_OWNER_PID" not in os.environ
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        assert _wait_gone(_read_pids(pids, 2), 10) == []
    finally:
        _killpg(parent.pid)


def test_a_component_whose_owner_is_gone_exits_at_once(tmp_path):
    """A component started after its owner died (or naming an owner that is not its ancestor) exits at once."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    env = {**os.environ, "VCE_OWNER_PID": str(dead.pid), "VCE_OWNER_START": ""}
    t0 = time.time()
    res = subprocess.run([PY, "-c", "from vce.runtime import die_with_parent; die_with_parent(); print('ran on')"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 137 and "ran on" not in res.stdout and time.time() - t0 < 30
    env["VCE_OWNER_PID"] = str(os.getpid())  # a live owner and an ancestor: runs
    res = subprocess.run([PY, "-c", "from vce.runtime import die_with_parent; die_with_parent(); print('ran on')"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "ran on" in res.stdout


def test_torchrun_workers_die_with_torchrun(tmp_path):
    """`vce train --nproc 2` runs its workers under torchrun: kill -9 of torchrun takes the training
    workers (vce.steps.train calls die_with_parent in each) with it."""
    from test_trainer import _params_file, _write_store

    norm = _write_store(tmp_path / "normalized")
    params = _params_file(tmp_path, iterations=100000, log_every=50, checkpoint_every=2)
    out = tmp_path / "run"
    cmd = [PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "vce.cli", "train",
           "--variant", "pgmgvce_main", "--normalized", str(norm), "--out", str(out), "--no-tracking",
           "--params", str(params), "--profile", "tiny", "--device", "cpu"]
    with open(tmp_path / "torchrun.log", "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not list((tmp_path / "run.partial").glob("*.pt")):
            assert proc.poll() is None, (tmp_path / "torchrun.log").read_text()[-3000:]
            time.sleep(0.2)
        from vce.runtime import descendants

        workers = [p for p in descendants(proc.pid) if "vce.cli train" in Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode()]
        assert len(workers) == 2, (tmp_path / "torchrun.log").read_text()[-3000:]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert _wait_gone(workers, 10) == []
    finally:
        _killpg(proc.pid)


# --------------------------------------------------------------------------- one study per --out
def test_a_second_run_on_the_same_out_is_refused(tmp_path, capsys):
    """Two `vce run` on one --out: the second exits 2 naming the directory and the holder's pid; the
    lock goes with the holder (no stale lock after its kill -9)."""
    from vce.cli import main
    from vce.runtime import exclusive_run

    out = tmp_path / "study"
    holder = subprocess.Popen([PY, "-c", f"import time; from vce.runtime import exclusive_run\n"
                                         f"with exclusive_run({str(out)!r}):\n    print('held', flush=True); time.sleep(600)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        rc = main(["run", "--profile", "tiny", "--data", str(tmp_path / "data"), "--out", str(out),
                   "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and "\n" not in err and "Traceback" not in err
        assert err == (f"vce run: error: {out}: another vce run (pid {holder.pid}) is using this output directory; "
                       "wait for it to finish or use another --out")
        assert not (tmp_path / "data").exists() and not (tmp_path / "mlflow.db").exists()  # refused before any work
    finally:
        holder.kill()
        holder.wait()
    with exclusive_run(out) as lock:  # free again once the holder is gone
        assert lock.read_text().strip() == str(os.getpid())


# --------------------------------------------------------------------------- unreachable tracking server
def test_unreachable_tracking_server_is_one_line_within_seconds(tmp_path, capsys, monkeypatch):
    """A closed loopback port: `vce run` and `vce train` exit 2 within seconds with one line naming the
    address, before any work; and MLflow's own retries are capped for whatever runs after."""
    from vce.cli import main
    from vce.io.errors import VCEEnvironmentError
    from vce.tracking import preflight

    for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.delenv(k, raising=False)
    uri = f"http://127.0.0.1:{_free_port()}"
    t0 = time.time()
    with pytest.raises(VCEEnvironmentError) as exc:
        preflight(uri)
    assert str(exc.value).startswith(f"MLflow tracking server {uri}: unreachable (") and time.time() - t0 < 30
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "2"
    for argv in (["run", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "out")],
                 ["train", "--variant", "pgmgvce_main", "--normalized", str(tmp_path / "norm"), "--out", str(tmp_path / "run")]):
        t0 = time.time()
        rc = main([*argv, "--profile", "tiny", "--tracking-uri", uri])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and time.time() - t0 < 30, argv
        assert err.startswith(f"vce {argv[0]}: error: MLflow tracking server {uri}: unreachable (") and "\n" not in err
    assert not (tmp_path / "data").exists() and not (tmp_path / "run").exists()
    # a server that goes away mid-run: MLflow's client gives up in seconds, not after 258 s of retries
    import mlflow  # noqa: F401 - imported before the clock starts: on a loaded machine the import alone takes seconds

    from vce import tracking

    t0 = time.time()
    with pytest.raises(Exception):
        tracking.get_or_create_experiment(uri, "x")
    assert time.time() - t0 < 30


# --------------------------------------------------------------------------- access: the MLflow UI with authentication
def test_mlflow_ui_with_auth_refuses_anonymous_requests(tmp_path):
    """`mlflow/ui.sh --auth` runs MLflow's basic-auth app: the REST API answers 401 without a user and
    200 with the generated admin password, which lives in a 0600 file (printed as a path, never as text)
    in a 0700 folder that ignores itself in git; preflight says which it is."""
    import base64
    import json
    import urllib.error
    import urllib.request

    from vce.io.errors import VCEEnvironmentError
    from vce.tracking import preflight

    port, db = _free_port(), tmp_path / "store" / "mlflow.db"
    log = tmp_path / "server.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(["bash", str(ROOT / "mlflow" / "ui.sh"), "--auth", str(port), str(db)],
                                stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                break
            except OSError:
                assert proc.poll() is None, log.read_text()[-3000:]
                time.sleep(0.5)
        auth = db.parent / "auth"
        password = (auth / "admin-password").read_text().strip()
        api = f"{url}/api/2.0/mlflow/experiments/search?max_results=5"
        with pytest.raises(urllib.error.HTTPError) as anon:
            urllib.request.urlopen(api, timeout=10)
        assert anon.value.code == 401
        for wrong in ("admin:not-the-password", "nobody:" + password):
            req = urllib.request.Request(api, headers={"Authorization": "Basic " + base64.b64encode(wrong.encode()).decode()})
            with pytest.raises(urllib.error.HTTPError) as bad:
                urllib.request.urlopen(req, timeout=10)
            assert bad.value.code == 401, wrong
        ok = urllib.request.Request(api, headers={"Authorization": "Basic " + base64.b64encode(f"admin:{password}".encode()).decode()})
        with urllib.request.urlopen(ok, timeout=10) as resp:
            assert resp.status == 200 and "experiments" in json.load(resp)
        assert (auth / "admin-password").stat().st_mode & 0o777 == 0o600 and auth.stat().st_mode & 0o777 == 0o700
        assert (auth / ".gitignore").read_text().splitlines()[-1] == "*"
        text = log.read_text()
        assert str(auth / "admin-password") in text and password not in text
        assert password not in (auth / "basic_auth.ini").read_text()
        env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
        try:
            os.environ.pop("MLFLOW_TRACKING_USERNAME", None)
            os.environ.pop("MLFLOW_TRACKING_PASSWORD", None)
            with pytest.raises(VCEEnvironmentError, match=rf"^MLflow tracking server {url}: access denied \(HTTP 401\)"):
                preflight(url)
            os.environ.update({"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": password})
            preflight(url)  # reachable, and these credentials are accepted
            from vce import tracking

            run = tracking.start_run(url, "authenticated", experiment="auth-check")
            run.log_metrics({"m": 1.0})
            run.finish()
        finally:
            for k, v in env.items():
                os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


# --------------------------------------------------------------------------- a whole `vce run`, killed and failed
# A tiny study of two variants with trainings long enough to be caught running (~4 min each here).
STUDY_VARIANTS = ["pgmgvce_main", "baseline_mmgsn"]


def _study_setup(tmp_path: Path, tiny_cohort: Path) -> dict:
    import shutil

    import yaml

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["profiles"]["tiny"]["study"]["variants"] = STUDY_VARIANTS
    raw["profiles"]["tiny"]["train"]["iterations"] = 60
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    shutil.copytree(tiny_cohort, tmp_path / "data")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    argv = [VCE, "run", "--params", str(params), "--profile", "tiny", "--data", str(tmp_path / "data"),
            "--out", str(tmp_path / "out"), "--tracking-uri", uri]
    return {"argv": argv, "uri": uri, "out": tmp_path / "out", "log": tmp_path / "run.log"}


def _start(study: dict, log: Path) -> subprocess.Popen:
    with open(log, "w") as f:
        return subprocess.Popen(study["argv"], stdout=f, stderr=subprocess.STDOUT, start_new_session=True)


def _runs(uri: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri, uri)
    exp = client.get_experiment_by_name("vce-study")
    return client.search_runs([exp.experiment_id]) if exp else []


def _running_variants(uri: str) -> set[str]:
    """The variants whose MLflow run is RUNNING, read from the SQLite store read-only: an MLflow
    client opened while `vce run` creates the store would run the schema migrations a second time
    at once (CI: "table _alembic_tmp_latest_metrics already exists" in the study's step)."""
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(f"file:{uri[len('sqlite:///'):]}?mode=ro", uri=True, timeout=1)) as db:
            rows = db.execute("SELECT t.value FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
                              "WHERE t.key = 'vce.variant' AND r.status = 'RUNNING'").fetchall()
    except sqlite3.OperationalError:  # no file or no tables yet
        return set()
    return {v for (v,) in rows}


def _wait_for_training(study: dict, proc: subprocess.Popen, timeout: float = 900) -> list[int]:
    """Block until a variant's MLflow run is RUNNING and its train-op process is alive; the pids of
    those trainings (a training whose run is not created yet is not one of them: killing it would
    leave no run to check)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, study["log"].read_text()[-3000:]
        variants = _running_variants(study["uri"])
        if variants:
            trainers = [p for p in _session(proc.pid)  # the component's python, not kfp's sh around it
                        if "train-op" in _cmdline(p) and "-m kfp.dsl.executor_main" in _cmdline(p)
                        and not _cmdline(p).startswith("sh ") and _trained_variant(p) in variants]
            if trainers:
                return trainers
        time.sleep(0.5)
    raise AssertionError("no training seen running")


def _trained_variant(pid: int) -> str | None:
    """The variant a train-op process trains: its ``variant`` parameter in kfp's ``--executor_input``
    (the params text there names every variant, so a substring would not do)."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        executor_input = json.loads(args[args.index("--executor_input") + 1])
        return json.loads(executor_input["inputs"]["parameterValues"]["variant"])["name"]
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _session(sid: int) -> list[int]:
    """Live processes of session ``sid`` (the run was started as a session leader)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != sid:
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == sid and fields[0] != "Z":
                out.append(int(d.name))
    return out


def _of_the_run(sid: int, out: Path) -> list[int]:
    """Processes left by the run: in its session, or naming its --out on their command line."""
    mine = {os.getpid(), *[int(p) for p in _ancestor_pids()]}
    named = [int(d.name) for d in Path("/proc").iterdir()
             if d.name.isdigit() and int(d.name) not in mine and str(out) in _cmdline(int(d.name)) and _alive(int(d.name))]
    return sorted(set(_session(sid)) | set(named))


def _ancestor_pids() -> list[int]:
    from vce.runtime import ancestors

    return ancestors()


@pytest.mark.slow
def test_kill_9_of_vce_run_leaves_no_process_and_the_rerun_reconciles(tmp_path, tiny_cohort):
    """kill -9 of `vce run` while its trainings run: within seconds no process of the run is left (the
    trainings used to finish and register models), its MLflow runs are still RUNNING (nobody could close
    them); the rerun on the same --out marks them KILLED (with an end time), completes, and leaves no
    run RUNNING."""
    study = _study_setup(tmp_path, tiny_cohort)
    first = _start(study, tmp_path / "first.log")
    study["log"] = tmp_path / "first.log"
    try:
        trainers = _wait_for_training(study, first)
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        t0 = time.time()
        at_kill = {r.info.run_id: r.info.status for r in _runs(study["uri"])}
        while time.time() - t0 < 10 and _of_the_run(first.pid, study["out"]):
            time.sleep(0.1)
        left = _of_the_run(first.pid, study["out"])
        assert left == [], [(p, _cmdline(p)[:200]) for p in left]
        assert all(not _alive(p) for p in trainers) and time.time() - t0 < 10
    finally:
        for p in _of_the_run(first.pid, study["out"]):
            os.kill(p, signal.SIGKILL)
    assert {r.info.run_id: r.info.status for r in _runs(study["uri"])} == at_kill  # no orphan went on writing
    killed = {k for k, v in at_kill.items() if v == "RUNNING"}
    assert len(killed) >= 2  # the study's parent and at least one training, left RUNNING by the kill

    study["log"] = tmp_path / "second.log"
    second = _start(study, study["log"])
    rc = second.wait(timeout=1800)
    log = study["log"].read_text()
    assert rc == 0, log[-3000:]
    assert f"marked {len(killed)} MLflow run(s) in experiment 'vce-study' KILLED" in log
    runs = {r.info.run_id: r for r in _runs(study["uri"])}
    assert [r.info.run_name for r in runs.values() if r.info.status == "RUNNING"] == []
    assert all(runs[k].info.status == "KILLED" and runs[k].info.end_time for k in killed)
    finished = [r for r in runs.values() if r.info.status == "FINISHED"]
    assert sorted(r.data.tags.get("vce.variant", "study") for r in finished) == sorted([*STUDY_VARIANTS, "study"])
    assert (study["out"] / "report" / "champion.json").is_file()


@pytest.mark.slow
def test_a_failed_step_leaves_the_study_failed_not_running(tmp_path, tiny_cohort):
    """A training dies (kill -9 of its process: the OOM killer's way) while `vce run` lives on: the
    DAG fails, `vce run` exits non-zero, and the study's parent run and the dead training's run are
    FAILED, not RUNNING forever; the other variant's run finished."""
    study = _study_setup(tmp_path, tiny_cohort)
    proc = _start(study, study["log"])
    try:
        trainer = _wait_for_training(study, proc)[0]
        killed_variant = _trained_variant(trainer)
        os.kill(trainer, signal.SIGKILL)
        rc = proc.wait(timeout=1800)
    finally:
        for p in _of_the_run(proc.pid, study["out"]):
            os.kill(p, signal.SIGKILL)
    log = study["log"].read_text()
    assert rc != 0, log[-3000:]
    runs = _runs(study["uri"])
    status = {r.data.tags.get("vce.variant", "study"): r.info.status for r in runs}
    assert status["study"] == "FAILED" and "RUNNING" not in status.values(), status
    assert sorted(status.values()) == ["FAILED", "FAILED", "FINISHED"], status
    assert status[killed_variant] == "FAILED", (killed_variant, status)
    assert "marked 2 MLflow run(s) of this study FAILED" in log
    # one line naming the failed step ends the log, not kfp's RuntimeError traceback
    assert "vce run: error: the study failed in step" in log.strip().splitlines()[-1], log[-2000:]
    assert "RuntimeError" not in log.split("vce run: error:")[-1]
    assert not (study["out"] / "report").exists()
