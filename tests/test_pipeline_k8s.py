"""The compiled pipeline's Kubernetes settings (a cluster run), checked on ``pipelines/vce_study.yaml``:
GPUs and their placement only on training, the data PVC on the tasks that read patients, secrets
as env references only, retries and deadlines, the cohort cache keyed on the data's digest, the
exit handler; plus the pieces behind them that run here (the exit handler's library function on a
real MLflow store, the exit handler through kfp's local runner, the train component under torchrun).

No cluster runs here: the Kubernetes side is what kfp compiled (the KFP backend's input). No
``from __future__ import annotations``: kfp reads the test component's annotations as types."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from conftest import ROOT

import pipelines.vce_study as vs

SPEC, PLATFORM = list(yaml.safe_load_all(vs.COMPILED.read_text()))
K8S = PLATFORM["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
EXECUTORS = SPEC["deploymentSpec"]["executors"]
ROOT_PARAMS = SPEC["root"]["inputDefinitions"]["parameters"]
TRACKING = ("start-study-op", "train-op", "evaluate-op", "compare-op", "close-study-op")
PATIENT_READERS = ("fingerprint-op", "cohort-op")


def _tasks() -> dict[str, tuple[dict, list[dict]]]:
    """Every leaf task: ``{name: (task spec, [enclosing DAG task specs, outermost first])}``."""
    out: dict[str, tuple[dict, list[dict]]] = {}

    def walk(dag: dict, parents: list[dict]) -> None:
        for name, t in dag["tasks"].items():
            comp = SPEC["components"][t["componentRef"]["name"]]
            if "dag" in comp:
                walk(comp["dag"], [*parents, t])
            else:
                out[name] = (t, parents)

    walk(SPEC["root"]["dag"], [])
    return out


TASKS = _tasks()


def _executor(task: str) -> str:
    return SPEC["components"][TASKS[task][0]["componentRef"]["name"]]["executorLabel"]


def _pipeline_param(task: str, channel: str) -> str:
    """The pipeline parameter that ``channel`` (an input of ``task``'s enclosing DAG) comes from,
    followed through every enclosing DAG (exit handler, loop)."""
    for parent in reversed(TASKS[task][1]):
        channel = parent["inputs"]["parameters"][channel]["componentInputParameter"]
    assert channel in ROOT_PARAMS, channel
    return channel


def _name(task: str) -> str:
    return TASKS[task][0]["taskInfo"]["name"]


# ------------------------------------------------------------------------------------------------ compile


def test_committed_yaml_is_a_fresh_compile(tmp_path):
    assert not os.environ.get("VCE_IMAGE"), "VCE_IMAGE is set: the committed pipeline is compiled with the default image"
    fresh = vs.compile_pipeline(tmp_path / "fresh.yaml")
    assert fresh.read_text() == vs.COMPILED.read_text(), "stale: run `python -m pipelines.vce_study` and commit"


def test_the_image_is_one_setting_for_every_component(tmp_path):
    """``VCE_IMAGE`` at compile time reaches every component; the committed file has the default."""
    from components import DEFAULT_IMAGE

    assert {e["container"]["image"] for e in EXECUTORS.values()} == {DEFAULT_IMAGE}
    image = "registry.example.org/team/vce:9.9.9-cuda"
    out = tmp_path / "other.yaml"
    code = f"from pipelines.vce_study import compile_pipeline; from pathlib import Path; compile_pipeline(Path({str(out)!r}))"
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, "VCE_IMAGE": image}, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    other = next(yaml.safe_load_all(out.read_text()))["deploymentSpec"]["executors"]
    assert set(other) == set(EXECUTORS) and {e["container"]["image"] for e in other.values()} == {image}


def test_cluster_defaults():
    """A cluster run tracks to the in-cluster MLflow service (``vce run`` passes its own URI) and
    synthesises unless ``source_dir`` names a cohort on the data volume."""
    assert ROOT_PARAMS["tracking_uri"]["defaultValue"] == vs.CLUSTER_TRACKING_URI == "http://mlflow.vce.svc:5000"
    assert ROOT_PARAMS["source_dir"]["defaultValue"] == ""
    assert ROOT_PARAMS["data_pvc"]["defaultValue"] == vs.DATA_PVC
    assert ROOT_PARAMS["gpus_per_training"]["defaultValue"] == 1


# ------------------------------------------------------------------------------------------------ GPUs


def test_gpus_and_their_placement_only_on_training():
    gpu_tasks = {t for t in TASKS if "accelerator" in EXECUTORS[_executor(t)]["container"].get("resources", {})}
    assert gpu_tasks == {"train-op"}
    acc = EXECUTORS[_executor("train-op")]["container"]["resources"]["accelerator"]
    assert acc["resourceType"] == vs.GPU_RESOURCE == "nvidia.com/gpu"
    count = re.fullmatch(r"\{\{\$\.inputs\.parameters\['(.+)'\]\}\}", acc["resourceCount"])[1]
    assert _pipeline_param("train-op", count) == "gpus_per_training"
    # the same parameter tells the component how many processes torchrun starts
    gpus = TASKS["train-op"][0]["inputs"]["parameters"]["gpus"]["componentInputParameter"]
    assert _pipeline_param("train-op", gpus) == "gpus_per_training"
    placed = {t for t in TASKS if {"nodeSelector", "tolerations"} & set(K8S.get(_executor(t), {}))}
    assert placed == {"train-op"}  # CPU steps neither select GPU nodes nor tolerate their taint
    k = K8S[_executor("train-op")]
    assert k["emptyDirMounts"] == [{"medium": "Memory", "mountPath": "/dev/shm", "sizeLimit": vs.SHM_SIZE,
                                    "volumeName": "dshm"}]  # torchrun's shared memory
    sel = k["nodeSelector"]["nodeSelectorJson"]["componentInputParameter"]
    (tol,) = k["tolerations"]
    assert _pipeline_param("train-op", sel) == "gpu_node_selector"
    assert _pipeline_param("train-op", tol["tolerationJson"]["componentInputParameter"]) == "gpu_tolerations"
    assert ROOT_PARAMS["gpu_node_selector"]["defaultValue"] == vs.GPU_NODE_SELECTOR
    assert ROOT_PARAMS["gpu_tolerations"]["defaultValue"] == vs.GPU_TOLERATIONS
    assert all(t["operator"] in ("Exists", "Equal") and t["effect"] == "NoSchedule" for t in vs.GPU_TOLERATIONS)


# ------------------------------------------------------------------------------------------------ data


def test_the_data_volume_is_mounted_by_the_tasks_that_read_patients():
    mounted = {t for t in TASKS if "pvcMount" in K8S.get(_executor(t), {})}
    assert mounted == set(PATIENT_READERS)
    for t in PATIENT_READERS:
        (m,) = K8S[_executor(t)]["pvcMount"]
        assert m["mountPath"] == vs.DATA_MOUNT
        assert _pipeline_param(t, m["pvcNameParameter"]["componentInputParameter"]) == "data_pvc"
        assert _pipeline_param(t, TASKS[t][0]["inputs"]["parameters"]["source_dir"]["componentInputParameter"]) == "source_dir"


def test_the_cohort_cache_is_keyed_on_the_datas_digest():
    cohort, _ = TASKS["cohort-op"]
    assert cohort["inputs"]["parameters"]["data_digest"] == {
        "taskOutputParameter": {"outputParameterKey": "Output", "producerTask": "fingerprint-op"}}
    assert cohort["cachingOptions"].get("enableCache") is True  # cached: on path *and* digest
    assert not TASKS["fingerprint-op"][0]["cachingOptions"].get("enableCache")  # always rehashes
    assert "cohort_digest" in EXECUTORS[_executor("fingerprint-op")]["container"]["command"][-1]


# ------------------------------------------------------------------------------------------------ secrets


def test_credentials_come_from_secrets_on_every_tracking_task():
    want = {vs.MLFLOW_SECRET: vs.MLFLOW_SECRET_ENV, vs.OBJECT_STORE_SECRET: vs.OBJECT_STORE_SECRET_ENV}
    assert set(vs.OBJECT_STORE_SECRET_ENV.values()) >= {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_S3_ENDPOINT_URL"}
    for t in TRACKING:
        got = {s["secretName"]: {k["secretKey"]: k["envVar"] for k in s["keyToEnv"]} for s in K8S[_executor(t)]["secretAsEnv"]}
        assert got == want, t
    for t in set(TASKS) - set(TRACKING):
        assert "secretAsEnv" not in K8S.get(_executor(t), {}), t  # no credentials where nothing is tracked


def test_no_literal_secret_values_in_the_yaml():
    """Credential variables appear only as Secret references (``keyToEnv``); no container sets an
    env value, and no URL or params default carries a password."""
    names = set(vs.MLFLOW_SECRET_ENV.values()) | set(vs.OBJECT_STORE_SECRET_ENV.values()) | {"MLFLOW_TRACKING_TOKEN"}
    seen: list[str] = []

    def walk(node, path: tuple) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, (*path, k))
        elif isinstance(node, list):
            for v in node:
                walk(v, path)
        elif isinstance(node, str):
            for n in names:
                if n in node:
                    assert path[-2:] == ("keyToEnv", "envVar"), (path, node[:200])
                    seen.append(n)

    for doc in (SPEC, PLATFORM):
        walk(doc, ())
    assert set(seen) == names - {"MLFLOW_TRACKING_TOKEN"}
    assert all("env" not in e["container"] for e in EXECUTORS.values())
    text = vs.COMPILED.read_text()
    assert not re.search(r"://[^/\s:@'\"]+:[^/\s@'\"]+@", text), "a URL with a password"
    raw = json.loads(ROOT_PARAMS["params_yaml"]["defaultValue"])
    assert not re.search(r"password|secret_key|access_key", json.dumps(raw), re.I)


# ------------------------------------------------------------------------------------------------ retries, timeouts


def test_every_task_has_a_deadline_and_transient_steps_are_retried():
    for t in TASKS:
        assert int(K8S[_executor(t)]["activeDeadlineSeconds"]) == vs.TIMEOUTS_S[_name(t)], t
        retry = TASKS[t][0].get("retryPolicy")
        if _name(t) in vs.RETRIED:
            assert retry == {"maxRetryCount": 2, "backoffDuration": "30s", "backoffFactor": 2.0,
                             "backoffMaxDuration": "600s"}, t
        else:
            assert retry is None, t
    assert {_name(t) for t in TRACKING if t != "train-op"} <= set(vs.RETRIED)  # every MLflow step but training retries ...
    science = {"register", "slice-and-split", "normalize", "reference-rows", "train"}
    assert not science & set(vs.RETRIED)  # ... the deterministic science steps do not
    assert vs.TIMEOUTS_S["train"] >= 24 * 3600 and max(v for k, v in vs.TIMEOUTS_S.items() if k != "train") <= 6 * 3600


def test_every_task_runs_as_the_images_non_root_user():
    """Each task's container: the image's UID/GID (the Containerfile's ``VCE_UID``), runAsNonRoot
    (the KFP backend adds no privilege escalation, no capabilities, seccomp RuntimeDefault)."""
    from components import IMAGE_UID

    uid = re.search(r"^ARG VCE_UID=(\d+)$", (ROOT / "Containerfile").read_text(), re.M)
    assert uid and int(uid.group(1)) == IMAGE_UID
    assert len(TASKS) >= 10
    for t in TASKS:
        sc = K8S[_executor(t)]["securityContext"]
        assert sc == {"runAsUser": str(IMAGE_UID), "runAsGroup": str(IMAGE_UID), "runAsNonRoot": True}, t


# ------------------------------------------------------------------------------------------------ exit handler


def test_the_exit_handler_closes_the_study_with_the_final_status():
    root = SPEC["root"]["dag"]["tasks"]
    assert set(root) == {"exit-handler-1", "close-study-op"}
    close = root["close-study-op"]
    assert close["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    assert close["dependentTasks"] == ["exit-handler-1"]
    params = close["inputs"]["parameters"]
    assert params["status"] == {"taskFinalStatus": {"producerTask": "exit-handler-1"}}
    assert params["tracking_uri"] == {"componentInputParameter": "tracking_uri"}
    job = {"runtimeValue": {"constant": "{{$.pipeline_job_uuid}}"}}
    assert params["pipeline_job_id"] == job == TASKS["start-study-op"][0]["inputs"]["parameters"]["pipeline_job_id"]
    inside = {t for t, (_, parents) in TASKS.items() if parents and parents[0]["componentRef"]["name"] == "comp-exit-handler-1"}
    assert inside == set(TASKS) - {"close-study-op"}  # every step of the study is covered
    assert "close_study(" in EXECUTORS[_executor("close-study-op")]["container"]["command"][-1]


# ------------------------------------------------------------------------------------------------ what runs here


@pytest.mark.slow
def test_close_study_on_a_real_store(tmp_path):
    """The exit handler's library function on a real MLflow (SQLite) store: the failed job's parent
    and the child a killed pod left RUNNING become FAILED; a finished child, another job's study
    and an already closed parent keep their status (slow: a new MLflow store, ~20-60 s here)."""
    from mlflow.tracking import MlflowClient

    from vce import tracking
    from vce.study_status import ERROR_TAG, STATE_TAG, close_study, mlflow_status, tag_pipeline_job

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parent = tracking.start_run(uri, "study-tiny", tags={"vce.role": "study"})
    tag_pipeline_job(uri, parent.run_id, "job-1")
    done = tracking.start_run(uri, "pgmgvce_main", parent_run_id=parent.run_id)
    done.finish()
    dead = tracking.start_run(uri, "baseline_mmgsn", parent_run_id=parent.run_id)
    other = tracking.start_run(uri, "study-tiny", tags={"vce.role": "study"})
    tag_pipeline_job(uri, other.run_id, "job-2")
    client = MlflowClient(uri, uri)

    def status(tr) -> str:
        return client.get_run(tr.run_id).info.status

    assert close_study(uri, "job-1", "FAILED", error="Task exit-handler-1 failed.") == 2
    assert (status(parent), status(dead), status(done), status(other)) == ("FAILED", "FAILED", "FINISHED", "RUNNING")
    tags = client.get_run(parent.run_id).data.tags
    assert tags[STATE_TAG] == "FAILED" and tags[ERROR_TAG] == "Task exit-handler-1 failed."
    other.finish()  # compare closed it: a succeeded pipeline leaves it as it is
    assert close_study(uri, "job-2", "SUCCEEDED") == 0 and status(other) == "FINISHED"
    assert client.get_run(other.run_id).data.tags[STATE_TAG] == "SUCCEEDED"
    assert close_study(uri, "no-such-job", "FAILED") == 0 and close_study("", "job-1", "FAILED") == 0
    assert [mlflow_status(s) for s in ("SUCCEEDED", "FAILED", "CANCELED", "weird")] == ["FINISHED", "FAILED", "KILLED", "FAILED"]


@pytest.mark.slow
def test_the_exit_handler_through_kfps_local_runner(tmp_path):
    """kfp's local runner runs the exit task after a failed body with the final status FAILED; the
    study's parent run ends FAILED (the succeeded case: every ``vce run``, e.g. test_study_e2e).
    Slow: 3 components importing vce and a new MLflow store (1-5 min on a loaded 2-core machine)."""
    from kfp import dsl, local
    from mlflow.tracking import MlflowClient

    from components.training import close_study_op, start_study_op

    @dsl.component(base_image="unused", install_kfp_package=False)
    def step_op(study: dsl.Input[dsl.Artifact], fail: bool):
        if fail:
            raise RuntimeError("a step of the study fails")

    @dsl.component(base_image="unused", install_kfp_package=False)
    def data_op(cohort: dsl.Output[dsl.Dataset], split: dsl.Output[dsl.Dataset]):
        import os

        os.makedirs(cohort.path)  # no patients, no manifest: lineage is left out with a warning
        os.makedirs(split.path)

    @dsl.pipeline(name="exit-handler-check")
    def mini(tracking_uri: str, params_yaml: str, fail: bool):
        close = close_study_op(tracking_uri=tracking_uri, experiment="vce-study", pipeline_job_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
        with dsl.ExitHandler(close):
            d = data_op()
            s = start_study_op(tracking_uri=tracking_uri, experiment="vce-study", params_yaml=params_yaml, profile="tiny",
                               pipeline_job_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                               cohort=d.outputs["cohort"], split=d.outputs["split"])
            step_op(study=s.outputs["study"], fail=fail)

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp"), raise_on_error=False)
    params = (ROOT / "params.yaml").read_text()
    mini(tracking_uri=uri, params_yaml=params, fail=True)
    client = MlflowClient(uri, uri)
    (run,) = client.search_runs([client.get_experiment_by_name("vce-study").experiment_id])
    assert (run.info.status, run.data.tags.get("vce.pipeline_state")) == ("FAILED", "FAILED")
    assert run.info.end_time and run.data.tags["vce.kfp.job_id"]  # found by the job id both tasks were given


@pytest.mark.slow
def test_train_component_runs_torchrun_with_one_process_per_gpu(tmp_path):
    """``gpus=2``: the train component trains under ``torchrun --nproc_per_node 2`` (here on the
    CPU with gloo, as tests/test_ddp.py), one checkpoint, both ranks' weights identical."""
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from test_trainer import _params_file, _write_store

    from components.training import train_op
    from vce.config import load_config_text
    from vce.training.distributed import state_hash

    norm = _write_store(tmp_path / "normalized")
    params = _params_file(tmp_path, iterations=4, log_every=2, val_patients=1, val_every=2).read_text()
    study = tmp_path / "study.json"
    study.write_text(json.dumps({"run_id": ""}))
    model = SimpleNamespace(path=str(tmp_path / "model"), metadata={})
    variant = load_config_text(params, "tiny").variant("pgmgvce_main").to_json()
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    train_op.python_func(normalized=SimpleNamespace(path=str(norm)), variant=variant, params_yaml=params, profile="tiny",
                         tracking_uri=uri, experiment="other", study=SimpleNamespace(path=str(study)), model=model, gpus=2)
    summary = json.loads((tmp_path / "model" / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and model.metadata["gpus"] == 2
    h0, h1 = summary["generator_sha256_per_rank"]
    assert h0 == h1 == state_hash(torch.load(tmp_path / "model" / "checkpoint.pt", weights_only=True)["generator"])
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("model")) == ["model"]  # no temp leftovers
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    assert client.get_experiment_by_name("vce-study") is None  # the experiment it was given, not the default
    (run,) = client.search_runs([client.get_experiment_by_name("other").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["vce.variant"] == "pgmgvce_main"
    assert client.get_metric_history(run.info.run_id, "loss_g")  # rank 0 logged the training
