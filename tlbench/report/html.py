"""Self-contained HTML pages: inline CSS, a small inline script that sorts tables when a header
is clicked, and plots embedded as base64 PNG data URIs. Nothing is fetched from the network,
so the file can be mailed, archived or opened offline."""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Iterable, Mapping

import pandas as pd

from tlbench.report.tables import Table

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 72rem; padding: 0 1rem; color: #1b1f24; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.25rem; margin-top: 2.2rem; border-bottom: 1px solid #d0d7de; }
h3 { font-size: 1.05rem; margin-top: 1.6rem; }
table { border-collapse: collapse; margin: .6rem 0 1rem; font-variant-numeric: tabular-nums; }
th, td { padding: .3rem .7rem; border-bottom: 1px solid #e5e8eb; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #f3f5f7; }
table.sortable thead th { cursor: pointer; user-select: none; }
table.sortable thead th[aria-sort="ascending"]::after { content: " ▲"; }
table.sortable thead th[aria-sort="descending"]::after { content: " ▼"; }
td.regression { background: #fde7e9; } td.improvement { background: #e6f6ea; }
.note { color: #57606a; font-size: .9rem; margin: .2rem 0; }
figure { margin: 1rem 0; } figure img { max-width: 100%; border: 1px solid #e5e8eb; }
pre { background: #f6f8fa; padding: .8rem; overflow-x: auto; }
"""

# Numbers sort numerically ("81.3 ± 0.4" by 81.3, "12,810" by 12810); cells without a number
# ("failed", "—") always sort after the numbers, whichever the direction.
SCRIPT = """
(function () {
  function number(cell) {
    var value = parseFloat(cell.textContent.replace(/,/g, "").trim());
    return isNaN(value) ? null : value;
  }
  function compare(a, b, direction) {
    var x = number(a), y = number(b);
    if (x !== null && y !== null) return direction * (x - y);
    if (x !== null) return -1;
    if (y !== null) return 1;
    return direction * a.textContent.trim().localeCompare(b.textContent.trim());
  }
  function sortBy(table, header, column) {
    var ascending = header.getAttribute("aria-sort") !== "ascending";
    table.querySelectorAll("thead th").forEach(function (th) { th.removeAttribute("aria-sort"); });
    header.setAttribute("aria-sort", ascending ? "ascending" : "descending");
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (r, s) { return compare(r.cells[column], s.cells[column], ascending ? 1 : -1); });
    rows.forEach(function (row) { body.appendChild(row); });
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    table.querySelectorAll("thead th").forEach(function (header, column) {
      header.title = "click to sort";
      header.addEventListener("click", function () { sortBy(table, header, column); });
    });
  });
})();
"""

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{css}</style>
</head>
<body>
<h1>{title}</h1>
{body}
<script>{script}</script>
</body>
</html>
"""


def page(title: str, sections: Iterable[str]) -> str:
    """A complete HTML document around already-rendered sections."""
    return PAGE.format(title=html.escape(title), css=CSS, body="\n".join(sections), script=SCRIPT)


def table_section(table: Table, level: int = 3) -> str:
    note = f'<p class="note">{html.escape(table.note)}</p>' if table.note else ""
    return f"<h{level}>{html.escape(table.title)}</h{level}>\n{note}\n{table.to_html()}"


def figure_section(name: str, png: bytes, caption: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    alt = html.escape(caption)
    return f'<figure id="plot-{html.escape(name)}"><img src="data:image/png;base64,{data}" alt="{alt}"><figcaption class="note">{alt}</figcaption></figure>'


def environment_section(run_dir: str, env: Mapping) -> str:
    """The environment that produced one run, and its suite file as it was."""
    heading = f"<h3>{html.escape(str(run_dir))}</h3>"
    if not env:
        return heading + '<p class="note">No env.json in this run directory.</p>'
    rows = [
        (key, value) for key, value in _flatten(env) if not key.startswith(("suite", "resumes."))
    ]
    resumes = env.get("resumes") or []
    if resumes:
        rows.append(
            ("resumed", f"{len(resumes)} time(s); the first session's environment is shown")
        )
    frame = pd.DataFrame(rows, columns=["field", "value"])
    suite = env.get("suite")
    suite_html = ""
    if suite:
        text = suite if isinstance(suite, str) else json.dumps(suite, indent=2)
        source = html.escape(str(env.get("suite_path") or "suite"))
        suite_html = (
            f'<p class="note">Suite ({source}):</p><pre class="suite">{html.escape(text)}</pre>'
        )
    return heading + frame.to_html(index=False, border=0, classes="environment") + suite_html


def _flatten(value, prefix: str = "") -> list[tuple[str, str]]:
    if isinstance(value, Mapping) and value:
        return [row for key, item in value.items() for row in _flatten(item, f"{prefix}{key}.")]
    if isinstance(value, list) and value and all(isinstance(item, str) for item in value):
        return [(prefix.rstrip("."), " ".join(value))]
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return [(prefix.rstrip("."), text)]
