"""A whole report in one output format: Markdown, self-contained HTML, LaTeX, CSV or JSON.

Markdown, LaTeX and HTML show the tables of ``tables.build_tables``; CSV and JSON carry the
numbers behind them (one row per model, dataset and strategy) for further analysis.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from tlbench.errors import UserError
from tlbench.report import html as html_page
from tlbench.report.tables import (
    average_ranks,
    build_tables,
    failures,
    latex_escape,
    summarize,
    with_comparisons,
)
from tlbench.safeio import csv_frame

FORMATS = {"md": ".md", "html": ".html", "latex": ".tex", "csv": ".csv", "json": ".json"}
if TYPE_CHECKING:  # pragma: no cover
    from tlbench.report.plots import Plot

Envs = Mapping[str, Mapping]  # run directory -> its env.json


def format_from_path(path: str | Path) -> str:
    """The format a file name asks for by its extension (``report.tex`` -> ``latex``)."""
    suffix = Path(path).suffix.lower()
    for fmt, extension in FORMATS.items():
        if suffix in (extension, f".{fmt}", ".htm" if fmt == "html" else extension):
            return fmt
    raise UserError(
        f"{path}: cannot tell the format from the extension; pass --format ({'|'.join(FORMATS)})"
    )


def render_report(
    records: pd.DataFrame,
    fmt: str = "md",
    *,
    envs: Envs | None = None,
    metric: str = "top1",
    plots: list[Plot] | None = None,
    estimates: dict[str, pd.DataFrame] | None = None,
) -> str:
    """The report as text in ``fmt`` (one of ``FORMATS``). An HTML page embeds ``plots``
    (drawn here when not given). ``estimates`` (transferability tables) adds that section to
    Markdown and HTML reports."""
    renderers = {"md": _markdown, "latex": _latex, "csv": _csv, "json": _json}
    if fmt == "html":
        return _html(records, envs or {}, metric, plots, estimates)
    if fmt not in renderers:
        raise UserError(f"unknown report format {fmt!r}; expected one of {', '.join(FORMATS)}")
    text = renderers[fmt](records, envs or {}, metric)
    if fmt == "md" and estimates is not None:
        from tlbench.report.transferability import transferability_markdown

        text = text.rstrip("\n") + "\n\n" + transferability_markdown(estimates) + "\n"
    return text


def overview(records: pd.DataFrame) -> dict:
    """Which suite and runs the records come from, and how many cells finished how."""
    runs = records.groupby("run_dir", sort=False)["run_id"].agg(
        lambda ids: ", ".join(dict.fromkeys(map(str, ids)))
    )
    return {
        "suite": ", ".join(map(str, records["suite"].unique())),
        "runs": [{"run_dir": run_dir, "run_id": run_ids} for run_dir, run_ids in runs.items()],
        "cells": len(records),
        "statuses": {str(k): int(v) for k, v in records["status"].value_counts().items()},
    }


def _summary_line(info: dict) -> str:
    statuses = ", ".join(f"{count} {status}" for status, count in info["statuses"].items())
    return f"{info['cells']} cells: {statuses}."


def report_tables(records: pd.DataFrame, metric: str) -> list:
    """The report's tables: ``build_tables``' and, for layer-transfer cells, their curve table."""
    from tlbench.report.layers import layer_table

    layers = layer_table(records, metric)
    return build_tables(records, metric) + ([layers] if layers is not None else [])


def _markdown(records: pd.DataFrame, envs: Envs, metric: str) -> str:
    info = overview(records)
    runs = ", ".join(f"`{run['run_dir']}` ({run['run_id']})" for run in info["runs"])
    parts = [f"# tlbench report: {info['suite']}", f"Runs: {runs}. {_summary_line(info)}"]
    for table in report_tables(records, metric):
        parts += [f"## {table.title}", f"_{table.note}_" if table.note else "", table.to_markdown()]
    return "\n\n".join(part for part in parts if part) + "\n"


def _latex(records: pd.DataFrame, envs: Envs, metric: str) -> str:
    info = overview(records)
    runs = ", ".join(latex_escape(f"{run['run_dir']} ({run['run_id']})") for run in info["runs"])
    parts = [
        r"\documentclass{article}",
        r"\usepackage[margin=2cm]{geometry}",
        r"\usepackage{booktabs}",
        r"\begin{document}",
        rf"\section*{{tlbench report: {latex_escape(info['suite'])}}}",
        f"Runs: {runs}. {latex_escape(_summary_line(info))}",
    ]
    for table in report_tables(records, metric):
        parts += [table.to_latex(), latex_escape(table.note)]
    parts.append(r"\end{document}")
    return "\n\n".join(parts) + "\n"


def _html(
    records: pd.DataFrame, envs: Envs, metric: str, plots: list[Plot] | None, estimates=None
) -> str:
    if plots is None:
        from tlbench.report.plots import render_plots  # matplotlib only when a page needs it

        plots = render_plots(records, metric)
    info = overview(records)
    runs = ", ".join(f"{run['run_dir']} ({run['run_id']})" for run in info["runs"])
    sections = [
        f'<p class="note">Runs: {html_page.html.escape(runs)}. {_summary_line(info)}</p>',
        "<h2>Tables</h2>",
    ]
    sections += [html_page.table_section(table) for table in report_tables(records, metric)]
    sections.append("<h2>Plots</h2>")
    sections += [html_page.figure_section(plot.name, plot.png, plot.caption) for plot in plots]
    if estimates is not None:
        from tlbench.report.transferability import transferability_html

        sections.append(transferability_html(estimates))
    sections.append("<h2>Environment and suite</h2>")
    for run_dir in dict.fromkeys(records["run_dir"]):
        sections.append(html_page.environment_section(run_dir, envs.get(run_dir, {})))
    return html_page.page(f"tlbench report: {info['suite']}", sections)


def _csv(records: pd.DataFrame, envs: Envs, metric: str) -> str:
    return csv_frame(_numbers(records, metric)).to_csv(index=False)


def _json(records: pd.DataFrame, envs: Envs, metric: str) -> str:
    summary = summarize(records, metric)
    document = {
        **overview(records),
        "metric": metric,
        "summary": _records(_numbers(records, metric)),
        "average_rank": {
            of: _records(average_ranks(summary, of).reset_index()) for of in ("strategy", "model")
        },
        "failures": _records(failures(records)),
        "environments": {
            run_dir: envs.get(run_dir, {}) for run_dir in dict.fromkeys(records["run_dir"])
        },
    }
    return json.dumps(document, indent=2, default=str) + "\n"


def _numbers(records: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The summary with the gains over training from scratch and over the best trivial
    baseline, each with its interval and the reference it was measured against."""
    summary = with_comparisons(summarize(records, metric), records, metric)
    summary["problems"] = summary["problems"].map(
        lambda p: ", ".join(f"{n} {s}" for s, n in p.items())
    )
    return summary


def _records(frame: pd.DataFrame) -> list[dict]:
    # pandas' own JSON writer turns NaN into null, which json.dumps would not.
    return json.loads(frame.to_json(orient="records"))
