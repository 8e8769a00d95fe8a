"""The study's wiring: the main variant comes from ``study.main_variant``, the kfp loop items from
the params text, and the kfp code is an installed package (no sys.path edits)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from vce.config import load_config, load_config_text


def _with_main(cfg, name: str):
    return dataclasses.replace(cfg, study=dataclasses.replace(cfg.study, main_variant=name))


def test_compare_passes_main_variant(tiny_cfg, tmp_path, monkeypatch):
    from vce import steps
    from vce.reporting import study

    seen = {}
    monkeypatch.setattr(study, "build_report", lambda dirs, variants, out, cfg, reference=None, champion=None:
                        seen.update(main=cfg.study.main_variant, dirs=dirs, champion=champion)
                        or study.Report({}, {"variants": {}}))
    for v in tiny_cfg.variants[:3]:
        (tmp_path / v.name).mkdir()
        (tmp_path / v.name / "variant.json").write_text(v.to_json())
    cfg = _with_main(tiny_cfg, "ratio_1to10")
    steps.compare([tmp_path / v.name for v in tiny_cfg.variants[:3]], tmp_path / "report", cfg)
    assert seen["main"] == "ratio_1to10"  # not the first variant of params.yaml
    assert list(seen["dirs"]) == [v.name for v in tiny_cfg.variants[:3]]
    # no metrics_patients.csv in these directories: no champion, said so (vce.champion)
    assert seen["champion"]["variant"] is None and set(seen["champion"]["skipped"]) == set(seen["dirs"])


@pytest.mark.parametrize("name", ["ratio_10to1", "pgmgvce_main"])
def test_training_registers_no_variant(tiny_cfg, tmp_path, monkeypatch, name):
    """Training logs every variant's model to its run; the registry's champion is chosen after evaluation."""
    from vce import steps, tracking

    calls = {}

    def fake_log(tracker, checkpoint, image_size, n_modalities):
        calls["n_modalities"] = n_modalities
        return {"model_uri": "runs:/x/model"}

    class Tracker:
        def set_tags(self, tags):
            calls["tags"] = tags

    monkeypatch.setattr(tracking, "log_generator_model", fake_log)
    cfg = _with_main(tiny_cfg, "ratio_10to1")
    steps._log_model(Tracker(), tmp_path, cfg, cfg.variant(name))
    assert calls["tags"] == {"vce.model_uri": "runs:/x/model"} and calls["n_modalities"] == 2
    import inspect

    assert "registered_name" not in inspect.signature(tracking.log_generator_model).parameters


def test_loop_items_come_from_the_params_text():
    from components.training import variants_op
    from pipelines.vce_study import default_arguments

    d = default_arguments(ROOT / "params.yaml")
    assert set(d) == {"params_yaml", "profile"}  # no second list of variants to disagree with the text
    items = variants_op.python_func(d["params_yaml"], "tiny")
    cfg = load_config_text(d["params_yaml"], "tiny")
    assert items == [v.to_json() for v in cfg.variants]
    text = (ROOT / "params.yaml").read_text()
    head, tiny = text.split("  tiny:\n")
    tiny = tiny.replace(" t1_only, t2_only,", "", 1)  # tiny's study.variants without them
    assert tiny != text.split("  tiny:\n")[1]
    fewer = head + "  tiny:\n" + tiny
    names = [json.loads(i)["name"] for i in variants_op.python_func(fewer, "tiny")]
    assert names == [v.name for v in cfg.variants if v.name not in ("t1_only", "t2_only")]


def test_kfp_code_imports_without_the_repo_root_on_sys_path(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = "import json, sys, pipelines.vce_study, components.training; print(json.dumps(sys.path))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert ROOT.resolve() not in {Path(p).resolve() for p in json.loads(proc.stdout) if p}
    study = (ROOT / "src" / "vce" / "study.py").read_text()
    assert "sys.path" not in study


def test_evaluation_tracks_only_to_the_users_store(tiny_cfg, tiny_registered, tiny_split, tiny_normalized, tmp_path,
                                                    monkeypatch, caplog):
    """A checkpoint does not decide where patient data goes: one trained with store B (and, as older
    checkpoints did, naming B in its metadata) evaluated with store A configured (MLFLOW_TRACKING_URI)
    sends nothing to B and creates nothing in A (its run is not there: a warning says so); with B
    configured, the evaluation lands in the checkpoint's run."""
    import logging

    import torch
    from mlflow.tracking import MlflowClient

    from vce import steps

    a, b = f"sqlite:///{tmp_path / 'a' / 'mlflow.db'}", f"sqlite:///{tmp_path / 'b' / 'mlflow.db'}"
    run_dir = steps.train(tiny_normalized, tmp_path / "run", tiny_cfg, "pgmgvce_main", tracking_uri=b)
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    run_id = ckpt["metadata"]["mlflow_run_id"]
    assert run_id and "tracking_uri" not in ckpt["metadata"]  # the checkpoint names its run, not a store
    ckpt["metadata"]["tracking_uri"] = b  # what a checkpoint of an older version (or a crafted one) carries
    torch.save(ckpt, run_dir / "checkpoint.pt")
    client_b = MlflowClient(b, b)

    def seen_in_b() -> tuple[set, set]:
        run = client_b.get_run(run_id)
        return set(run.data.metrics), {f.path for f in client_b.list_artifacts(run_id)}

    before = seen_in_b()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", a)
    with caplog.at_level(logging.WARNING, logger="vce.steps"):
        steps.evaluate(run_dir, tiny_registered, tiny_split, tiny_normalized, tmp_path / "eval_a", tiny_cfg)
    assert (tmp_path / "eval_a" / "metrics_patients.csv").is_file()
    assert seen_in_b() == before and "evaluation" not in before[1]  # nothing reached B
    assert not (tmp_path / "a").exists()  # nor was a store made in A for a run it does not hold
    assert any(run_id in r.getMessage() and a in r.getMessage() and "not tracked" in r.getMessage() for r in caplog.records)

    steps.evaluate(run_dir, tiny_registered, tiny_split, tiny_normalized, tmp_path / "eval_b", tiny_cfg, tracking_uri=b)
    metrics, artifacts = seen_in_b()
    assert "mae_body" in metrics - before[0] and "evaluation" in artifacts  # configured: it lands in the run


def test_pipeline_arguments_survive_dvcs_rewrite_of_params(tmp_path):
    """``dvc exp run -S`` rewrites params.yaml with YAML 1.2 scalars (``amp: off``, ``4e-3``
    unquoted); the pipeline's baked defaults and ``vce submit``'s argument read it as load_config
    does, so the run gets ``amp == "off"``, not ``False``, and the same config as the original."""
    from pipelines.vce_study import default_arguments
    from vce.submit import params_yaml_argument

    text = (ROOT / "params.yaml").read_text()
    rewritten = text.replace('amp: "off"', "amp: off").replace("pg_eps: 4.0e-3", "pg_eps: 4e-3")
    assert rewritten.count("amp: off") == text.count('amp: "off"') > 0 and "pg_eps: 4e-3" in rewritten
    (tmp_path / "params.yaml").write_text(rewritten)
    for arg in (default_arguments(tmp_path / "params.yaml")["params_yaml"], params_yaml_argument(rewritten)):
        assert json.loads(arg)["profiles"]["tiny"]["train"]["amp"] == "off"
        for profile in ("tiny", "demo"):
            assert load_config_text(arg, profile) == load_config(ROOT / "params.yaml", profile)
