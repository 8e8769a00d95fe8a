"""Writing the report directory: per-table CSV + Markdown, ``summary.md``, ``metrics.json``, the
figures and the self-contained ``report.html`` (called inside :func:`~vce.reporting.study.build_report`'s
atomic directory)."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vce.config import Config
from vce.io.atomic import write_json
from vce.reporting import figures, paper
from vce.reporting.protocol import LEARNABILITY, ORACLE, REFERENCE_LABELS, StudyData
from vce.reporting.rendering import display_frame, markdown_table, to_markdown

log = logging.getLogger(__name__)

#: Report order: the paper's tables each followed by the protocol's view of the same question.
ORDER = ("table1_accuracy", "accuracy_regions", "accuracy_regions_cal", "comparison_main_baseline",
         "table2_texture", "texture_protocol", "texture_closer", "enhancement", "learnability_auc", "air",
         *(n for n in paper.table_order() if n.startswith("ablation_")), "ablation_effects", "seed_replicates",
         "fov", paper.OVERVIEW)
BOX_METRICS = (("mae_body", "MAE body"), ("ssim_body", "SSIM body"), ("mae_tumour", "MAE tumour"),
               ("enh_ratio_ring", "Tumour / ring"), ("enh_dice", "Dice (enhancing)"), ("tmsvpmi_body", "TMSVPMI body"))


def ordered(tables: Mapping[str, pd.DataFrame]) -> list[str]:
    return [n for n in ORDER if n in tables] + [n for n in tables if n not in ORDER]


def verdicts_markdown(rows: list[dict[str, str]]) -> str:
    df = pd.DataFrame(rows, columns=["claim", "status", "evidence"]).set_index("claim")
    return ("## Verdicts: the paper's claims at this study's scale\n\n"
            "Reproduced only when the paired CI lies on the claimed side (TOST for similar accuracy) and beyond "
            "twice the seed sd; not reproduced when it lies on the other side; otherwise inconclusive.\n\n"
            + markdown_table(df))


def summary_markdown(tables: Mapping[str, pd.DataFrame], verdict_rows: list[dict[str, str]], doc: dict[str, Any]) -> str:
    prov = doc.get("provenance", {})
    parts = [
        "# VCE study: comparison report\n",
        "All values are mean ± sd (sample sd) over test patients (n), each patient being the mean over its "
        "scored slices (complete field of view); MAE/MSE and levels in 12-bit scanner units on the T2 grid; "
        f"model grid {prov.get('grid', {}).get('image_size')} px. Rows marked as references, seed replicates or "
        "beyond the paper are not the paper's. Definitions: docs/metrics.md. Machine-readable: metrics.json.\n",
        _not_run_note(prov),
        verdicts_markdown(verdict_rows),
    ]
    for name in ordered(tables):
        parts.append(to_markdown(name, tables[name], level=2))
    return "\n".join(parts)


def _not_run_note(prov: Mapping[str, Any]) -> str:
    """A line naming the variants of params.yaml this profile's study did not run (``study.variants``)."""
    skipped = prov.get("variants_not_run") or []
    if not skipped:
        return ""
    return (f"This profile ({prov.get('profile')}) runs {prov.get('n_variants_run')} of the "
            f"{prov.get('n_variants_run', 0) + len(skipped)} variants of params.yaml (`study.variants`); not run here: "
            f"{', '.join(skipped)} (the mid profile, `make study-mid`, runs them all).\n")


def _cases(eval_dirs: Mapping[str, Path], data: StudyData, reference: Path | None,
           champion: str | None = None) -> list[Any]:
    """One figure case per test patient: inputs, truth and the main, baseline, champion (the
    registry's best variant, when it is another) and reference predictions."""
    sources = {data.roles.main: eval_dirs[data.roles.main]}
    if data.roles.baseline:
        sources[data.roles.baseline] = eval_dirs[data.roles.baseline]
    if champion and champion in eval_dirs and champion not in sources:
        sources[f"{champion} (champion)"] = eval_dirs[champion]
    if reference is not None and (reference / LEARNABILITY / "cases.npz").is_file():
        sources[REFERENCE_LABELS[LEARNABILITY]] = reference / LEARNABILITY
    npz = {name: np.load(d / "cases.npz") for name, d in sources.items() if (d / "cases.npz").is_file()}
    if data.roles.main not in npz:
        return []
    first = npz[data.roles.main]
    pids = sorted({k.split("/")[0] for k in first.files})
    cases = []
    for pid in pids:
        preds = {name: f[f"{pid}/pred"] for name, f in npz.items() if f"{pid}/pred" in f.files}
        cases.append(figures.Case(label=f"{pid} z={int(first[f'{pid}/z'])}",
                                  inputs={"T1": first[f"{pid}/T1"], "T2": first[f"{pid}/T2"]},
                                  truth=first[f"{pid}/GT"], predictions=preds, tumour=first[f"{pid}/tumour"] > 0))
    return cases


