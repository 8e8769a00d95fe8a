"""``vce`` argument handling: a variant by name or as JSON (parsed once), bad params fail before any step."""

from __future__ import annotations

import json
import re

import pytest

from conftest import ROOT
from vce import cli
from vce.config import Variant

PARAMS = str(ROOT / "params.yaml")
CUSTOM = {"name": "ratio_2to1", "lambda_pg": 2.0, "modalities": ["T2"]}


def _train_args(*variant: str, nproc: int = 1):
    return cli.build_parser().parse_args(["train", *variant, "--params", PARAMS, "--profile", "tiny",
                                          "--nproc", str(nproc), "--no-tracking"])


def test_variant_by_name_or_json(tiny_cfg):
    by_name = _train_args("--variant", "t1_only")
    assert cli._variant(by_name, tiny_cfg) == tiny_cfg.variant("t1_only")
    by_json = _train_args("--variant-json", json.dumps(CUSTOM))
    assert cli._variant(by_json, tiny_cfg) == Variant.from_any(CUSTOM)


@pytest.mark.parametrize(
    "argv",
    [
        ["train"],  # one of the two is required
        ["train", "--variant", "t1_only", "--variant-json", json.dumps(CUSTOM)],  # not both
    ],
)
def test_variant_flags_exclusive_and_required(argv, capsys):
    with pytest.raises(SystemExit) as info:
        cli.build_parser().parse_args(argv)
    assert info.value.code == 2
    assert "--variant" in capsys.readouterr().err


@pytest.mark.parametrize(
    "variant, match",
    [
        (["--variant", '{"name": "x"}'], "no variant named"),  # JSON is not sniffed out of --variant
        (["--variant", "nope"], "no variant named 'nope'"),
        (["--variant-json", "{name: x}"], "not valid JSON"),
        (["--variant-json", '{"name": "x", "lambda_pg": "two"}'], r"variants\.x\.lambda_pg must be a finite number"),
    ],
)
def test_bad_variant_exits_2_naming_it(variant, match, capsys, tmp_path):
    out = tmp_path / "run"
    rc = cli.main(["train", *variant, "--params", PARAMS, "--profile", "tiny", "--normalized", str(tmp_path),
                   "--out", str(out), "--no-tracking"])
    assert rc == 2
    assert not list(tmp_path.iterdir())  # nothing written
    assert re.search(match, capsys.readouterr().err)


@pytest.mark.parametrize("variant", [["--variant", "t1_only"], ["--variant-json", json.dumps(CUSTOM)]])
def test_torchrun_relaunch_keeps_the_variant(variant, monkeypatch, tiny_cfg):
    """``--nproc 2`` reruns the same command under torchrun with the variant given the same way."""
    import subprocess

    seen: dict[str, list[str]] = {}

    def fake_run(cmd, check):
        seen["cmd"] = cmd
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setattr(subprocess, "run", fake_run)
    args = _train_args(*variant, nproc=2)
    assert cli._train(args, tiny_cfg) == 0
    cmd = seen["cmd"]
    assert cmd[cmd.index("-m", cmd.index("--nproc_per_node=2")) + 1] == "vce.cli"
    inner = cli.build_parser().parse_args(cmd[cmd.index("vce.cli") + 1:])
    assert cli._variant(inner, tiny_cfg) == cli._variant(args, tiny_cfg)
    assert inner.out == str(cli.OUT / "runs" / cli._variant(args, tiny_cfg).name)


def test_torchrun_relaunch_keeps_the_tracking_flags(monkeypatch, tiny_cfg):
    """``--nproc 2`` with tracking: the workers get the same URI, parent run and experiment."""
    import subprocess

    seen: dict[str, list[str]] = {}
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setattr(subprocess, "run", lambda cmd, check: seen.setdefault("cmd", cmd) and subprocess.CompletedProcess(cmd, 0))
    args = cli.build_parser().parse_args(["train", "--variant", "t1_only", "--params", PARAMS, "--profile", "tiny",
                                          "--nproc", "2", "--tracking-uri", "sqlite:///x.db", "--parent-run-id", "abc",
                                          "--experiment", "ablations-2026"])
    assert cli._train(args, tiny_cfg) == 0
    inner = cli.build_parser().parse_args(seen["cmd"][seen["cmd"].index("vce.cli") + 1:])
    assert (inner.tracking_uri, inner.parent_run_id, inner.experiment) == ("sqlite:///x.db", "abc", "ablations-2026")
    assert not inner.no_tracking and inner.nproc == 1


def test_bad_params_fail_before_the_step_runs(tmp_path, capsys):
    """A bad params.yaml stops `vce synth` at load: exit 2, the key named, no cohort started."""
    text = (ROOT / "params.yaml").read_text()
    head, tiny = text.split("  tiny:\n")
    bad = tmp_path / "params.yaml"
    bad.write_text(head + "  tiny:\n" + tiny.replace("iterations: 4\n", "iterations: -5\n", 1))
    out = tmp_path / "data"
    assert cli.main(["synth", "--params", str(bad), "--profile", "tiny", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "profiles.tiny.train.iterations must be >= 1 (got -5)" in err
    assert not out.exists()


def test_failed_task_reads_the_step_from_kfps_failure_and_nothing_else():
    from vce.cli import failed_task

    kfp_msg = ("Pipeline \x1b[95m'vce-study'\x1b[0m finished with status \x1b[91mFAILURE\x1b[0m. "
               "Inner task failed: \x1b[96m'train'\x1b[0m inside \x1b[96m'ablations'\x1b[0m.")
    assert failed_task(RuntimeError(kfp_msg)) == "'train' inside 'ablations'"
    assert failed_task(RuntimeError("CUDA error: out of memory")) is None


def test_refused_commands_are_recorded_for_the_fault_table(tmp_path, monkeypatch, capsys):
    """With VCE_ERROR_LOG set, a refusal appends step, exit status and message (scripts/error_table.py)."""
    import json

    from vce.cli import main

    log = tmp_path / "errors.jsonl"
    monkeypatch.setenv("VCE_ERROR_LOG", str(log))
    assert main(["validate", "--raw", str(tmp_path / "nope")]) == 2
    rec = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(rec) == 1 and rec[0]["step"] == "validate" and rec[0]["exit"] == 2 and not rec[0]["traceback"]
    assert str(tmp_path / "nope") in rec[0]["message"] and "test_refused_commands_are_recorded" in rec[0]["test"]
    monkeypatch.delenv("VCE_ERROR_LOG")
    assert main(["validate", "--raw", str(tmp_path / "nope")]) == 2
    assert len(log.read_text().splitlines()) == 1
