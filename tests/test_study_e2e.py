"""The whole study DAG through the real kfp local runner, at the tiny profile, with real MLflow."""

import shutil

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from conftest import ROOT


@pytest.fixture(scope="module")
def study(tmp_path_factory, tiny_cfg, tiny_cohort):
    from vce.study import run_study

    work = tmp_path_factory.mktemp("study")
    uri = f"sqlite:///{work / 'mlflow.db'}"
    data = work / "data"
    shutil.copytree(tiny_cohort, data)
    report = run_study(tiny_cfg, data=data, out=work / "out", tracking_uri=uri, params_path=ROOT / "params.yaml")
    return {"work": work, "uri": uri, "report": report}


def test_report_tables(study):
    report = study["report"]
    for name in ("table1_accuracy", "table2_texture", "ablation_ratio", "ablation_normalization", "ablation_modality"):
        assert (report / f"{name}.csv").is_file() and (report / f"{name}.md").is_file(), name
    t1 = pd.read_csv(report / "table1_accuracy.csv")
    assert len(t1) == 3
    assert "summary.md" in {p.name for p in report.iterdir()}


def test_mlflow_parent_with_eight_children(study):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(study["uri"])
    exp = client.get_experiment_by_name("vce-study")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 8
    assert parent.info.status == "FINISHED"
    for c in children:
        assert c.info.status == "FINISHED"
        assert "test_mae" in c.data.metrics and "loss_g" in c.data.metrics
        assert len(client.get_metric_history(c.info.run_id, "loss_g")) >= 2
        arts = {a.path for a in client.list_artifacts(c.info.run_id)}
        assert "model" in arts and "evaluation" in arts
    assert any(k.endswith(".mae") for k in parent.data.metrics)
    assert "report" in {a.path for a in client.list_artifacts(parent.info.run_id)}


def test_predictions_on_t2_grid(study, tiny_cohort):
    preds = sorted((study["work"] / "out" / "kfp").rglob("pred/*.nii.gz"))
    assert len(preds) == 8  # one test patient x 8 variants at the tiny profile
    pid = preds[0].name.split(".")[0]
    pred, t2 = sitk.ReadImage(str(preds[0])), sitk.ReadImage(str(tiny_cohort / pid / "T2.nii.gz"))
    assert pred.GetSize() == t2.GetSize()
    np.testing.assert_allclose(pred.GetOrigin(), t2.GetOrigin(), atol=1e-4)
    a = sitk.GetArrayFromImage(pred)
    assert a.min() >= 0 and a.max() <= 4095


def test_predict_new_patient(study, tiny_cohort, tmp_path):
    from vce.cli import main

    model = next((study["work"] / "out" / "kfp").rglob("model/checkpoint.pt")).parent
    pid = sorted(p.name for p in tiny_cohort.iterdir() if p.is_dir())[0]
    out = tmp_path / "synthetic_T1C.nii.gz"
    rc = main(["predict", "--t1", str(tiny_cohort / pid / "T1.nii.gz"), "--t2", str(tiny_cohort / pid / "T2.nii.gz"),
               "--model", str(model), "--out", str(out), "--profile", "tiny"])
    assert rc == 0
    img = sitk.ReadImage(str(out))
    t2 = sitk.ReadImage(str(tiny_cohort / pid / "T2.nii.gz"))
    assert img.GetSize() == t2.GetSize()
    assert "SYNTHETIC" in img.GetMetaData("descrip")
    rc = main(["predict", "--t1", str(tmp_path / "missing.nii.gz"), "--t2", str(tiny_cohort / pid / "T2.nii.gz"),
               "--model", str(model), "--out", str(tmp_path / "x.nii.gz"), "--profile", "tiny"])
    assert rc == 2 and not (tmp_path / "x.nii.gz").exists()


