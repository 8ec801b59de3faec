"""A self-contained HTML report: inline CSS, figures embedded as base64 PNG, no network requests.

A report is a list of :class:`Section`, each a heading and blocks: paragraphs (str), tables
(:class:`Table`) and figures (:class:`Figure`).
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field

from onnxredund import __version__

__all__ = ["Figure", "Section", "Table", "render_html"]

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#1d2430;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:1px solid #d5dae1;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;margin:.8em 0;font-size:.92em}th,td{border:1px solid #d5dae1;padding:.3em .6em;
text-align:right}th{background:#f1f4f8}td:first-child,th:first-child{text-align:left}
figure{margin:1em 0}figure img{max-width:100%;height:auto;border:1px solid #eef0f3}
figcaption{font-size:.88em;color:#4a5568}.pass{color:#116b2f;font-weight:600}.fail{color:#b3261e;font-weight:600}
.meta{color:#4a5568;font-size:.9em}
"""


@dataclass(frozen=True)
class Figure:
    png: bytes
    caption: str


@dataclass(frozen=True)
class Table:
    header: list[str]
    rows: list[list]
    caption: str = ""


@dataclass
class Section:
    heading: str
    blocks: list = field(default_factory=list)


def _cell(value) -> str:
    if isinstance(value, bool):
        return f'<span class="{"pass" if value else "fail"}">{"PASS" if value else "FAIL"}</span>'
    if isinstance(value, float):
        return f"{value:.4f}"
    return html.escape("" if value is None else str(value))


def _block(block) -> str:
    if isinstance(block, Figure):
        data = base64.b64encode(block.png).decode()
        cap = html.escape(block.caption)
        return f'<figure><img alt="{cap}" src="data:image/png;base64,{data}"><figcaption>{cap}</figcaption></figure>'
    if isinstance(block, Table):
        head = "".join(f"<th>{html.escape(str(h))}</th>" for h in block.header)
        body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>" for row in block.rows)
        cap = f"<caption>{html.escape(block.caption)}</caption>" if block.caption else ""
        return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    return f"<p>{html.escape(str(block))}</p>"


def render_html(title: str, meta: str, sections: list[Section]) -> str:
    """The whole page as one string."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="meta">{html.escape(meta)} · onnxredund {__version__}</p>',
    ]
    for s in sections:
        parts.append(f"<h2>{html.escape(s.heading)}</h2>")
        parts.extend(_block(b) for b in s.blocks)
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
