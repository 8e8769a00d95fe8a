"""The whole study DAG through the real kfp local runner, at the tiny profile, with real MLflow."""

import shutil

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from conftest import ROOT
from vce.config import load_config


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
    files = {p.name for p in report.iterdir()}
    assert {"summary.md", "metrics.json", "report.html", "cases.png", "boxplots.png", "psd_ratio.png"} <= files


def test_metrics_json_and_the_oracle_ceiling(study, tiny_cfg):
    import json

    doc = json.loads((study["report"] / "metrics.json").read_text())
    assert set(doc["variants"]) == {v.name for v in tiny_cfg.variants}
    main = doc["variants"][tiny_cfg.study.main_variant]
    for k in ("mae_body", "ssim_body", "mae_tumour", "enh_ratio_wm", "enh_ratio_ring", "enh_ratio_relerr", "enh_dice",
              "mae_body_cal", "tmsvpmi_body", "grad_dir", "air_grad"):
        assert set(main[k]) == {"mean", "sd", "n", "ci_low", "ci_high"}, k
    ref = doc["reference"]
    assert ref["ground_truth"]["enh_ratio_ring"]["mean"] > 1.2  # the truth enhances
    assert {"auc_t1", "auc_t2", "auc_t1c"} <= set(ref["learnability"])
    # the model grid is the acquisition grid: the oracle's texture is the truth's (12-bit rounding only)
    for k in ("tmsvpmi", "tavpmi", "tfpmi", "vfpmi", "tmsvpmi_body"):
        assert ref["oracle"][k]["mean"] == pytest.approx(ref["ground_truth"][k]["mean"], rel=0.02), k
    assert ref["oracle"]["mae"]["mean"] < 1.0
    assert len(doc["verdicts"]) == 5 and all(v["status"] in ("reproduced", "not reproduced", "inconclusive")
                                             for v in doc["verdicts"])
    html = (study["report"] / "report.html").read_text()
    assert "Verdicts" in html and "data:image/png;base64," in html and "http://" not in html


def test_mlflow_parent_with_a_child_per_variant(study, tiny_cfg):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(study["uri"])
    exp = client.get_experiment_by_name("vce-study")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == len(tiny_cfg.variants)
    assert parent.info.status == "FINISHED"
    for c in children:
        assert c.info.status == "FINISHED"
        assert {"mae", "mae_body", "mae_body_cal", "enh_ratio_ring"} <= set(c.data.metrics) and "loss_g" in c.data.metrics
        assert not any(k.startswith("test_") for k in c.data.metrics)  # one name per number
        assert len(client.get_metric_history(c.info.run_id, "loss_g")) >= 2
        arts = {a.path for a in client.list_artifacts(c.info.run_id)}
        assert "model" in arts and "evaluation" in arts
    main = next(c for c in children if c.data.tags.get("vce.variant") == tiny_cfg.study.main_variant)
    assert parent.data.metrics["mae_body"] == pytest.approx(main.data.metrics["mae_body"], rel=1e-6)
    report = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/metrics.json", "report/report.html"} <= report


def test_every_run_records_the_data_and_split_it_used(study):
    """Lineage through the DAG: the study run tags the DVC md5 of the cohort it used (as
    ``dvc add data`` would record it) and of the split manifest, the ``split_id`` and the
    manifest as an input dataset; each variant's run inherits them."""
    import json

    from mlflow.tracking import MlflowClient

    from vce.lineage import dvc_dir_md5, dvc_file_md5

    (split_json,) = (study["work"] / "out" / "kfp").rglob("split/split.json")
    split_id = json.loads(split_json.read_text())["split_id"]
    manifest_md5 = dvc_file_md5(split_json.parent / "manifest.csv")
    client = MlflowClient(study["uri"])
    runs = client.search_runs([client.get_experiment_by_name("vce-study").experiment_id])
    assert len(runs) > 1
    for r in runs:
        tags = r.data.tags
        assert tags["vce.split_id"] == split_id and tags["vce.split.manifest_md5"] == manifest_md5, r.info.run_name
        assert tags["vce.data.md5"] == dvc_dir_md5(study["work"] / "data") and tags["vce.data.path"] == str(study["work"] / "data")
        assert tags.get("mlflow.source.git.commit"), r.info.run_name
        (ds,) = [d.dataset for d in r.inputs.dataset_inputs]
        assert ds.name == "vce-split" and ds.digest == manifest_md5


def test_predictions_on_t2_grid(study, tiny_cohort):
    preds = sorted((study["work"] / "out" / "kfp").rglob("pred/*.nii.gz"))
    n_variants = len(load_config(ROOT / "params.yaml", "tiny").variants)
    assert n_variants == 12  # the tiny study: 8 paper variants, 2 seed replicates, 2 beyond the paper
    assert len(preds) == n_variants + 2  # one test patient x (the variants + oracle + learnability)
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


