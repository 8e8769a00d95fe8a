"""A self-contained HTML report: sections of text, tables, figures, key/value items and verdicts.

:func:`write_html` writes one file that needs nothing else: figures are embedded as base64 data
URIs, the CSS is inline, there is no JavaScript and no external link. Every piece of text (titles,
paragraphs, table cells, items, verdicts) is HTML-escaped. The file is written atomically
(:func:`vce.io.atomic.atomic_file`): a failure leaves any previous report in place.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from vce.io.atomic import atomic_file

VERDICT_STATUSES = ("reproduced", "not reproduced", "inconclusive")
_STATUS_CLASS = {"reproduced": "ok", "not reproduced": "bad", "inconclusive": "unsure"}
_IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif", ".webp": "image/webp"}

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 75em;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #444; padding-bottom: .2em; }
h2 { border-bottom: 1px solid #bbb; padding-bottom: .15em; margin-top: 2em; }
h3 { margin-bottom: .2em; }
p.desc { color: #555; margin-top: 0; }
.table-wrap { max-height: 70vh; overflow: auto; margin: .5em 0 1.5em; border: 1px solid #ddd; }
table { border-collapse: collapse; font-size: .9em; }
th, td { padding: .3em .7em; border-bottom: 1px solid #e4e4e4; text-align: right; vertical-align: top; }
td { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; font-variant-numeric: tabular-nums; }
thead th { position: sticky; top: 0; background: #f0f0f0; z-index: 1; }
tbody th { text-align: left; background: #fafafa; }
tbody tr:nth-child(even) td { background: #fbfbfb; }
table.verdicts td { font-family: inherit; text-align: left; }
td.status { font-weight: 600; white-space: nowrap; }
td.ok { background: #d9f2d9 !important; color: #1b5e20; }
td.bad { background: #fbdada !important; color: #8e1b1b; }
td.unsure { background: #fff1c9 !important; color: #7a5a00; }
td.other { background: #eee !important; }
dl.items { display: grid; grid-template-columns: max-content auto; gap: .2em 1em; }
dl.items dt { font-weight: 600; }
dl.items dd { margin: 0; font-family: ui-monospace, Menlo, Consolas, monospace; word-break: break-all; }
figure { margin: 1em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #ddd; }
figcaption { color: #555; font-size: .9em; }
"""


@dataclass
class Section:
    """One part of the report, rendered in this order: ``text`` (plain text; blank lines separate
    paragraphs), ``items`` (a definition list: parameters, data and code versions), ``verdicts``
    (mappings with ``claim``, ``status`` in :data:`VERDICT_STATUSES`, ``evidence``), ``tables``
    (headed by their ``attrs["title"]`` / ``attrs["description"]``) and ``figures`` (image files,
    embedded)."""

    title: str
    text: str = ""
    tables: Sequence[pd.DataFrame] = ()
    figures: Sequence[Path] = ()
    items: Mapping[str, str] = field(default_factory=dict)
    verdicts: Sequence[Mapping[str, str]] = ()


def _esc(x: object) -> str:
    return html.escape(str(x), quote=True)


def _paragraphs(text: str) -> str:
    """Plain text as escaped ``<p>`` paragraphs (blank lines separate them)."""
    blocks = [b.strip() for b in str(text).replace("\r\n", "\n").split("\n\n")]
    return "\n".join(f"<p>{_esc(b)}</p>" for b in blocks if b)


def _table(df: pd.DataFrame) -> str:
    """A frame as an escaped HTML table with its title and description; a plain RangeIndex is left out."""
    parts = []
    if df.attrs.get("title"):
        parts.append(f"<h3>{_esc(df.attrs['title'])}</h3>")
    if df.attrs.get("description"):
        parts.append(f'<p class="desc">{_esc(df.attrs["description"])}</p>')
    show_index = not (isinstance(df.index, pd.RangeIndex) and df.index.name is None)
    body = df.to_html(escape=True, index=show_index, na_rep="n/a", border=0, classes="data",
                      float_format=lambda x: f"{x:.4g}")
    parts.append(f'<div class="table-wrap">{body}</div>')
    return "\n".join(parts)


def _figure(path: str | Path) -> str:
    """An image file embedded as a base64 data URI, captioned with its file name."""
    path = Path(path)
    mime = _IMAGE_TYPES.get(path.suffix.lower())
    if mime is None:
        raise ValueError(f"write_html: figure {path} is not a PNG/JPEG/GIF/WebP image")
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure><img src="data:{mime};base64,{data}" alt="{_esc(path.stem)}">'
            f"<figcaption>{_esc(path.name)}</figcaption></figure>")


def _items(items: Mapping[str, str]) -> str:
    rows = "".join(f"<dt>{_esc(k)}</dt><dd>{_esc(v)}</dd>" for k, v in items.items())
    return f'<dl class="items">{rows}</dl>'


def _verdicts(verdicts: Sequence[Mapping[str, str]]) -> str:
    """Claims with a coloured status cell (green reproduced, red not reproduced, amber inconclusive)."""
    rows = []
    for v in verdicts:
        status = str(v.get("status", "")).strip().lower()
        css = _STATUS_CLASS.get(status, "other")
        rows.append(f"<tr><td>{_esc(v.get('claim', ''))}</td><td class=\"status {css}\">{_esc(status or 'n/a')}</td>"
                    f"<td>{_esc(v.get('evidence', ''))}</td></tr>")
    head = "<thead><tr><th>Claim</th><th>Status</th><th>Evidence</th></tr></thead>"
    return f'<div class="table-wrap"><table class="verdicts">{head}<tbody>{"".join(rows)}</tbody></table></div>'


def _section(s: Section) -> str:
    parts = [f"<section>\n<h2>{_esc(s.title)}</h2>"]
    if s.text:
        parts.append(_paragraphs(s.text))
    if s.items:
        parts.append(_items(s.items))
    if s.verdicts:
        parts.append(_verdicts(s.verdicts))
    parts += [_table(df) for df in s.tables]
    parts += [_figure(p) for p in s.figures]
    parts.append("</section>")
    return "\n".join(parts)


def render_html(*, title: str, sections: Sequence[Section]) -> str:
    """The whole document as a string (see :func:`write_html`)."""
    body = "\n".join(_section(s) for s in sections)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{_esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<h1>{_esc(title)}</h1>\n"
            f"{body}\n</body>\n</html>\n")


def write_html(path: str | Path, *, title: str, sections: Sequence[Section]) -> Path:
    """Write the self-contained report ``path`` (figures embedded, inline CSS, no JavaScript, no
    external links) atomically: a temporary file in the same directory, then ``os.replace``; on any
    error the previous file (if any) stays as it was. Returns ``path``."""
    path = Path(path)
    with atomic_file(path, suffix=".html") as tmp:
        tmp.write_text(render_html(title=title, sections=sections), encoding="utf-8")
    return path
