"""Self-contained HTML pages: the page skeleton is a Jinja2 template
(``tlbench/templates/html/report.html.j2``) with tlbench's one stylesheet and one script inlined
(the same files a published site links, ``tlbench.publish``): tables sort when a header is
clicked, and plots are embedded as base64 PNG data URIs. Nothing is fetched from the network,
so the file can be mailed, archived or opened offline."""

from __future__ import annotations

import base64
import functools
import html
import json
from collections.abc import Iterable, Mapping
from importlib import resources

import pandas as pd

from tlbench.report.tables import Table

TEMPLATES = "templates/html"  # package data of tlbench: page skeletons, stylesheet, script
STYLESHEET = "tlbench.css"  # one stylesheet for the report and every page of a published site
SCRIPT = "tlbench.js"  # one script for both: sortable tables, the site's model filter


@functools.cache
def templates():
    """The Jinja2 environment of tlbench's HTML templates. Values are escaped unless the
    template marks them ``safe``: HTML a helper already rendered and escaped."""
    import jinja2
    from jinja2.filters import do_mark_safe

    def escaped(value):
        # Text is escaped as ``html.escape`` escapes it, as the pages always were (``&quot;``,
        # ``&#x27;``); HTML marked safe passes, anything else gets Jinja2's own escaping.
        return do_mark_safe(html.escape(value)) if type(value) is str else value

    return jinja2.Environment(
        loader=jinja2.PackageLoader("tlbench", TEMPLATES),
        autoescape=True,
        finalize=escaped,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )


def render(template: str, **context) -> str:
    """The template ``template`` of ``tlbench/templates/html`` rendered with ``context``."""
    return templates().get_template(template).render(**context)


@functools.cache
def asset(name: str) -> str:
    """The text of a shared asset (``STYLESHEET``, ``SCRIPT``)."""
    return (resources.files("tlbench") / TEMPLATES / name).read_text(encoding="utf-8")


def page(title: str, sections: Iterable[str]) -> str:
    """A complete HTML document around already-rendered sections, the stylesheet and the
    script inlined (``report.html.j2``)."""
    return render(
        "report.html.j2",
        title=title,
        stylesheet=asset(STYLESHEET),
        body="\n".join(sections),
        script=asset(SCRIPT),
    )


def table_section(table: Table, level: int = 3) -> str:
    return str(_sections().table(table.title, table.note, table.to_html(), level))


def figure_section(name: str, png: bytes, caption: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return str(_sections().figure(name, data, caption))


def environment_section(run_dir: str, env: Mapping) -> str:
    """The environment that produced one run, and its suite file as it was."""
    if not env:
        return str(_sections().environment(str(run_dir), None, "", ""))
    rows = [
        (key, value) for key, value in _flatten(env) if not key.startswith(("suite", "resumes."))
    ]
    resumes = env.get("resumes") or []
    if resumes:
        rows.append(
            ("resumed", f"{len(resumes)} time(s); the first session's environment is shown")
        )
    frame = pd.DataFrame(rows, columns=["field", "value"])
    fields = frame.to_html(index=False, border=0, classes="environment")
    suite = env.get("suite")
    text = "" if not suite else suite if isinstance(suite, str) else json.dumps(suite, indent=2)
    source = str(env.get("suite_path") or "suite")
    return str(_sections().environment(str(run_dir), fields, text, source))


def _sections():
    """The macros of ``report-sections.html.j2``: one per kind of section."""
    return templates().get_template("report-sections.html.j2").module


def _flatten(value, prefix: str = "") -> list[tuple[str, str]]:
    if isinstance(value, Mapping) and value:
        return [row for key, item in value.items() for row in _flatten(item, f"{prefix}{key}.")]
    if isinstance(value, list) and value and all(isinstance(item, str) for item in value):
        return [(prefix.rstrip("."), " ".join(value))]
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return [(prefix.rstrip("."), text)]
