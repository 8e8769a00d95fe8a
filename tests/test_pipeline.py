"""The committed compiled pipeline is what the code compiles to, and the DAG has the study's shape."""

import yaml

from conftest import ROOT


def test_compiled_pipeline_is_up_to_date(tmp_path):
    from pipelines.vce_study import COMPILED, compile_pipeline

    fresh = compile_pipeline(tmp_path / "vce_study.yaml")
    assert COMPILED.read_text() == fresh.read_text(), (
        "pipelines/vce_study.yaml is stale: run `make compile` (python -m pipelines.vce_study) and commit it"
    )


def _compiled() -> tuple[dict, dict]:
    """The compiled pipeline spec and its platform (Kubernetes) spec."""
    docs = list(yaml.safe_load_all((ROOT / "pipelines" / "vce_study.yaml").read_text()))
    return docs[0], (docs[1] if len(docs) > 1 else {})


def _study_dag(spec: dict) -> dict:
    """The tasks of the study: the DAG inside the exit handler (whose exit task closes the study)."""
    root = spec["root"]["dag"]["tasks"]
    (handler,) = [t for t in root.values() if t["componentRef"]["name"].startswith("comp-exit-handler")]
    return spec["components"][handler["componentRef"]["name"]]["dag"]["tasks"]


def test_dag_shape():
    spec, _ = _compiled()
    tasks = _study_dag(spec)
    assert {"fingerprint-op", "cohort-op", "register-op", "split-op", "normalize-op", "reference-op", "start-study-op", "compare-op"} <= set(tasks)
    loop = next(t for t in tasks.values() if "parameterIterator" in t)
    inner = spec["components"][loop["componentRef"]["name"]]["dag"]["tasks"]
    assert {"train-op", "evaluate-op"} <= set(inner)
    # the 8 study variants are the loop's items: the output of variants-op, read from params_yaml
    assert loop["parameterIterator"]["items"]["inputParameter"] == "pipelinechannel--variants-op-Output"
    assert loop["inputs"]["parameters"]["pipelinechannel--variants-op-Output"]["taskOutputParameter"] == {
        "outputParameterKey": "Output", "producerTask": "variants-op"}
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert "variants" not in params
    from components.training import variants_op

    variants = variants_op.python_func(params["params_yaml"]["defaultValue"], params["profile"]["defaultValue"])
    from vce.config import load_config_text

    cfg = load_config_text(params["params_yaml"]["defaultValue"], params["profile"]["defaultValue"])
    # the profile's study.variants: the paper's 8, seed replicates of main and baseline, the extras
    assert [__import__("json").loads(v)["name"] for v in variants] == [v.name for v in cfg.variants]
    assert cfg.study.main_variant in [v.name for v in cfg.variants] and any(not v.paper for v in cfg.variants)
    # training asks for a GPU on the cluster
    k8s = yaml.safe_dump(spec)
    assert "nvidia.com/gpu" in k8s


def test_cli_help_lists_every_step(capsys):
    import pytest

    from vce.cli import main

    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for step in ("synth", "register", "split", "normalize", "train", "evaluate", "compare", "predict", "run"):
        assert step in out


def test_tracking_tasks_get_the_pipelines_tracking_uri_and_mlflow_credentials():
    """Evaluation logs to the pipeline's tracking URI (not one named inside a checkpoint), and on
    the cluster every task that talks to MLflow reads its user from the ``mlflow-auth`` Secret."""
    from pipelines.vce_study import MLFLOW_SECRET

    spec, platform = _compiled()
    loop = next(t for t in _study_dag(spec).values() if "parameterIterator" in t)
    inner = spec["components"][loop["componentRef"]["name"]]["dag"]["tasks"]
    ev = inner["evaluate-op"]["inputs"]["parameters"]["tracking_uri"]
    assert ev == {"componentInputParameter": "pipelinechannel--tracking_uri"}
    assert loop["inputs"]["parameters"]["pipelinechannel--tracking_uri"] == {
        "componentInputParameter": "pipelinechannel--tracking_uri"}  # the exit handler's input, the pipeline's
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for name in ("start-study-op", "train-op", "evaluate-op", "compare-op", "close-study-op"):
        secret = next(s for s in executors[f"exec-{name}"]["secretAsEnv"] if s["secretName"] == MLFLOW_SECRET)
        assert secret["secretName"] == MLFLOW_SECRET and secret["optional"] is True, name
        assert {k["envVar"]: k["secretKey"] for k in secret["keyToEnv"]} == {
            "MLFLOW_TRACKING_USERNAME": "username", "MLFLOW_TRACKING_PASSWORD": "password"}, name
    assert "secretAsEnv" not in executors.get("exec-register-op", {})  # no credentials where no tracking


def test_every_component_dies_with_its_owner():
    """Each component body starts with vce.runtime.die_with_parent() (kill -9 of `vce run` takes it along)."""
    import inspect

    import components.data
    import components.evaluation
    import components.training

    comps = [obj for mod in (components.data, components.evaluation, components.training) for obj in vars(mod).values()
             if hasattr(obj, "python_func") and obj.python_func.__module__ == mod.__name__]
    assert len(comps) == 12
    for c in comps:
        body = inspect.getsource(c.python_func).split('"""')[2]
        first = [ln.strip() for ln in body.splitlines() if ln.strip()][:2]
        assert first == ["from vce.runtime import die_with_parent", "die_with_parent()  # a kill -9 of `vce run` takes this process with it"], c.name
