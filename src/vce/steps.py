"""The study's steps as pure functions of (input paths, config) -> output paths.

The CLI (`vce <step>`), DVC (`dvc.yaml`) and the Kubeflow components all call these, so the
science lives in one place. Each step writes its output atomically and can be rerun.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any

import pandas as pd

from .config import Config, Variant
from .tracking import DEFAULT_EXPERIMENT, MlflowTracker, preflight, start_run

logger = logging.getLogger(__name__)


def default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def synth(out: str | Path, cfg: Config, workers: int | None = None) -> list[str]:
    from .synth.cohort import synthesize_cohort

    return synthesize_cohort(out, cfg.synth, cfg.seed, workers=workers or default_workers())


def import_patients(
    src: str | Path,
    out: str | Path,
    mapping: str | Path | None = None,
    series_rules: list[str] | None = None,
    series_rules_file: str | Path | None = None,
    rescale_12bit: bool = False,
) -> dict[str, str]:
    """Real patients (NIfTI / DICOM) -> de-identified raw cohort ``out``; ``{pseudonym: modalities}``.
    ``rescale_12bit``: scale a modality whose maximum exceeds 4095 into [0, 4095] (docs/real_data.md)."""
    from .io.images import parse_rules
    from .prep.importing import import_cohort

    return import_cohort(src, out, mapping=mapping, rules=parse_rules(series_rules, series_rules_file),
                         rescale_12bit=rescale_12bit)


def validate(
    raw: str | Path, report: str | Path, cfg: Config, min_fov_mm: float = 100.0, fov_tolerance: float = 0.2
) -> tuple[dict[str, Any], tuple[Path, Path]]:
    """Check the raw cohort (incl. that ``cfg.split`` can split it); write the JSON + CSV report."""
    from .prep.validate import validate_cohort, write_report

    rep = validate_cohort(raw, min_fov_mm=min_fov_mm, fov_tolerance=fov_tolerance, split=cfg.split, seed=cfg.seed)
    return rep, write_report(rep, report)


def register(raw: str | Path, out: str | Path, cfg: Config, workers: int | None = None) -> pd.DataFrame:
    from .prep.registration import register_cohort

    return register_cohort(raw, out, cfg.register, seed=cfg.seed, workers=workers or default_workers())


def split(registered: str | Path, out: str | Path, cfg: Config) -> pd.DataFrame:
    from .prep.split import split_cohort

    return split_cohort(registered, out, cfg.split, cfg.seed)


def normalize(split_dir: str | Path, out: str | Path, cfg: Config) -> dict[str, Any]:
    from .prep.normalization import normalize_split

    return normalize_split(split_dir, out)


def _tracker(tracking_uri: str | None, name: str, parent_run_id: str | None, experiment: str) -> MlflowTracker | None:
    if not tracking_uri:
        return None
    preflight(tracking_uri)
    return start_run(tracking_uri, name, experiment=experiment, parent_run_id=parent_run_id or None)


def train(
    normalized: str | Path,
    out: str | Path,
    cfg: Config,
    variant: Variant | str,
    tracking_uri: str | None = None,
    parent_run_id: str | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
    resume: bool = False,
    state_dir: str | Path | None = None,
    device: str | None = None,
) -> Path:
    """Train one variant (a :class:`Variant`, or the name of one of ``cfg.variants``) on
    ``<normalized>/<variant.normalization>``; the checkpoint carries what ``predict`` needs (image
    size, slice selection, T1C calibration, MLflow run id).
    ``resume`` / ``state_dir`` / ``device``: see :func:`vce.training.trainer.train_variant`. Under
    ``torchrun`` only rank 0 logs to MLflow, and every worker dies with torchrun
    (:func:`vce.runtime.die_with_parent`). The checkpoint names its MLflow run, never the store:
    where metrics go is the user's setting (``tracking_uri``), see :func:`evaluate`."""
    if "TORCHELASTIC_RUN_ID" in os.environ:  # a torchrun worker
        from .runtime import die_with_parent

        die_with_parent()
    if int(os.environ.get("RANK", "0")) != 0:
        tracking_uri = None  # data-parallel worker: rank 0 alone tracks and writes
    preflight(tracking_uri)  # before importing torch: an unreachable server is said in seconds
    from .training.trainer import train_variant

    v = variant if isinstance(variant, Variant) else cfg.variant(variant)
    normalized = Path(normalized)
    params = json.loads((normalized / "params.json").read_text()) if (normalized / "params.json").is_file() else {}
    tracker = _tracker(tracking_uri, v.name, parent_run_id, experiment)
    metadata = {
        "image_size": cfg.split.image_size,
        "min_body_fraction": cfg.split.min_body_fraction,
        "max_fov_missing": cfg.split.max_fov_missing,
        "calibration": params.get("calibration"),
        "register": dataclasses.asdict(cfg.register),
        "profile": cfg.profile,
        "mlflow_run_id": tracker.run_id if tracker else None,
    }
    if tracker:
        tracker.set_tags({"vce.variant": v.name, "vce.profile": cfg.profile, "vce.model": v.model})
    try:
        path = train_variant(normalized / v.normalization, out, v, cfg.train, cfg.seed + v.seed_offset, tracker=tracker, metadata=metadata,
                             resume=resume, state_dir=state_dir, device=device)
    except BaseException:
        if tracker:
            tracker.finish("FAILED")
        raise
    if tracker:
        try:
            _log_model(tracker, Path(path), cfg, v)
        except BaseException:
            tracker.finish("FAILED")
            raise
        tracker.finish()  # evaluation metrics are added to this (finished) run later
    return path


