"""The pieces both reports are built from: one self-contained page (inline CSS and PNG
figures, no scripts, no external links), tables, numbers and coloured diffs.

Everything a trial wrote (descriptions, diffs, mechanism names) is hostile text: each
cell and line goes through `html.escape` here, and Markdown cells lose their newlines
and pipes, so no trial can add markup, a row or a column.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from controller.analysis.stats import Interval

CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;
text-align:right;vertical-align:top}th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}td.text{text-align:left;max-width:420px;
overflow-wrap:anywhere}
.note{background:#fff6d6;border-left:4px solid #e0a800;padding:8px 12px}
.warn{background:#fdecea;border-left:4px solid #c0392b;padding:8px 12px}
.same{background:#eef3fb;border-left:4px solid #1f5fbf;padding:8px 12px}
pre{background:#f7f7f7;padding:10px;overflow-x:auto;font-size:12px}img{max-width:100%}
pre.diff span{display:block;white-space:pre}.add{background:#e6ffec;color:#116329}
.del{background:#ffebe9;color:#82071e}.hunk{color:#0550ae;background:#ddf4ff}
.file{font-weight:bold}tr.keep td:nth-child(4){color:#116329;font-weight:bold}
tr.crash td:nth-child(4){color:#c0392b;font-weight:bold}.better{color:#116329}
.worse{color:#82071e}tr.baseline{background:#eef3fb}details{margin:4px 0}
#facts thead,#definition thead{display:none}#facts td,#definition td,#mechanisms td{
text-align:left}"""

MAX_CELL_CHARS = 400  # a description longer than this is cut in the table


@dataclass(frozen=True)
class Report:
    html: str
    markdown: str


def num(value: float | None, fmt: str = ".6f") -> str:
    return "–" if value is None or not math.isfinite(value) else format(value, fmt)


def ci(interval: Interval | None, fmt: str = "+.2e", negate: bool = False) -> str:
    """`estimate [low, high]`; `negate` flips the sign (an improvement shown as a Δ)."""
    if interval is None or interval.n == 0 or not math.isfinite(interval.estimate):
        return "–"
    sign = -1.0 if negate else 1.0
    estimate = sign * interval.estimate
    if not math.isfinite(interval.low):
        return f"{estimate:{fmt}} (n={interval.n}, no CI)"
    low, high = sorted((sign * interval.low, sign * interval.high))
    return f"{estimate:{fmt}} [{low:{fmt}}, {high:{fmt}}]"


def short(text: str, limit: int = MAX_CELL_CHARS) -> str:
    return text if len(text) <= limit else text[:limit] + f"… ({len(text) - limit} more)"


def table_html(headers: Sequence[str], rows: Sequence[Sequence[str]], id_: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                   for row in rows)
    ident = f' id="{id_}"' if id_ else ""
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def md_cell(text: str) -> str:
    """One line, with Markdown's backslash escapes where the text could start markup a
    viewer acts on: `<` (inline HTML: most viewers render it), `&` (an entity), `|` (a
    cell's end) and `\\` itself. Unlike HTML entities, these read as the text itself in
    a terminal (`->`, not `-&gt;`)."""
    line = " ".join(text.split())
    for ch in "\\<&|":
        line = line.replace(ch, "\\" + ch)
    return line


def table_md(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def fence(text: str, lang: str = "diff") -> str:
    """A Markdown code block whose fence is longer than any backtick run in `text`, so
    the text cannot close it."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    ticks = "`" * max(3, longest + 1)
    return f"{ticks}{lang}\n{text}\n{ticks}"


def page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            f"</title><style>{CSS}</style></head><body>{body}</body></html>\n")


def img(data: str, alt: str, id_: str) -> str:
    return f'<img id="{id_}" alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _line_class(line: str) -> str:
    if line.startswith(("+++", "---")):
        return "file"
    if line.startswith("@@"):
        return "hunk"
    if line.startswith("+"):
        return "add"
    if line.startswith("-"):
        return "del"
    return "ctx"


def diff_html(diff: str, id_: str) -> str:
    """A unified diff as a <pre> whose lines are coloured spans (added green, removed
    red, hunk headers blue), every line escaped."""
    lines = "".join(f'<span class="{_line_class(line)}">{html.escape(line) or " "}</span>'
                    for line in diff.splitlines())
    return f'<pre class="diff" id="{id_}">{lines}</pre>'
