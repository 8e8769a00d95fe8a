"""DVC reproduces the study from a clean clone: same split, bit for bit; a second repro does nothing;
its stage runs reach MLflow with their lineage; `dvc exp run -S` trains with the value it sets
(after DVC rewrote params.yaml).

Slow (it runs every stage, every variant trained, at the tiny profile twice): `pytest -m slow`.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT
from vce.lineage import dvc_dir_md5

pytestmark = pytest.mark.slow


def _env(tracking_uri: str | None = None):
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    env["DVC_NO_ANALYTICS"] = "1"
    if tracking_uri:  # the stages track to $MLFLOW_TRACKING_URI (dvc.yaml): a store of the test's own
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    return env


def _clone(dest: Path) -> Path:
    subprocess.run(["git", "clone", "-q", str(ROOT), str(dest)], check=True)
    params = dest / "params.yaml"
    params.write_text(params.read_text().replace("profile: demo", "profile: tiny", 1))
    return dest


def _run(cwd: Path, *cmd: str) -> str:
    r = subprocess.run(cmd, cwd=cwd, env=_env(f"sqlite:///{cwd / 'mlruns.db'}"), capture_output=True, text=True)
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout}\n{r.stderr}"
    return r.stdout + r.stderr


def _lock_md5(repo: Path, stage: str) -> str:
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return lock["stages"][stage]["outs"][0]["md5"]


def test_dvc_repro_is_exact_and_idempotent(tmp_path):
    repos = []
    for name in ("a", "b"):
        repo = _clone(tmp_path / name)
        _run(repo, "vce", "synth", "--out", "data", "--profile", "tiny")
        _run(repo, "dvc", "repro")
        repos.append(repo)
    a, b = repos
    assert _lock_md5(a, "split") == _lock_md5(b, "split")
    assert (a / "outputs/split/split.json").read_text() == (b / "outputs/split/split.json").read_text()
    assert (a / "outputs/report/summary.md").is_file() and (a / "outputs/report/report.html").is_file()
    shown = _run(a, "dvc", "metrics", "show")  # the metrics: section of dvc.yaml
    assert "outputs/report/metrics.json" in shown and "mae_body" in shown
    out = _run(a, "dvc", "repro")
    assert "up to date" in out.lower()
    status = _run(a, "dvc", "status")
    assert "changed" not in status
    # the stages tracked to MLflow: one finished run per trained variant, evaluated, with its lineage
    stages = yaml.safe_load((a / "dvc.yaml").read_text())["stages"]
    params = yaml.safe_load((a / "params.yaml").read_text())
    variants = {*params["variants"], *params["extra_variants"]}
    assert "foreach" in stages["train"] and "foreach" in stages["train_extra"]
    runs = {r.data.tags["vce.variant"]: r for r in _runs(a) if "vce.variant" in r.data.tags}
    assert set(runs) == variants
    for run in runs.values():
        assert "mae_body" in run.data.metrics  # vce evaluate logged to the training run
        _check_lineage(a, run)


def _runs(repo: Path) -> list:
    """The finished MLflow runs the stages of ``repo`` logged (its own store, see :func:`_run`)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{repo / 'mlruns.db'}")
    exp = client.get_experiment_by_name("vce-study")
    assert exp is not None, "the DVC stages logged nothing to MLflow"
    return [r for r in client.search_runs([exp.experiment_id]) if r.info.status == "FINISHED"]


def _check_lineage(repo: Path, run) -> None:
    tags = run.data.tags
    split = json.loads((repo / "outputs/split/split.json").read_text())
    assert tags["vce.data.md5"] == dvc_dir_md5(repo / "data")
    assert tags["vce.split_id"] == split["split_id"]
    assert len(tags["mlflow.source.git.commit"]) == 40 and tags["vce.git.dirty"] in ("true", "false")
    assert [i.dataset.name for i in run.inputs.dataset_inputs] == ["vce-split"]


def _iterations(node) -> list:
    """Every ``profiles.tiny.train.iterations`` in ``dvc exp show --json`` (baseline and experiments)."""
    if isinstance(node, list):
        return [i for n in node for i in _iterations(n)]
    if not isinstance(node, dict):
        return []
    if "params.yaml" in node:
        return [node["params.yaml"]["data"]["profiles"]["tiny"]["train"]["iterations"]]
    return [i for v in node.values() for i in _iterations(v)]


def test_dvc_exp_run_set_param_survives_the_rewrite(tmp_path):
    """`dvc exp run -S` rewrites params.yaml (ruamel: `amp: "off"` -> `amp: off`, 1e-5 -> `1e-05`,
    which YAML 1.1 reads as false and as a string); training runs with the values set."""
    repo = _clone(tmp_path / "x")
    for key, value in (("user.name", "t"), ("user.email", "t@example.org")):  # DVC commits experiments
        _run(repo, "git", "config", key, value)
    _run(repo, "git", "commit", "-qam", "tiny profile")  # the baseline: dvc exp run needs a commit
    _run(repo, "vce", "synth", "--out", "data", "--profile", "tiny")
    _run(repo, "dvc", "exp", "run", "-S", "profiles.tiny.train.iterations=3", "-S", "profiles.tiny.train.lr=1e-5",
         "train@pgmgvce_main")
    rewritten = (repo / "params.yaml").read_text()
    assert "amp: off" in rewritten and 'amp: "off"' not in rewritten and "lr: 1e-05" in rewritten
    assert yaml.safe_load(rewritten)["profiles"]["tiny"]["train"]["amp"] is False  # what broke training
    shown = json.loads(_run(repo, "dvc", "exp", "show", "--json"))
    assert 3 in set(_iterations(shown)) and 4 in set(_iterations(shown))  # the experiment and its baseline
    summary = json.loads((repo / "outputs/runs/pgmgvce_main/train_summary.json").read_text())
    assert summary["iterations"] == 3 and summary["amp"] == "off"
    (run,) = [r for r in _runs(repo) if r.data.tags.get("vce.variant") == "pgmgvce_main"]
    assert float(run.data.params["lr"]) == 1e-5 and run.data.params["iterations"] == "3"
    _check_lineage(repo, run)