def _psd(eval_dirs: Mapping[str, Path], data: StudyData) -> dict[str, pd.DataFrame]:
    out = {}
    for name in data.names:
        p = eval_dirs[name] / "psd.csv"
        if p.is_file() and data.kind(name) == "paper variant":
            out[name] = pd.read_csv(p)
    return out


def write_figures(tmp: Path, tables: Mapping[str, pd.DataFrame], data: StudyData, eval_dirs: Mapping[str, Path],
                  reference: Path | None, champion: str | None = None) -> list[Path]:
    """Every figure of the report; returns their paths in report order."""
    out = []
    if paper.OVERVIEW in tables:
        out.append(figures.plot_metrics_by_variant(tables[paper.OVERVIEW], tmp / figures.METRICS_BY_VARIANT_PNG))
    if paper.TABLE2 in tables:
        out.append(figures.plot_texture(tables[paper.TABLE2], tmp / figures.TEXTURE_PNG))
    order = [r for r in (ORACLE, LEARNABILITY) if r in data.patients] + data.names
    per_patient = {data.label(n): data.patients[n] for n in order}
    roles = {data.label(n): ("reference" if n in REFERENCE_LABELS else "main" if n == data.roles.main
                             else "baseline" if n == data.roles.baseline else "") for n in order}
    out.append(figures.plot_boxplots(per_patient, BOX_METRICS, tmp / "boxplots.png", roles=roles))
    cases = _cases(eval_dirs, data, reference, champion)
    if cases:
        out.append(figures.plot_case_montage(cases, tmp / "cases.png"))
        out.append(figures.plot_intensity_profile(max(cases, key=lambda c: int(c.tumour.sum())), tmp / "profile.png"))
    psd = _psd(eval_dirs, data)
    if psd:
        out.append(figures.plot_psd_ratio(psd, tmp / "psd_ratio.png"))
    return out


def _html(tmp: Path, tables: Mapping[str, pd.DataFrame], verdict_rows: list[dict[str, str]], figs: list[Path],
          doc: dict[str, Any], cfg: Config) -> None:
    from vce.reporting.html import Section, write_html

    def shown(name: str) -> pd.DataFrame:
        d = display_frame(tables[name])
        d.attrs.update(tables[name].attrs)
        return d

    prov = doc.get("provenance", {})
    items = {"profile": str(cfg.profile), "code version": f"{prov.get('code_version')} (git {prov.get('git_commit') or 'n/a'})",
             "data version (split_id)": str(prov.get("split_id")), "model grid": json.dumps(prov.get("grid")),
             "test patients": str(prov.get("test_patients")), "evaluate params": json.dumps(prov.get("evaluate")),
             "main / baseline": f"{doc.get('main')} / {doc.get('baseline')}"}
    paper_t = [n for n in ordered(tables) if n in (paper.TABLE1, paper.TABLE2)]
    proto = [n for n in ordered(tables) if n not in paper_t and not n.startswith("ablation_") and n != paper.OVERVIEW]
    abl = [n for n in ordered(tables) if n.startswith("ablation_")] + [n for n in (paper.OVERVIEW,) if n in tables]
    sections = [
        Section("Verdicts", text="The paper's claims at this study's scale (docs/metrics.md).", verdicts=verdict_rows),
        Section("The paper's tables", tables=[shown(n) for n in paper_t]),
        Section("Evaluation protocol", tables=[shown(n) for n in proto]),
        Section("Ablations", tables=[shown(n) for n in abl]),
        Section("Figures", figures=figs),
        Section("Provenance", items=items),
    ]
    write_html(tmp / "report.html", title=f"VCE study report ({cfg.profile})", sections=sections)


def write_all(tmp: Path, tables: Mapping[str, pd.DataFrame], doc: dict[str, Any], verdict_rows: list[dict[str, str]],
              data: StudyData, eval_dirs: Mapping[str, Path], reference: Path | None, cfg: Config,
              champion: str | None = None) -> None:
    """Every report file into ``tmp``; ``champion``: the registry's best variant (shown in the case figure)."""
    for name in ordered(tables):
        df = tables[name]
        df.to_csv(tmp / f"{name}.csv", index=True)
        (tmp / f"{name}.md").write_text(to_markdown(name, df, level=1), encoding="utf-8")
    (tmp / "summary.md").write_text(summary_markdown(tables, verdict_rows, doc), encoding="utf-8")
    write_json(tmp / "metrics.json", doc)
    figs = write_figures(tmp, tables, data, eval_dirs, reference, champion)
    _html(tmp, tables, verdict_rows, figs, doc, cfg)
