"""The tables as text: "mean ± sd" cells, Markdown with the paper's values, console text, the report files.

Each numeric ``"<group> mean"`` / ``"<group> sd"`` column pair of a table becomes one
``"mean ± sd"`` column; ``DataFrame.attrs`` gives the heading (``title``) and the line below
it (``description``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vce.io.atomic import atomic_dir
from vce.reporting import paper


def _decimals(mean: float) -> int:
    """Decimals that show four significant digits of ``mean`` (4 for 0 or non-finite, at most 8)."""
    if not math.isfinite(mean) or mean == 0:
        return 4
    return int(min(8, max(0, 3 - math.floor(math.log10(abs(mean))))))


def format_mean_sd(mean: float, sd: float) -> str:
    """``"8.564 ± 0.451"``: four significant digits of the mean, the sd to the same decimals."""
    if not math.isfinite(mean):
        return "n/a"
    d = _decimals(mean)
    if not math.isfinite(sd):
        return f"{mean:.{d}f} ± n/a"
    return f"{mean:.{d}f} ± {sd:.{d}f}"


def _format_cell(col: str, x: Any) -> str:
    """Text of one plain cell of column ``col``: counts as integers, p-values to 3 decimals, "n/a" for NaN."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if col == "n" or col.startswith("n_"):
        return str(int(x))
    if col.startswith("p_"):
        return "<0.001" if x < 0.001 else f"{x:.3f}"
    if isinstance(x, (float, np.floating)):
        return f"{x:.4g}"
    return str(x)


def display_frame(df: pd.DataFrame) -> pd.DataFrame:
    """String version of a table: each ``X mean``/``X sd`` pair becomes one ``X`` column."""
    cols = list(df.columns)
    out: dict[str, list[str]] = {}
    for c in cols:
        if c.endswith(" sd") and f"{c[:-3]} mean" in cols:
            continue
        if c.endswith(" mean") and f"{c[:-5]} sd" in cols:
            g = c[:-5]
            out[g] = [format_mean_sd(m, s) for m, s in zip(df[c], df[f"{g} sd"])]
        else:
            out[c] = [_format_cell(c, x) for x in df[c]]
    res = pd.DataFrame(out, index=[str(i) for i in df.index])
    res.index.name = df.index.name
    return res


def _md_escape(s: Any) -> str:
    """``s`` as text safe inside a Markdown table cell."""
    return str(s).replace("|", "\\|").replace("\n", " ")


def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub-flavoured markdown table of a frame of strings (index as first column)."""
    header = [df.index.name or ""] + [str(c) for c in df.columns]
    lines = ["| " + " | ".join(_md_escape(h) for h in header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    for idx, row in df.iterrows():
        lines.append("| " + " | ".join(_md_escape(x) for x in [idx, *row.tolist()]) + " |")
    return "\n".join(lines) + "\n"


def reference_frame(name: str, df: pd.DataFrame) -> pd.DataFrame | None:
    """The paper's values for the rows/columns of table ``name`` (None when it has none)."""
    ref, _ = paper.reference(name)
    if not ref:
        return None
    disp = display_frame(df)
    groups = [c for c in disp.columns if any(c in r for r in ref.values())]
    rows = [str(i) for i in disp.index if str(i) in ref]
    if not groups or not rows:
        return None
    out = pd.DataFrame({g: [ref[r].get(g, "–") for r in rows] for g in groups}, index=rows)
    out.index.name = df.index.name
    return out


def to_markdown(name: str, df: pd.DataFrame, level: int = 2, reference: bool = True) -> str:
    """Heading, one-line explanation, the table, and the paper's values below it."""
    title = df.attrs.get("title", name)
    parts = [f"{'#' * level} {title}\n"]
    if df.attrs.get("description"):
        parts.append(f"{df.attrs['description']}\n")
    parts.append(markdown_table(display_frame(df)))
    if reference:
        ref = reference_frame(name, df)
        if ref is not None:
            note = paper.reference(name)[1]
            parts.append(f"Paper (Cheng et al. 2024) for comparison. {note}\n".rstrip() + "\n")
            parts.append(markdown_table(ref))
    return "\n".join(parts)


def _ordered(tables: Mapping[str, pd.DataFrame]) -> list[str]:
    """Names of ``tables`` in report order (:func:`~vce.reporting.paper.table_order`, then any others)."""
    order = paper.table_order()
    return [n for n in order if n in tables] + [n for n in tables if n not in order]


def summary_markdown(tables: Mapping[str, pd.DataFrame]) -> str:
    """The report's ``summary.md``: an introduction, then every table with the paper's values."""
    parts = [
        "# VCE study: comparison report\n",
        "All values are mean ± sd (sample sd) over test patients, each patient being the mean over "
        "its test slices. MAE/MSE are in 12-bit scanner units; texture indices follow eq. 7-10 of "
        "the paper (docs/metrics.md). Tables left out had no evaluated variants.\n",
    ]
    for name in _ordered(tables):
        parts.append(to_markdown(name, tables[name], level=2))
    return "\n".join(parts)


def format_console(tables: Mapping[str, pd.DataFrame]) -> str:
    """All tables as plain text (for printing at the end of the study)."""
    parts = []
    for name in _ordered(tables):
        df = tables[name]
        title = df.attrs.get("title", name)
        parts.append(f"{title}\n{'=' * len(title)}\n{display_frame(df).to_string()}\n")
    return "\n".join(parts)


def write_report(tables: Mapping[str, pd.DataFrame], out_dir: str | Path) -> Path:
    """Write ``<name>.csv``/``<name>.md`` per table, ``summary.md`` and the figures, atomically; returns ``out_dir``.

    ``out_dir`` is complete or absent: everything is written into a temporary sibling that
    replaces ``out_dir`` only when all files were written.
    """
    from vce.reporting import figures  # late import: keeps matplotlib off the table-only path

    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        for name in _ordered(tables):
            df = tables[name]
            df.to_csv(tmp / f"{name}.csv", index=True)
            (tmp / f"{name}.md").write_text(to_markdown(name, df, level=1), encoding="utf-8")
        (tmp / "summary.md").write_text(summary_markdown(tables), encoding="utf-8")
        if paper.OVERVIEW in tables:
            figures.plot_metrics_by_variant(tables[paper.OVERVIEW], tmp / figures.METRICS_BY_VARIANT_PNG)
        if paper.TABLE2 in tables:
            figures.plot_texture(tables[paper.TABLE2], tmp / figures.TEXTURE_PNG)
    return out_dir
