"""The registry's champion is chosen by evidence (issue 10 item 3): the variant best on the metric
``params.yaml`` declares, after evaluation; ties by name, NaN never wins, the reason is recorded."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pandas as pd
import pytest

from conftest import ROOT
from vce.champion import (
    INVERSION_SUFFIXES,
    champion_metrics,
    check_metric,
    choose_champion,
    no_champion,
    read_metric,
)
from vce.config import CHAMPION_GOALS, ConfigError, load_config, load_config_text

NAN = math.nan
# a hand-made table: per variant, per test patient values of the metric
TABLE = {
    "b": [1.0, 2.0, 3.0],  # mean 2
    "a": [3.0, 1.0, NAN, 2.0],  # mean 2 over its 3 finite patients: ties with b, wins by name
    "c": [NAN, NAN, NAN],  # nothing finite: not eligible
    "d": None,  # no such column
    "e": [0.1, 0.1, 0.1],  # the best numbers, but excluded by the caller (no logged model)
    "f": [10.0, 20.0, 30.0],  # mean 20
    "g": [-math.inf, math.inf, NAN],  # infinities are not evidence either
}


def _choose(goal, table=TABLE, **kw):
    return choose_champion(table, "mae_body_cal", goal, skipped={"e": "no model logged"}, n_resamples=200, **kw)


def test_min_with_nan_and_a_tie_broken_by_name():
    ch = _choose("min")
    assert ch.variant == "a" and ch.value == pytest.approx(2.0) and ch.best.n == 3
    assert ch.runner_up.variant == "b" and ch.runner_up.mean == pytest.approx(2.0)
    assert [c.variant for c in ch.ranking] == ["a", "b", "f"]
    assert set(ch.skipped) == {"c", "d", "e", "g"} and ch.skipped["e"] == "no model logged"
    assert ch.reason.startswith("lowest mean mae_body_cal over 3 test patients: 2 (95 % CI ")
    assert "vs runner-up b 2 (tie broken by name)" in ch.reason
    assert "not eligible: c, d, e, g" in ch.reason


def test_max_and_order_independence():
    ch = _choose("max")
    assert ch.variant == "f" and ch.value == pytest.approx(20.0) and ch.runner_up.variant == "a"
    assert ch.reason.startswith("highest mean mae_body_cal over 3 test patients: 20")
    assert "tie broken" not in ch.reason
    reversed_table = dict(reversed(list(TABLE.items())))
    for goal in CHAMPION_GOALS:
        assert _choose(goal, reversed_table) == _choose(goal)  # deterministic, not by insertion order


def test_nan_never_wins_and_nothing_eligible():
    for goal in CHAMPION_GOALS:
        assert choose_champion({"x": [NAN], "y": [5.0], "z": [-math.inf]}, "m", goal).variant == "y"
    assert choose_champion({"x": [NAN], "y": None}, "m", "min") is None
    assert choose_champion({}, "m", "max") is None
    doc = no_champion("m", "min", {"x": "no finite m"})
    assert doc["variant"] is None and "unchanged" in doc["reason"]
    with pytest.raises(ValueError, match="goal"):
        choose_champion({"y": [1.0]}, "m", "lowest")


def test_ci_tags_and_json():
    ch = choose_champion({"a": [1.0, 2.0, 3.0, 4.0], "b": [5.0, 6.0, 7.0, 8.0]}, "mae_body_cal", "min",
                         level=0.9, n_resamples=500, seed=3)
    assert ch.best.ci_low < 2.5 < ch.best.ci_high
    assert "(90 % CI " in ch.reason and ch.reason.endswith("vs runner-up b 6.5")
    tags = ch.tags()
    assert tags == {"vce.variant": "a", "vce.champion_metric": "mae_body_cal", "vce.champion_goal": "min",
                    "vce.champion_value": "2.5", "vce.champion_reason": ch.reason}
    single = choose_champion({"a": [1.0]}, "m", "min")
    assert single.reason == "lowest mean m over 1 test patient: 1, the only variant with this metric"  # no CI of one value
    doc = single.to_dict()
    json.dumps(doc, allow_nan=False)
    assert doc["ci_low"] is None and doc["variant"] == "a" and doc["ranking"][0]["n"] == 1


def test_metric_names_are_the_evaluation_columns():
    from vce.evaluation.run import INVERSION_FREE
    from vce.evaluation.synthesisers import INVERSIONS
    from vce.metrics.scoring import GT_METRICS, PATIENT_METRICS

    assert INVERSION_SUFFIXES == tuple(INVERSIONS.values())
    written = {k + s for s in INVERSIONS.values() for k in PATIENT_METRICS
               if k != "n_slices" and not (s and k in INVERSION_FREE)}  # what score_case writes
    names = set(champion_metrics())
    assert names <= written
    assert names == {m for m in written if not m.startswith(("gt_", "gtclean_")) and not m.startswith("n_tumour")}
    assert {"mae_body_cal", "mae_body", "ssim_body_cal", "enh_ratio_ring_cal", "enh_dice"} <= names
    assert not names & set(GT_METRICS)
    check_metric("mae_body_cal")
    with pytest.raises(ConfigError, match="'mae_bodyy' is not a score"):
        check_metric("mae_bodyy")


def test_params_declare_a_valid_champion_metric():
    import yaml

    for profile in yaml.safe_load((ROOT / "params.yaml").read_text())["profiles"]:
        study = load_config(ROOT / "params.yaml", profile).study
        assert (study.champion_metric, study.champion_goal) == ("mae_body_cal", "min")
        check_metric(study.champion_metric)


@pytest.mark.parametrize("old, new, match", [
    ("champion_goal: min", "champion_goal: lowest", r"profiles\.tiny\.study\.champion_goal must be one of \('min', 'max'\)"),
    ("champion_metric: mae_body_cal", "champion_metric: gt_enh_ratio_ring", r"profiles\.tiny\.study\.champion_metric must name a score"),
    ("champion_metric: mae_body_cal", "champion_metric: n_slices", r"profiles\.tiny\.study\.champion_metric must name a score"),
    ("champion_metric: mae_body_cal", "champion_metric: ''", r"profiles\.tiny\.study\.champion_metric must name a score"),
    ("champion_metric: mae_body_cal", "champion_metric: 3", r"profiles\.tiny\.study\.champion_metric"),
])
def test_bad_champion_settings_fail_at_load(old, new, match):
    text = (ROOT / "params.yaml").read_text()
    assert old in text
    with pytest.raises(ConfigError, match=match):
        load_config_text(text.replace(old, new), "tiny")


def test_read_metric(tmp_path):
    (tmp_path / "ok").mkdir()
    pd.DataFrame({"patient": ["P1", "P2"], "mae_body_cal": [1.0, NAN]}).to_csv(tmp_path / "ok" / "metrics_patients.csv", index=False)
    (tmp_path / "other").mkdir()
    pd.DataFrame({"patient": ["P1"], "mae": [1.0]}).to_csv(tmp_path / "other" / "metrics_patients.csv", index=False)
    (tmp_path / "empty").mkdir()
    values, missing = read_metric({n: tmp_path / n for n in ("ok", "other", "empty")}, "mae_body_cal")
    assert list(values) == ["ok"] and np.isnan(values["ok"][1]) and values["ok"][0] == 1.0
    assert missing == {"other": "no mae_body_cal column in metrics_patients.csv", "empty": "no metrics_patients.csv"}


# --------------------------------------------------------------------------- steps.compare


def _eval_dirs(root, cfg, names, best, goal_values=None):
    """Evaluation directories with every column the report reads; ``best`` has the lowest mae_body_cal."""
    from vce.metrics.scoring import GT_METRICS

    rng = np.random.default_rng(0)
    cols = list(champion_metrics()) + list(GT_METRICS) + ["n_tumour_voxels"]
    pids = ["P1", "P2", "P3"]
    dirs = []
    for k, name in enumerate(names):
        d = root / name
        d.mkdir(parents=True)
        df = pd.DataFrame({"patient": pids, **{c: rng.uniform(0.1, 1.0, len(pids)) for c in cols}, "n_slices": 4})
        df["mae_body_cal"] = (goal_values or {}).get(name, 100.0 + 10 * k) + np.arange(len(pids))
        if name == best:
            df["mae_body_cal"] = 50.0 + np.arange(len(pids))
        df.to_csv(d / "metrics_patients.csv", index=False)
        pd.concat([df.assign(slice=s) for s in range(2)]).to_csv(d / "metrics_slices.csv", index=False)
        (d / "variant.json").write_text(cfg.variant(name).to_json())
        dirs.append(d)
    return dirs


NAMES = ("pgmgvce_main", "baseline_mmgsn", "t2_only", "ratio_10to1")


def test_compare_without_tracking_writes_the_choice(tiny_cfg, tmp_path):
    from vce import steps

    dirs = _eval_dirs(tmp_path / "eval", tiny_cfg, NAMES, best="t2_only")
    out = tmp_path / "report"
    steps.compare(dirs, out, tiny_cfg)
    doc = json.loads((out / "champion.json").read_text())
    assert doc["variant"] == "t2_only" and doc["metric"] == "mae_body_cal" and doc["value"] == pytest.approx(51.0)
    assert doc["runner_up"] == "pgmgvce_main" and doc["registered_model"] is None and doc["n"] == 3
    assert [r["variant"] for r in doc["ranking"]] == ["t2_only", "pgmgvce_main", "baseline_mmgsn", "ratio_10to1"]
    summary = (out / "summary.md").read_text()
    assert "## Champion" in summary and "`t2_only`: lowest mean mae_body_cal over 3 test patients: 51" in summary


def test_compare_promotes_the_best_logged_model(tiny_cfg, tmp_path):
    """With MLflow: the alias goes to the best variant with a logged model, version and parent run tagged."""
    from mlflow.tracking import MlflowClient

    from vce import steps, tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parent = tracking.start_run(uri, "study-tiny", tags={"vce.role": "study"})
    runs = {}
    for name in NAMES:
        if name == "ratio_10to1":
            continue  # best on the metric, but its training logged no model: not eligible
        tr = tracking.start_run(uri, name, parent_run_id=parent.run_id, tags={"vce.variant": name})
        (tmp_path / name).mkdir()
        (tmp_path / name / "checkpoint.pt").write_text(name)
        tr.log_artifact(tmp_path / name / "checkpoint.pt", "generator")
        tr.set_tags({"vce.model_uri": f"runs:/{tr.run_id}/generator"})
        tr.finish()
        runs[name] = tr.run_id
    cfg = dataclasses.replace(tiny_cfg, study=dataclasses.replace(tiny_cfg.study, champion_goal="min"))
    dirs = _eval_dirs(tmp_path / "eval", cfg, NAMES, best="ratio_10to1", goal_values={"baseline_mmgsn": 60.0})
    out = tmp_path / "report"
    steps.compare(dirs, out, cfg, tracking_uri=uri, parent_run_id=parent.run_id)

    client = MlflowClient(uri)
    name = tracking.registered_model_name("tiny")
    mv = client.get_model_version_by_alias(name, "champion")
    assert mv.run_id == runs["baseline_mmgsn"] and mv.source == f"runs:/{runs['baseline_mmgsn']}/generator"
    assert mv.tags["vce.variant"] == "baseline_mmgsn" and mv.tags["vce.champion_metric"] == "mae_body_cal"
    assert mv.tags["vce.champion_value"] == "61"
    assert mv.tags["vce.champion_reason"].startswith("lowest mean mae_body_cal over 3 test patients: 61")
    assert "runner-up pgmgvce_main 101" in mv.tags["vce.champion_reason"] and "not eligible: ratio_10to1" in mv.description
    p = client.get_run(parent.run_id)
    assert p.data.tags["vce.champion"] == "baseline_mmgsn" and p.data.tags["vce.champion_version"] == str(mv.version)
    assert p.data.tags["vce.champion_reason"] == mv.tags["vce.champion_reason"] and "vce.variant" not in p.data.tags
    doc = json.loads((out / "champion.json").read_text())
    assert doc["registered_model"] == f"models:/{name}@champion" and doc["skipped"] == {
        "ratio_10to1": "no model logged in the study's MLflow runs"}
    assert "report/champion.json" in {a.path for a in client.list_artifacts(parent.run_id, "report")}

    # promoting the same logged model again reuses its version; another one moves the alias
    again = tracking.promote_champion(uri, name, mv.source, mv.run_id, {"vce.variant": "baseline_mmgsn"})
    assert again == int(mv.version)
    src = f"runs:/{runs['t2_only']}/generator"
    moved = tracking.promote_champion(uri, name, src, runs["t2_only"], {"vce.variant": "t2_only", "vce.champion_reason": "r"})
    assert moved == int(mv.version) + 1
    now = client.get_model_version_by_alias(name, "champion")
    assert int(now.version) == moved and now.tags["vce.variant"] == "t2_only" and now.description == "r"
    assert tracking.variant_models(uri, parent.run_id) == {
        n: {"run_id": r, "model_uri": f"runs:/{r}/generator"} for n, r in runs.items()}


def test_promote_a_logged_model_whatever_the_process_tracking_uri(tmp_path, monkeypatch):
    """A real MLflow 3 logged model (source ``models:/m-<id>``) is registered in the given store even
    when the process-wide tracking URI names another one (the kfp compare component starts with none
    set: MLflow's SQL registry resolves the source through a default client)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from vce import tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tr = tracking.start_run(uri, "v", tags={"vce.variant": "pgmgvce_main"})
    (tmp_path / "checkpoint.pt").write_bytes(b"not loaded here")
    info = tracking.log_generator_model(tr, tmp_path / "checkpoint.pt", 16, 2)
    tr.finish()
    assert info["model_uri"].startswith("models:/m-")
    elsewhere = f"sqlite:///{tmp_path / 'other.db'}"
    mlflow.set_tracking_uri(elsewhere)
    monkeypatch.chdir(tmp_path)
    try:
        version = tracking.promote_champion(uri, "vce-pgmgvce-tiny", info["model_uri"], tr.run_id,
                                            {"vce.variant": "pgmgvce_main", "vce.champion_reason": "best"})
    finally:
        assert mlflow.get_tracking_uri() == elsewhere  # restored
        mlflow.set_tracking_uri(None)
    mv = MlflowClient(uri, uri).get_model_version_by_alias("vce-pgmgvce-tiny", "champion")
    assert int(mv.version) == version == 1 and mv.run_id == tr.run_id


def test_vce_compare_cli_logs_to_the_parent_run_it_is_given(tiny_cfg, tmp_path, monkeypatch, capsys):
    """``vce compare --parent-run-id R --tracking-uri U``: the report lands in run R of store U and
    the champion is registered there; without ``--parent-run-id`` nothing is tracked."""
    from mlflow.tracking import MlflowClient

    from vce import cli, tracking

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parent = tracking.start_run(uri, "study-tiny", tags={"vce.role": "study"})
    tr = tracking.start_run(uri, "t2_only", parent_run_id=parent.run_id, tags={"vce.variant": "t2_only"})
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "checkpoint.pt").write_text("t2_only")
    tr.log_artifact(tmp_path / "ck" / "checkpoint.pt", "generator")
    tr.set_tags({"vce.model_uri": f"runs:/{tr.run_id}/generator"})
    tr.finish()
    dirs = _eval_dirs(tmp_path / "eval", tiny_cfg, NAMES, best="t2_only")
    args = ["compare", "--profile", "tiny", "--eval", *map(str, dirs), "--reference", str(tmp_path / "none")]

    assert cli.main([*args, "--out", str(tmp_path / "untracked")]) == 0
    assert json.loads((tmp_path / "untracked" / "champion.json").read_text())["registered_model"] is None

    assert cli.main([*args, "--out", str(tmp_path / "report"), "--parent-run-id", parent.run_id,
                     "--tracking-uri", uri]) == 0
    client = MlflowClient(uri)
    mv = client.get_model_version_by_alias(tracking.registered_model_name("tiny"), "champion")
    assert mv.run_id == tr.run_id
    assert "report/champion.json" in {a.path for a in client.list_artifacts(parent.run_id, "report")}
    assert not (tmp_path / "mlruns").exists() and "report:" in capsys.readouterr().out