def test_main_variant_registered_as_champion(study):
    """Every variant's generator is an MLflow model; the main one is registered with @champion and
    loads as a pyfunc (from code, weights_only checkpoint) honouring its signature."""
    import mlflow.pyfunc
    from mlflow.tracking import MlflowClient

    client = MlflowClient(study["uri"])
    mv = client.get_model_version_by_alias("vce-pgmgvce-tiny", "champion")
    run = client.get_run(mv.run_id)
    assert run.data.tags["vce.variant"] == "pgmgvce_main"
    children = client.search_runs([run.info.experiment_id], filter_string="tags.`vce.variant` != ''")
    assert len(children) == 8 and all("vce.model_uri" in c.data.tags for c in children)
    import mlflow

    mlflow.set_tracking_uri(study["uri"])
    model = mlflow.pyfunc.load_model("models:/vce-pgmgvce-tiny@champion")
    inputs = model.metadata.signature.inputs.to_dict()[0]
    assert list(inputs["tensor-spec"]["shape"]) == [-1, 2, 32, 32]
    x = np.random.default_rng(0).uniform(0, 1, (3, 2, 32, 32)).astype(np.float32)
    y = model.predict(x)
    assert y.shape == (3, 1, 32, 32) and np.isfinite(y).all()
    with pytest.raises(Exception):
        model.predict(x[:, :1])  # wrong number of modalities violates the signature


def test_predict_from_registry_matches_checkpoint(study, tiny_cohort, tmp_path):
    """`vce predict --model models:/<name>@champion` gives the same volume as the run's checkpoint."""
    from mlflow.tracking import MlflowClient

    from vce.cli import main

    client = MlflowClient(study["uri"])
    mv = client.get_model_version_by_alias("vce-pgmgvce-tiny", "champion")
    ckpts = [p for p in (study["work"] / "out" / "kfp").rglob("model/checkpoint.pt")]
    import torch

    main_ckpt = next(p for p in ckpts
                     if torch.load(p, weights_only=True)["metadata"]["mlflow_run_id"] == mv.run_id)
    pid = sorted(p.name for p in tiny_cohort.iterdir() if p.is_dir())[0]
    args = ["--t1", str(tiny_cohort / pid / "T1.nii.gz"), "--t2", str(tiny_cohort / pid / "T2.nii.gz"), "--profile", "tiny"]
    a, b = tmp_path / "ckpt.nii.gz", tmp_path / "registry.nii.gz"
    assert main(["predict", *args, "--model", str(main_ckpt), "--out", str(a)]) == 0
    assert main(["predict", *args, "--model", "models:/vce-pgmgvce-tiny@champion", "--tracking-uri", study["uri"],
                 "--out", str(b)]) == 0
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(a))), sitk.GetArrayFromImage(sitk.ReadImage(str(b))))
    rc = main(["predict", *args, "--model", "models:/no-such-model@champion", "--tracking-uri", study["uri"],
               "--out", str(tmp_path / "c.nii.gz")])
    assert rc == 2 and not (tmp_path / "c.nii.gz").exists()


def test_mlflow_ui_serves_the_study(study):
    """mlflow/ui.sh starts a real MLflow server on the study's store; its REST API lists the runs."""
    import json as _json
    import socket
    import subprocess
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    db = study["uri"][len("sqlite:///"):]
    proc = subprocess.Popen(["bash", str(ROOT / "mlflow" / "ui.sh"), str(port), db],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        body = _json.dumps({"experiment_ids": ["1"], "max_results": 50}).encode()
        deadline, runs = time.time() + 90, None
        while time.time() < deadline:
            try:
                req = urllib.request.Request(f"http://127.0.0.1:{port}/api/2.0/mlflow/runs/search", data=body,
                                             headers={"Content-Type": "application/json"})
                runs = _json.load(urllib.request.urlopen(req, timeout=5))["runs"]
                break
            except OSError:
                time.sleep(1)
        assert runs is not None, "MLflow server did not come up"
        assert len(runs) == 9  # the study's parent and its 8 children
    finally:
        import os
        import signal

        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
