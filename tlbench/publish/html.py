"""The HTML every page shares: the document around a body (a Jinja2 template with the
provenance footer), escaping, links and tables. Page bodies are rendered by these helpers;
nothing is fetched from the network (one stylesheet and one script, files of the site and the
same ones ``tlbench report`` inlines, ``tlbench.report.html``)."""

from __future__ import annotations

import html
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass

from tlbench.publish.paths import ASSETS, relative, run_path
from tlbench.publish.runs import Run
from tlbench.report.html import SCRIPT, STYLESHEET, render

esc = html.escape
MISSING = "—"
PROVENANCE_RUNS = 8  # runs listed in a page footer; the front page lists them all


@dataclass(frozen=True)
class SiteInfo:
    """What every page says about how the site itself was built."""

    title: str
    built_at: str
    tlbench_version: str
    git_revision: str
    metric: str


def document(
    page: str,
    title: str,
    body: str,
    site: SiteInfo,
    runs: Iterable[Run],
    crumbs: Iterable[tuple[str, str | None]] = (),
    template: str = "site-page.html.j2",
    **blocks,
) -> str:
    """A complete page at ``page`` (its path from the site root): the site's page template
    (``tlbench/templates/html/site-page.html.j2``) linking the stylesheet and script it
    shares with ``tlbench report``, around ``body``; or ``template``, a page that extends it,
    given what it shows as ``blocks``."""
    trail = [link(page, "index.html", site.title)] + [
        link(page, target, text) if target else esc(text) for text, target in crumbs
    ]
    runs = list(runs)
    listed = runs[:PROVENANCE_RUNS]
    return render(
        template,
        title=title,
        site=site,
        stylesheet=relative(page, f"{ASSETS}/{STYLESHEET}"),
        script=relative(page, f"{ASSETS}/{SCRIPT}"),
        trail=" › ".join(trail),
        body=body,
        source=f"from {len(runs)} run{'s' if len(runs) != 1 else ''}:" if runs else "",
        runs=[run_line(page, run) for run in listed],
        more=len(runs) - len(listed),
        all_runs=link(page, "index.html#runs", "all runs"),
        **blocks,
    )


def link(page: str, target: str, text: str, title: str | None = None, raw: bool = False) -> str:
    tip = f' title="{esc(title)}"' if title else ""
    inner = text if raw else esc(text)
    return f'<a href="{esc(relative(page, target))}"{tip}>{inner}</a>'


def td(
    content: str, value: float | str | None = None, cls: str = "", title: str | None = None
) -> str:
    """A cell; ``value`` is what the sorting script compares (numbers, or text)."""
    attrs = ""
    if value is not None and not (isinstance(value, float) and math.isnan(value)):
        attrs += f' data-value="{esc(str(value))}"'
        numeric = isinstance(value, int | float) and not isinstance(value, bool)
        if numeric and "num" not in cls.split():
            cls = f"num {cls}".strip()
    if cls:
        attrs += f' class="{cls}"'
    if title:
        attrs += f' title="{esc(title)}"'
    return f"<td{attrs}>{content}</td>"


def table(
    headers: Iterable[str],
    rows: Iterable[Iterable[str]],
    cls: str = "",
    id_: str = "",
    raw_headers: bool = False,
) -> str:
    """``rows`` hold rendered ``<td>`` strings (see ``td``); plain strings are wrapped."""
    head = "".join(f"<th>{h if raw_headers else esc(h)}</th>" for h in headers)
    body = "\n".join(
        "<tr>" + "".join(c if c.startswith("<td") else f"<td>{c}</td>" for c in row) + "</tr>"
        for row in rows
    )
    attrs = (f' class="{cls}"' if cls else "") + (f' id="{id_}"' if id_ else "")
    return f"<table{attrs}>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>"


def fields_table(pairs: Iterable[tuple[str, object]], cls: str = "fields") -> str:
    rows = [[esc(str(key)), f'<td class="value">{esc(shown(value))}</td>'] for key, value in pairs]
    return table(["field", "value"], rows, cls) if rows else '<p class="note">None recorded.</p>'


def shown(value: object) -> str:
    """A recorded value as a reader wants it: ``0.0133``, ``12,810``, ``{"a": 1}``, ``—``."""
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    if isinstance(value, float):
        return MISSING if math.isnan(value) else f"{value:.4g}"
    if isinstance(value, str):
        return value
    return json.dumps(value, default=str)


def flatten(value: object, prefix: str = "") -> list[tuple[str, object]]:
    """``{"a": {"b": 1}}`` -> ``[("a.b", 1)]``; lists stay whole."""
    if isinstance(value, dict) and value:
        return [pair for k, v in value.items() for pair in flatten(v, f"{prefix}{k}.")]
    return [(prefix.rstrip("."), value)] if prefix else []


def when(stamp: object) -> str:
    """``2026-11-29T04:39:29+00:00`` -> ``2026-11-29 04:39 UTC`` (other text unchanged)."""
    text = str(stamp or MISSING)
    if len(text) >= 16 and text[10] == "T" and text.endswith(("+00:00", "Z")):
        return f"{text[:10]} {text[11:16]} UTC"
    return text


def note(text: str, cls: str = "note") -> str:
    return f'<p class="{cls}">{esc(text)}</p>'


def run_line(page: str, run: Run) -> str:
    plugins = ", ".join(f"{name} {version}" for name, version in plugin_summary(run)) or "unknown"
    return (
        f"{link(page, run_path(run.label), run.label)}: tlbench {esc(', '.join(run.tlbench_versions) or 'unknown')}, "
        f"git {esc(run.git_revision)}, plugins {esc(plugins)}"
    )


def plugin_summary(run: Run) -> list[tuple[str, str]]:
    """Third-party plugins by name; tlbench's own built-in plugins as one entry."""
    builtin = sorted({v for n, v in run.plugins if n.startswith("tlbench.builtin.")})
    others = [(n, v) for n, v in run.plugins if not n.startswith("tlbench.builtin.")]
    return others + ([("built-ins", "/".join(builtin))] if builtin else [])
