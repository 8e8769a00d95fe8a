"""The committed compiled pipeline is what the code compiles to, and the DAG has the study's shape."""

import yaml

from conftest import ROOT


def test_compiled_pipeline_is_up_to_date(tmp_path):
    from pipelines.vce_study import COMPILED, compile_pipeline

    fresh = compile_pipeline(tmp_path / "vce_study.yaml")
    assert COMPILED.read_text() == fresh.read_text(), (
        "pipelines/vce_study.yaml is stale: run `make compile` (python -m pipelines.vce_study) and commit it"
    )


def test_dag_shape():
    spec = yaml.safe_load((ROOT / "pipelines" / "vce_study.yaml").read_text())
    tasks = spec["root"]["dag"]["tasks"]
    assert {"cohort-op", "register-op", "split-op", "normalize-op", "reference-op", "start-study-op", "compare-op"} <= set(tasks)
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