def _best_by_the_evaluation_csvs(study, cfg) -> tuple[str, float]:
    """The variant with the best mean of ``study.champion_metric`` over the test patients of its
    evaluation's metrics_patients.csv (ties: first name), computed here from the files."""
    import json

    means = {}
    for f in (study["work"] / "out" / "kfp").rglob("metrics_patients.csv"):
        info = json.loads((f.parent / "variant.json").read_text())
        if info.get("name") in {v.name for v in cfg.variants} and "reference" not in info:
            col = pd.read_csv(f)[cfg.study.champion_metric]
            if col.notna().any():
                means[info["name"]] = float(col.mean())
    assert set(means) == {v.name for v in cfg.variants}
    sign = 1 if cfg.study.champion_goal == "min" else -1
    best = min(means, key=lambda n: (sign * means[n], n))
    return best, means[best]


def test_champion_is_the_best_evaluated_variant(study, tiny_cfg):
    """Every variant's generator is an MLflow model; after evaluation the one best on
    study.champion_metric (per the evaluation CSVs) is registered with @champion, tagged with why,
    and loads as a pyfunc (from code, weights_only checkpoint) honouring its signature."""
    import json

    import mlflow.pyfunc
    from mlflow.tracking import MlflowClient

    client = MlflowClient(study["uri"])
    mv = client.get_model_version_by_alias("vce-pgmgvce-tiny", "champion")
    run = client.get_run(mv.run_id)
    best, value = _best_by_the_evaluation_csvs(study, tiny_cfg)
    assert run.data.tags["vce.variant"] == best == mv.tags["vce.variant"]
    assert mv.tags["vce.champion_metric"] == tiny_cfg.study.champion_metric
    assert float(mv.tags["vce.champion_value"]) == pytest.approx(value, rel=1e-5)
    reason = mv.tags["vce.champion_reason"]
    assert reason.startswith(("lowest" if tiny_cfg.study.champion_goal == "min" else "highest")
                             + f" mean {tiny_cfg.study.champion_metric} over ") and "runner-up" in reason
    assert mv.source == run.data.tags["vce.model_uri"]
    versions = client.search_model_versions("name = 'vce-pgmgvce-tiny'")
    assert len(versions) == 1  # training registers nothing; compare registered the champion once
    parent = client.get_run(run.data.tags["mlflow.parentRunId"])
    assert parent.data.tags["vce.champion"] == best and parent.data.tags["vce.champion_reason"] == reason
    doc = json.loads((study["report"] / "champion.json").read_text())
    assert doc["variant"] == best and doc["reason"] == reason
    assert f"`{best}`: {reason}" in (study["report"] / "summary.md").read_text()
    children = client.search_runs([run.info.experiment_id], filter_string="tags.`vce.variant` != ''")
    assert len(children) == len(tiny_cfg.variants) and all("vce.model_uri" in c.data.tags for c in children)
    import mlflow

    mlflow.set_tracking_uri(study["uri"])
    model = mlflow.pyfunc.load_model("models:/vce-pgmgvce-tiny@champion")
    inputs = model.metadata.signature.inputs.to_dict()[0]
    s = tiny_cfg.split.image_size
    m = len(tiny_cfg.variant(best).modalities)  # a single-modality variant can be the champion
    assert list(inputs["tensor-spec"]["shape"]) == [-1, m, s, s]
    x = np.random.default_rng(0).uniform(0, 1, (3, m, s, s)).astype(np.float32)
    y = model.predict(x)
    assert y.shape == (3, 1, s, s) and np.isfinite(y).all()
    with pytest.raises(Exception):
        model.predict(np.concatenate([x, x], axis=1))  # wrong number of modalities violates the signature


def test_predict_from_registry_matches_checkpoint(study, tiny_cohort, tmp_path, monkeypatch, request):
    """`vce predict --model models:/<name>@champion` gives the same volume as the run's checkpoint,
    with --tracking-uri alone: not helped by a process-wide MLflow URI set elsewhere (an earlier
    test), and without leaving an empty mlflow.db in the working directory."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from vce.cli import main

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'elsewhere.db'}")
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    for reset in (mlflow.set_tracking_uri, mlflow.set_registry_uri):  # drop what an earlier test set: the env applies
        reset(None)
        request.addfinalizer(lambda reset=reset: reset(None))

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
    assert not (cwd / "mlflow.db").exists()


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
        assert len(runs) == 1 + len(load_config(ROOT / "params.yaml", "tiny").variants)  # the parent and a child per variant
    finally:
        import os
        import signal

        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