def _log_model(tracker: MlflowTracker, run_dir: Path, cfg: Config, v: Variant) -> None:
    """Log the generator as an MLflow model to the variant's run (tag ``vce.model_uri``). Nothing is
    registered here: :func:`compare` promotes the variant that is best after evaluation."""
    from .tracking import log_generator_model

    info = log_generator_model(tracker, run_dir / "checkpoint.pt", cfg.split.image_size, len(v.modalities))
    tracker.set_tags({"vce.model_uri": info["model_uri"]})


def evaluate(
    model_dir: str | Path, registered: str | Path, split_dir: str | Path, normalized: str | Path, out: str | Path,
    cfg: Config, track: bool = True, tracking_uri: str | None = None,
) -> pd.DataFrame:
    """Evaluate a trained variant. With ``track``, metrics, per-patient CSVs and the montage go
    to the variant's MLflow run (the checkpoint's ``mlflow_run_id``) in the store the user
    configured, ``tracking_uri`` (default :func:`vce.tracking.default_tracking_uri`), and only
    if that run is there: never to a store named inside the checkpoint."""
    from .evaluation import evaluate_variant
    from .models.checkpoint import load_generator

    _, meta = load_generator(Path(model_dir) / "checkpoint.pt")
    md = meta.get("metadata") or {}
    tracker = _evaluation_tracker(Path(model_dir), md, tracking_uri) if track else None
    return evaluate_variant(model_dir, registered, split_dir, normalized, out, cfg.evaluate, tracker=tracker)


def _evaluation_tracker(model_dir: Path, md: dict[str, Any], tracking_uri: str | None) -> MlflowTracker | None:
    """The checkpoint's MLflow run in the user's store, or None (with a warning) when it is not there."""
    from .tracking import default_tracking_uri, run_exists, shown_uri

    run_id = md.get("mlflow_run_id")
    if not run_id:
        return None
    uri = tracking_uri or default_tracking_uri()
    preflight(uri)
    if not run_exists(uri, run_id):
        logger.warning("%s: its MLflow run %s is not in the tracking store %s: this evaluation is not tracked "
                       "(use the --tracking-uri the model was trained with to track it)", model_dir, run_id, shown_uri(uri))
        return None
    return MlflowTracker(uri, run_id)


def reference(registered: str | Path, split_dir: str | Path, normalized: str | Path, out: str | Path,
              cfg: Config) -> Path:
    """The reference rows of every table: the oracle and the learnability regressor (``vce reference``)."""
    from .evaluation import evaluate_references

    return evaluate_references(registered, split_dir, normalized, out, cfg.evaluate, seed=cfg.seed)


