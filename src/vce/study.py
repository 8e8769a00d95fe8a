"""``vce run``: the whole study through the Kubeflow pipeline with kfp's local runner.

No cluster and no Docker: kfp's SubprocessRunner runs each component in this Python
environment. Tracking goes to MLflow (default: the project's SQLite store).
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from .config import Config, default_params_path
from .io.atomic import atomic_dir

logger = logging.getLogger(__name__)


def run_study(
    cfg: Config,
    data: str | Path = "data",
    out: str | Path = "outputs/study",
    tracking_uri: str | None = None,
    experiment: str | None = None,
    parallelism: int | None = None,
    params_path: str | Path | None = None,
) -> Path:
    """Run the study DAG locally; returns the report directory (``<out>/report``).

    One study per ``out`` at a time (an exclusive lock on ``<out>/.vce-run.lock``); an
    ``http(s)`` tracking server is checked first (:func:`vce.tracking.preflight`). This process
    owns the components it starts (:func:`vce.runtime.owning`: they die with it and tag their
    MLflow runs with it); when the DAG fails, the runs it left RUNNING are closed FAILED (KILLED
    on an interrupt), and the next study marks those of a killed run KILLED."""
    from .runtime import exclusive_run
    from .tracking import preflight

    t0 = time.time()
    data, out = Path(data).resolve(), Path(out).resolve()
    preflight(tracking_uri)
    with exclusive_run(out):
        report = _run_locked(cfg, data, out, tracking_uri, experiment, parallelism, params_path)
    _print_summary(report, out / "kfp", tracking_uri, time.time() - t0)
    return report


def _run_locked(cfg: Config, data: Path, out: Path, tracking_uri: str | None, experiment: str | None,
                parallelism: int | None, params_path: str | Path | None) -> Path:
    """:func:`run_study` once ``out`` is locked: the cohort, then the DAG as this process's own."""
    from kfp import local
    from pipelines.vce_study import build_pipeline, default_arguments

    from . import steps
    from .runtime import owning
    from .tracking import DEFAULT_EXPERIMENT

    params_path = Path(params_path) if params_path else default_params_path()
    if not (data.is_dir() and any(p.is_dir() and not p.name.startswith(".") for p in data.iterdir())):
        logger.info("no cohort at %s: synthesising the %s cohort (%d patients)", data, cfg.profile, cfg.synth.n_patients)
        steps.synth(data, cfg)
    else:
        check_synthetic_cohort(data, cfg)
    defaults = default_arguments(params_path)
    experiment = experiment or DEFAULT_EXPERIMENT
    root = out / "kfp"
    root.mkdir(parents=True, exist_ok=True)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True)
    pipeline = build_pipeline(parallelism=parallelism or cfg.study.parallelism, defaults=defaults)
    logger.info("running the study DAG (%d variants, profile %s) with the kfp local runner; artifacts under %s",
                len(cfg.variants), cfg.profile, root)
    before = {d.name for d in root.iterdir()}
    with owning() as me:
        try:
            pipeline(
                params_yaml=defaults["params_yaml"], profile=cfg.profile, source_dir=str(data),
                tracking_uri=tracking_uri or "", experiment=experiment,
            )
        except BaseException as exc:
            _close_runs(tracking_uri, me.token, experiment, "FAILED" if isinstance(exc, Exception) else "KILLED")
            raise
    report = out / "report"
    with atomic_dir(report) as tmp:
        shutil.copytree(report_of_run(root, before), tmp, dirs_exist_ok=True)
    return report


def report_of_run(root: Path, before: set[str]) -> Path:
    """The report artifact (``compare-op``'s) of the one pipeline run that appeared under the kfp
    root ``root`` since it held the runs named ``before``: the DAG returns no output (kfp allows
    none from inside its exit handler), so the run's own folder is where the report is."""
    found = [d / "compare-op" / "report" for d in root.iterdir() if d.name not in before]
    found = [r for r in found if r.is_dir()]
    if len(found) != 1:
        raise RuntimeError(f"{root}: expected the report of one new pipeline run, found {[str(f) for f in found]}")
    return found[0]


def _close_runs(tracking_uri: str | None, token: str, experiment: str, status: str) -> None:
    """Close the MLflow runs this study left RUNNING (best effort: the original error matters more)."""
    if not tracking_uri:
        return
    from .tracking import close_owned_runs

    try:
        close_owned_runs(tracking_uri, token, status, experiment)
    except Exception as exc:  # noqa: BLE001 - e.g. the server went away: the next study reconciles
        logger.warning("could not close this study's MLflow runs at %s: %s", tracking_uri, exc)


def check_synthetic_cohort(data: Path, cfg: Config) -> None:
    """Refuse a synthetic cohort made with other settings than this profile's (a user's own
    cohort, without ``cohort.json``, is used as it is)."""
    import dataclasses
    import json

    from .io.errors import VCEInputError

    meta = data / "cohort.json"
    if not meta.is_file():
        return
    d = json.loads(meta.read_text())
    want = json.loads(json.dumps(dataclasses.asdict(cfg.synth)))
    if d.get("config") != want or d.get("seed") != cfg.seed:
        raise VCEInputError(
            f"{meta}: this synthetic cohort was made with other settings than profile {cfg.profile!r} "
            f"(seed {d.get('seed')}, {d.get('config')}); use another --data directory or remove it"
        )


def _print_summary(report: Path, root: Path, tracking_uri: str | None, wall: float) -> None:
    print("\n" + (report / "summary.md").read_text())
    preds = sorted(root.rglob("pred/*.nii.gz"))
    print(f"Study finished in {wall / 60:.1f} min.")
    print(f"  report (tables, figures): {report}")
    if preds:
        print(f"  predictions ({len(preds)} NIfTI volumes on the T2 grid), e.g.: {preds[0]}")
    print(f"  kfp artifacts (every step's inspectable output): {root}")
    if tracking_uri:
        print(f"  MLflow store: {tracking_uri}")
        if tracking_uri.startswith("sqlite:///"):
            print("  open the MLflow UI:  bash mlflow/ui.sh 5000   then browse http://127.0.0.1:5000 "
                  "(experiment 'vce-study': one parent run per study, one child run per variant)")
