"""The study's report: the paper's tables, the evaluation protocol, verdicts, ``metrics.json``,
figures and a self-contained ``report.html``, written atomically into one directory.

Inputs: one evaluation directory per variant (``vce evaluate``) and the reference directory
(``vce reference``: ``oracle/``, ``learnability/``, ``learnability_auc.csv``, ``fov.csv``,
``split.json``). Without a reference directory the reference rows are left out (and said so).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vce.config import Config, Variant
from vce.io.atomic import atomic_dir, write_json
from vce.reporting import protocol
from vce.reporting.ablations import derive_roles
from vce.reporting.loading import load_patient_metrics
from vce.reporting.protocol import LEARNABILITY, ORACLE, StudyData
from vce.reporting.stats import summarise
from vce.reporting.tables import build_tables
from vce.reporting.verdicts import verdicts

log = logging.getLogger(__name__)

METRICS_JSON = "metrics.json"
REPORT_HTML = "report.html"
NOT_METRICS = ("patient", "n_slices")


@dataclass
class Report:
    """What :func:`build_report` produced: the tables (name -> DataFrame), ``metrics.json`` content, verdicts."""

    tables: dict[str, pd.DataFrame]
    metrics: dict[str, Any]
    verdicts: list[dict[str, str]] = field(default_factory=list)
    main: str = ""

    def parent_metrics(self) -> dict[str, float]:
        """The study parent run's metrics: the main variant's means under the same names as its child run."""
        return {k: v["mean"] for k, v in self.metrics["variants"].get(self.main, {}).items()
                if v.get("mean") is not None and math.isfinite(v["mean"])}


def _clean(x: Any) -> Any:
    """JSON-safe: NaN / inf -> None, numpy scalars -> Python."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _block(df: pd.DataFrame, data: StudyData, columns: Sequence[str], rename: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``{metric: {"mean", "sd", "n", "ci_low", "ci_high"}}`` of ``columns`` of a per-patient frame."""
    out = {}
    for c in columns:
        name = (rename or {}).get(c, c)
        out[name] = summarise(pd.to_numeric(df[c], errors="coerce").to_numpy(float), **data.stats_kw())
    return out


def _model_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if c not in NOT_METRICS and not c.startswith(("gt_", "gtclean_"))]


def metrics_document(data: StudyData, comparisons: dict[str, dict[str, float]], verdict_rows: list[dict[str, str]],
                     provenance: dict[str, Any]) -> dict[str, Any]:
    """The content of ``metrics.json`` (shape in docs/metrics.md)."""
    main = data.patients[data.roles.main]
    gt_cols = [c for c in main.columns if c.startswith("gt_")]
    clean_cols = [c for c in main.columns if c.startswith("gtclean_")]
    ref: dict[str, Any] = {
        "ground_truth": _block(main, data, gt_cols, {c: c[3:] for c in gt_cols}),
        "ground_truth_clean": _block(main, data, clean_cols, {c: c[8:] for c in clean_cols}),
    }
    for r in data.references:
        ref[r] = _block(data.patients[r], data, _model_columns(data.patients[r]))
    if data.auc is not None:
        ref["learnability"] = {**ref.get("learnability", {}),
                               **_block(data.auc, data, [c for c in data.auc.columns if c.startswith("auc_")])}
    doc = {
        "variants": {n: _block(data.patients[n], data, _model_columns(data.patients[n])) for n in data.names},
        "reference": ref,
        "kinds": {n: data.kind(n) for n in data.names + data.references},
        "main": data.roles.main, "baseline": data.roles.baseline,
        "comparisons": {f"{data.roles.main}-{data.roles.baseline}": comparisons} if data.roles.baseline else {},
        "verdicts": verdict_rows,
        "provenance": provenance,
        "units": "MAE/MSE and levels: 12-bit scanner units on the T2 grid; '_cal' = deployable calibration, "
                 "no suffix = the paper's inversion; statistics over test patients (n), 95 % bootstrap CIs.",
    }
    return _clean(doc)


def _read_reference(reference: Path | None) -> tuple[dict[str, pd.DataFrame], pd.DataFrame | None, pd.DataFrame | None, dict]:
    """The reference rows' per-patient metrics, the AUC table, the FOV table and split.json (all optional)."""
    if reference is None or not reference.is_dir():
        log.warning("no reference directory (%s): oracle and learnability rows are left out", reference)
        return {}, None, None, {}
    refs = {r: load_patient_metrics(reference / r) for r in (ORACLE, LEARNABILITY) if (reference / r).is_dir()}
    auc = pd.read_csv(reference / "learnability_auc.csv", dtype={"patient": str}) if (reference / "learnability_auc.csv").is_file() else None
    fov = pd.read_csv(reference / "fov.csv", dtype={"patient": str}) if (reference / "fov.csv").is_file() else None
    split = json.loads((reference / "split.json").read_text()) if (reference / "split.json").is_file() else {}
    return refs, auc, fov, split


