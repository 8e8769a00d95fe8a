"""MLflow for real on the cluster's backends, here on loopback: the tiny study (`vce run`) tracks to a
real `mlflow server` whose backend store is a real PostgreSQL and whose artifacts go, through the
server (`--serve-artifacts`), to a real S3 endpoint (moto's server). Checked where each thing lands:
runs and metrics in PostgreSQL (through MLflow and by SQL on its tables), artifacts as objects in the
bucket, the champion as a registered model version that loads and predicts.

One study run (about 4-6 min on 2 cores with the services' start-up); the times are printed
(``pytest -s``) and kept in the ``stack`` fixture."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT
from services import BIN, mlflow_server, postgres, s3_server

# the study alone is minutes on 2 idle cores and far more when they are shared: generous limits
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]
log = logging.getLogger(__name__)
BUCKET, PREFIX = "vce-mlflow", "mlflow"
CLIENT_ONLY_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "MLFLOW_S3_ENDPOINT_URL",
                   "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """PostgreSQL, S3 and an MLflow server on both; ``times`` collects what each step took."""
    work = tmp_path_factory.mktemp("backends")
    t0 = time.monotonic()
    with postgres() as pg, s3_server(BUCKET, work) as s3, \
            mlflow_server(pg.uri, f"s3://{BUCKET}/{PREFIX}", s3.env, work / "server") as srv:
        times = {"services_start_s": round(time.monotonic() - t0, 1), "mlflow_start_s": round(srv.startup_s, 1)}
        yield {"work": work, "pg": pg, "s3": s3, "srv": srv, "times": times}
    print(f"\nMLflow PostgreSQL+S3 stack times: {times}")


@pytest.fixture(scope="module")
def study(stack, tiny_cohort, tiny_cfg):
    """`vce run --profile tiny` against the server, from a process that has no S3 settings or
    credentials at all: every artifact must travel through the MLflow server."""
    work, uri = stack["work"], stack["srv"].uri
    data = work / "data"
    shutil.copytree(tiny_cohort, data)
    env = {k: v for k, v in os.environ.items() if k not in CLIENT_ONLY_ENV}
    cmd = [str(BIN / "vce"), "run", "--profile", "tiny", "--data", str(data), "--out", str(work / "out"),
           "--tracking-uri", uri, "--params", str(ROOT / "params.yaml")]
    t0 = time.monotonic()
    with open(work / "vce-run.log", "wb") as fh:
        rc = subprocess.run(cmd, cwd=work, env=env, stdout=fh, stderr=subprocess.STDOUT, timeout=2100).returncode
    stack["times"]["study_s"] = round(time.monotonic() - t0, 1)
    log.info("vce run --profile tiny against %s: rc %d in %.0f s", uri, rc, stack["times"]["study_s"])
    assert rc == 0, (work / "vce-run.log").read_text(errors="replace")[-4000:]
    assert not (work / "mlflow.db").exists()  # nothing fell back to a local store
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri, uri)
    exp = client.get_experiment_by_name("vce-study")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    return {"client": client, "exp": exp, "runs": runs, "parent": parent, "children": children, "uri": uri}


def test_runs_and_metrics_through_mlflow(study, tiny_cfg):
    exp, parent, children = study["exp"], study["parent"], study["children"]
    assert exp.artifact_location.startswith("mlflow-artifacts:/")  # proxied: clients never see the bucket
    assert len(study["runs"]) == 1 + len(tiny_cfg.variants) == 1 + len(children)
    assert parent.info.status == "FINISHED" and {c.info.status for c in children} == {"FINISHED"}
    assert {c.data.tags["vce.variant"] for c in children} == {v.name for v in tiny_cfg.variants}
    for c in children:
        assert {"mae_body", "loss_g"} <= set(c.data.metrics)
        assert len(study["client"].get_metric_history(c.info.run_id, "loss_g")) >= 2
    assert "mae_body" in parent.data.metrics


def test_runs_and_metrics_rows_in_postgresql(study, stack):
    """The same runs, read by SQL from MLflow's tables in the PostgreSQL database."""
    ids = {r.info.run_id for r in study["runs"]}
    children = {c.info.run_id for c in study["children"]}
    with stack["pg"].connect() as conn:
        rows = conn.execute("SELECT r.run_uuid, r.status, e.name FROM runs r JOIN experiments e "
                            "ON e.experiment_id = r.experiment_id WHERE r.lifecycle_stage = 'active'").fetchall()
        loss = dict(conn.execute("SELECT run_uuid, count(*) FROM metrics WHERE key = 'loss_g' GROUP BY run_uuid").fetchall())
        evaluated = {r for (r,) in conn.execute("SELECT run_uuid FROM latest_metrics WHERE key = 'mae_body'")}
        models = {r for (r,) in conn.execute("SELECT source_run_id FROM logged_models")}
        tables = {t for (t,) in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert {r[0] for r in rows} == ids and {r[1] for r in rows} == {"FINISHED"} and {r[2] for r in rows} == {"vce-study"}
    assert set(loss) == children and min(loss.values()) >= 2
    assert children | {study["parent"].info.run_id} == evaluated
    assert models == children  # one logged generator per variant
    assert {"alembic_version", "registered_models", "model_versions"} <= tables


def _key(artifact_uri: str) -> str:
    """``mlflow-artifacts:/<path>`` -> the object key the server wrote it under."""
    assert artifact_uri.startswith("mlflow-artifacts:/"), artifact_uri
    return f"{PREFIX}/{artifact_uri[len('mlflow-artifacts:/'):].lstrip('/')}"


def test_artifacts_are_objects_in_the_bucket(study, stack):
    """Run artifacts (checkpoint, losses, montage, per-patient CSVs) and each logged model (MLmodel,
    its code, the vce source, requirements, checkpoint) are objects in the S3 bucket."""
    keys = set(stack["s3"].keys(f"{PREFIX}/"))
    for c in study["children"]:
        run = _key(c.info.artifact_uri)
        for name in ("model/checkpoint.pt", "losses.csv", "montage.png", "evaluation/metrics_patients.csv",
                     "evaluation/metrics_slices.csv", "evaluation/montage.png"):
            assert f"{run}/{name}" in keys, (c.data.tags["vce.variant"], name)
        model_id = c.data.tags["vce.model_uri"].removeprefix("models:/")
        model = _key(study["client"].get_logged_model(model_id).artifact_location)
        for name in ("MLmodel", "mlflow_pyfunc.py", "requirements.txt", "artifacts/checkpoint.pt",
                     "code/vce/__init__.py", "code/vce/models/checkpoint.py", "code/vce/inference.py"):
            assert f"{model}/{name}" in keys, (c.data.tags["vce.variant"], name)
    report = _key(study["parent"].info.artifact_uri)
    assert {f"{report}/report/metrics.json", f"{report}/report/report.html"} <= keys
    body = stack["s3"].client().get_object(Bucket=BUCKET, Key=f"{report}/report/metrics.json")["Body"].read()
    assert b'"variants"' in body


def test_the_champion_is_registered_and_loads_from_the_bucket(study, stack, tiny_cfg, tmp_path):
    """The champion is a model version in PostgreSQL's registry; its files, fetched through the server
    from S3, load as a pyfunc and predict (N, 1, S, S) float32."""
    import mlflow.artifacts
    import mlflow.pyfunc

    from vce.tracking import model_requirements

    client = study["client"]
    mv = client.get_model_version_by_alias("vce-pgmgvce-tiny", "champion")
    assert mv.run_id in {c.info.run_id for c in study["children"]} and mv.status == "READY"
    with stack["pg"].connect() as conn:
        (alias_version,) = conn.execute("SELECT version FROM registered_model_aliases WHERE name = %s AND alias = %s",
                                        ("vce-pgmgvce-tiny", "champion")).fetchone()
    assert str(alias_version) == mv.version
    model = client.get_logged_model(mv.source.removeprefix("models:/"))
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model.artifact_location, dst_path=str(tmp_path),
                                                     tracking_uri=study["uri"]))
    assert (local / "requirements.txt").read_text().split() == model_requirements()
    m = len(tiny_cfg.variant(mv.tags["vce.variant"]).modalities)
    s = tiny_cfg.split.image_size
    y = mlflow.pyfunc.load_model(str(local)).predict(np.random.default_rng(0).random((2, m, s, s), np.float32))
    assert y.shape == (2, 1, s, s) and y.dtype == np.float32 and np.isfinite(y).all()