def compare(
    eval_dirs: list[str | Path], out: str | Path, cfg: Config, tracking_uri: str | None = None,
    parent_run_id: str | None = None, reference: str | Path | None = None,
) -> dict[str, pd.DataFrame]:
    """The report from evaluation directories (each holds ``variant.json``) and the reference rows:
    tables, ``metrics.json``, verdicts, figures, ``report.html``; logged to the study's parent run.

    The champion (:mod:`vce.champion`): the variant best on ``study.champion_metric`` /
    ``champion_goal`` is written to ``champion.json`` (and ``summary.md``); with a tracking URI and
    parent run, its logged model (found in the study's child runs) becomes a new version of
    ``vce-pgmgvce-<profile>`` with the alias ``champion``, tagged (and the parent run too) with why."""
    from . import champion as ch
    from .reporting.study import build_report
    from .tracking import CHAMPION_ALIAS, promote_champion, registered_model_name, variant_models

    study = cfg.study
    ch.check_metric(study.champion_metric)
    dirs: dict[str, Path] = {}
    variants = []
    for d in eval_dirs:
        d = Path(d)
        v = Variant.from_json((d / "variant.json").read_text())
        dirs[v.name] = d
        variants.append(v)
    tracked = bool(parent_run_id and tracking_uri)
    if tracked:
        preflight(tracking_uri)
    models = variant_models(tracking_uri, parent_run_id) if tracked else {}
    values, skipped = ch.read_metric(dirs, study.champion_metric)
    if tracked:
        skipped.update({n: "no model logged in the study's MLflow runs" for n in dirs if n not in models and n not in skipped})
    champ = ch.choose_champion(values, study.champion_metric, study.champion_goal, skipped=skipped,
                               level=cfg.evaluate.ci_level, n_resamples=cfg.evaluate.bootstrap, seed=cfg.seed)
    name = registered_model_name(cfg.profile)
    doc = champ.to_dict() if champ else ch.no_champion(study.champion_metric, study.champion_goal, skipped)
    doc["registered_model"] = f"models:/{name}@{CHAMPION_ALIAS}" if tracked and champ else None
    doc["model_uri"] = models[champ.variant]["model_uri"] if tracked and champ else None
    report = build_report(dirs, variants, out, cfg, reference=Path(reference) if reference else None, champion=doc)
    if tracked:
        tr = MlflowTracker(tracking_uri, parent_run_id)
        tr.log_metrics(report.parent_metrics())
        if champ:
            m = models[champ.variant]
            version = promote_champion(tracking_uri, name, m["model_uri"], m["run_id"], champ.tags())
            tr.set_tags({**{k: v for k, v in champ.tags().items() if k != "vce.variant"},
                         "vce.champion": champ.variant, "vce.champion_version": str(version)})
        for f in sorted(Path(out).iterdir()):
            if f.is_file():
                tr.log_artifact(f, "report")
        tr.finish()
    return report.tables


def start_study(tracking_uri: str, cfg: Config, experiment: str = DEFAULT_EXPERIMENT, run_name: str | None = None,
                lineage_sources: Any = None, tags: dict[str, str] | None = None) -> str:
    """Open the study's parent MLflow run; returns its id. First marks KILLED the runs a killed
    study left RUNNING in ``experiment`` (:func:`vce.tracking.reconcile_dead_runs`). The run
    records the lineage of ``lineage_sources`` (a :class:`vce.lineage.Sources`: the cohort and
    split the study uses), which its child runs inherit (:func:`vce.tracking.start_run`)."""
    from .tracking import reconcile_dead_runs

    preflight(tracking_uri)
    reconcile_dead_runs(tracking_uri, experiment)
    tr = start_run(tracking_uri, run_name or f"study-{cfg.profile}", experiment=experiment,
                   tags={"vce.profile": cfg.profile, "vce.role": "study", **(tags or {})},
                   lineage_sources=lineage_sources)
    tr.log_params({"profile": cfg.profile, "seed": cfg.seed, "n_variants": len(cfg.variants),
                   **{f"synth.{k}": v for k, v in cfg.synth.__dict__.items()},
                   **{f"split.{k}": v for k, v in cfg.split.__dict__.items()},
                   **{f"train.{k}": v for k, v in cfg.train.__dict__.items()}})
    return tr.run_id


def predict(
    t1: str | Path, t2: str | Path, model: str | Path, out: str | Path, cfg: Config, tracking_uri: str | None = None,
) -> Path:
    """One new patient's T1 + T2 (NIfTI files or DICOM series folders) -> synthetic T1C NIfTI on
    the T2 grid. ``model``: a run directory, a ``checkpoint.pt``, or an MLflow model URI such as
    ``models:/vce-pgmgvce-demo@champion`` (resolved against ``tracking_uri``)."""
    import tempfile

    from .predict import predict_patient
    from .tracking import resolve_checkpoint

    with tempfile.TemporaryDirectory(prefix="vce-model-") as tmp:
        return predict_patient(t1, t2, resolve_checkpoint(model, tracking_uri, tmp), out)