def replicate_groups(variants: Sequence[Variant], names: Sequence[str]) -> dict[str, list[str]]:
    """Variant (seed_offset 0) -> itself and the variants equal to it except in name and seed_offset."""
    base = [v for v in variants if v.seed_offset == 0 and v.name in names]
    out = {}
    for b in base:
        d = {k: x for k, x in b.to_dict().items() if k not in ("name", "seed_offset")}
        group = [v.name for v in variants if v.name in names
                 and {k: x for k, x in v.to_dict().items() if k not in ("name", "seed_offset")} == d]
        if len(group) > 1:
            out[b.name] = group
    return out


def study_data(eval_dirs: Mapping[str, Path], variants: Sequence[Variant], cfg: Config,
               reference: Path | None) -> tuple[StudyData, dict]:
    """Load every evaluated variant's and reference's per-patient metrics into a :class:`StudyData`."""
    names = [v.name for v in variants if v.name in eval_dirs]
    roles = derive_roles(variants, main=cfg.study.main_variant, available=set(names))
    refs, auc, fov, split = _read_reference(reference)
    patients = {n: load_patient_metrics(eval_dirs[n]) for n in names} | refs
    data = StudyData(patients, list(variants), roles, cfg.evaluate, cfg.seed, auc, fov, replicate_groups(variants, names))
    return data, split


def protocol_tables(data: StudyData) -> dict[str, pd.DataFrame]:
    """The protocol's tables (those the evaluated variants support)."""
    t = {"accuracy_regions": protocol.accuracy_regions(data, ""),
         "accuracy_regions_cal": protocol.accuracy_regions(data, "_cal"),
         "texture_protocol": protocol.texture_protocol(data),
         "enhancement": protocol.enhancement_table(data),
         "air": protocol.air_table(data)}
    if data.roles.baseline:
        t["comparison_main_baseline"] = protocol.comparisons(data)
        t["texture_closer"] = protocol.texture_closer(data)
    if data.replicates:
        t["seed_replicates"] = protocol.seed_spread(data)
    if any(data.roles.groups.values()):
        t["ablation_effects"] = protocol.ablation_effects(data)
    if data.auc is not None:
        t["learnability_auc"] = protocol.learnability_auc(data.auc)
    if data.fov is not None:
        t["fov"] = protocol.fov_table(data.fov)
    return t


def provenance(cfg: Config, split: dict) -> dict[str, Any]:
    """Code, data and settings behind the report."""
    from vce import __version__

    return {"code_version": __version__, "git_commit": _git_commit(), "profile": cfg.profile, "seed": cfg.seed,
            "split_id": split.get("split_id"), "grid": {"image_size": cfg.split.image_size,
                                                         "synth_matrix": list(cfg.synth.matrix)},
            "test_patients": (split.get("patients") or {}).get("test"), "evaluate": cfg.evaluate.__dict__,
            "n_variants_run": len(cfg.variants),
            "variants_not_run": [v.name for v in cfg.catalogue if v.name not in {x.name for x in cfg.variants}]}


def _git_commit() -> str | None:
    import subprocess

    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def build_report(eval_dirs: Mapping[str, Path], variants: Sequence[Variant], out_dir: str | Path, cfg: Config,
                 reference: Path | None = None, champion: Mapping[str, Any] | None = None) -> Report:
    """Every table, ``metrics.json``, verdicts, figures, ``summary.md`` and ``report.html`` in ``out_dir`` (atomic);
    with ``champion`` (:mod:`vce.champion`'s document) also ``champion.json`` and a section of ``summary.md`` naming it."""
    from vce.reporting import report_files

    variants = [Variant.from_any(v) for v in variants]
    data, split = study_data(eval_dirs, variants, cfg, reference)
    tables = build_tables(eval_dirs, variants, main=cfg.study.main_variant,
                          references={r: data.patients[r] for r in data.references})
    tables.update(protocol_tables(data))
    comp = ({k: {c: int(v) if c == "n" else float(v) for c, v in r.items()}
             for k, r in tables["comparison_main_baseline"].iterrows()} if "comparison_main_baseline" in tables else {})
    verdict_rows = verdicts(data, comp)
    prov = provenance(cfg, split)
    doc = metrics_document(data, comp, verdict_rows, prov)
    with atomic_dir(out_dir) as tmp:
        report_files.write_all(tmp, tables, doc, verdict_rows, data, eval_dirs, reference, cfg,
                               champion=(champion or {}).get("variant"))
        if champion is not None:
            write_json(tmp / "champion.json", _clean(dict(champion)))
            who = f"`{champion['variant']}`: " if champion.get("variant") else ""
            where = (f"MLflow registry: `{champion['registered_model']}`" if champion.get("registered_model")
                     else "not registered (no MLflow tracking)")
            with open(tmp / "summary.md", "a", encoding="utf-8") as f:
                f.write(f"\n## Champion\n\n{who}{champion.get('reason', '')}. Chosen on study.champion_metric / "
                        f"champion_goal (params.yaml); {where}; details: champion.json.\n")
    return Report(tables, doc, verdict_rows, cfg.study.main_variant)
