"""The front page (suites, runs, what was left out; ``index.html.j2``) and a page per run (its
environment; ``run.html.j2``)."""

from __future__ import annotations

from collections import Counter

from tlbench.publish.html import (
    SiteInfo,
    document,
    esc,
    fields_table,
    flatten,
    link,
    note,
    table,
    td,
    when,
)
from tlbench.publish.paths import cell_path, run_path, suite_index_path
from tlbench.publish.runs import Run
from tlbench.publish.variants import SuiteView

ENV_HIDDEN = ("suite", "resumes", "plugins", "packages")


def index_page(
    views: list[SuiteView],
    runs: list[Run],
    notes: list[str],
    site: SiteInfo,
    page: str = "index.html",
) -> str:
    return document(
        page,
        site.title,
        "",
        site,
        runs,
        template="index.html.j2",
        intro=(
            f"Leaderboards of {len(views)} suite{'s' if len(views) != 1 else ''} built from "
            f"{len(runs)} run{'s' if len(runs) != 1 else ''}. Every number links to its cell: "
            "configuration, chosen hyperparameters, cost, environment and the test images it got wrong."
        ),
        suites=_suites_table(views, page),
        runs_table=_runs_table(runs, views, page),
        notes=notes,
    )


def _suites_table(views: list[SuiteView], page: str) -> str:
    rows = []
    for view in views:
        entries = [e for g in view.groups for e in g.entries]
        finished = max((str(e.record.get("finished_at", "")) for e in entries), default="")
        rows.append(
            [
                td(link(page, suite_index_path(view.name), view.name), view.name),
                esc(view.description),
                td(str(len({m.key for m in view.models})), len(view.models)),
                td(str(len(view.datasets)), len(view.datasets)),
                td(str(len(view.strategies)), len(view.strategies)),
                td(str(len(entries)), len(entries)),
                td(str(len(view.runs)), len(view.runs)),
                esc(when(finished) if finished else "—"),
            ]
        )
    headers = [
        "suite",
        "description",
        "models",
        "datasets",
        "strategies",
        "cells",
        "runs",
        "latest result",
    ]
    return table(headers, rows, "sortable")


def _runs_table(runs: list[Run], views: list[SuiteView], page: str) -> str:
    winners = Counter(e.run.label for v in views for g in v.groups for e in g.entries)
    rows = []
    for run in runs:
        stamps = sorted(str(r.get("finished_at", "")) for r in run.records if r.get("finished_at"))
        span = f"{when(stamps[0])} – {when(stamps[-1])}" if stamps else "—"
        suites = ", ".join(dict.fromkeys(str(r["suite"]) for r in run.records))
        rows.append(
            [
                td(link(page, run_path(run.label), run.label), run.label),
                esc(suites),
                td(str(len(run.records)), len(run.records)),
                td(str(winners.get(run.label, 0)), winners.get(run.label, 0)),
                esc(span),
                esc(", ".join(run.tlbench_versions) or "—"),
                f"<code>{esc(run.git_revision)}</code>",
            ]
        )
    headers = ["run", "suite", "records", "cells shown", "finished", "tlbench", "git revision"]
    return table(headers, rows, "sortable")


def run_page(run: Run, views: list[SuiteView], page: str, site: SiteInfo) -> str:
    placed = _placement(views)
    statuses = Counter(str(r["status"]) for r in run.records)
    env = run.env
    environment = packages = plugins = resumed = None
    resumes = env.get("resumes") or []
    if env:
        pairs = [(k, v) for k, v in flatten(env) if k.split(".")[0] not in ENV_HIDDEN]
        environment = fields_table(
            [
                (
                    k,
                    " ".join(v)
                    if isinstance(v, list) and all(isinstance(x, str) for x in v)
                    else v,
                )
                for k, v in pairs
            ]
        )
        packages = fields_table(sorted((env.get("packages") or {}).items()))
        plugins = _plugins_table(env.get("plugins") or [])
        if resumes:
            resumed = fields_table(
                [
                    (
                        f"resume {i}",
                        f"{r.get('created_at', '?')}, git {r.get('git_revision', '?')}, tlbench {(r.get('packages') or {}).get('tlbench', '?')}",
                    )
                    for i, r in enumerate(resumes, start=1)
                    if isinstance(r, dict)
                ]
            )
    crumbs = [("runs", "index.html#runs"), (run.label, None)]
    return document(
        page,
        f"Run {run.label}",
        "",
        site,
        [run],
        crumbs,
        template="run.html.j2",
        intro=(
            f"Run directory {run.path.name} (run id {run.run_id}): {len(run.records)} records, "
            + ", ".join(f"{n} {s}" for s, n in statuses.items())
            + "."
        ),
        cells=_cells_table(run, placed, page),
        environment=environment,
        packages=packages,
        plugins=plugins,
        resumed=resumed,
        resumed_title=f"Resumed {len(resumes)} time{'s' if len(resumes) != 1 else ''}",
        suite=run.suite_text,
        suite_sha256=run.suite_sha256[:12],
    )


def _placement(views: list[SuiteView]) -> dict:
    """(run label, config hash, finished_at) of every record shown or superseded -> where."""
    placed = {}
    for view in views:
        for group in view.groups:
            for entry in group.entries:
                target = cell_path(
                    view.name, group.model.key, group.dataset.key, group.strategy.key
                )
                placed[_key(entry.run, entry.record)] = (target, entry, None)
                for record, run in entry.superseded:
                    placed[_key(run, record)] = (target, entry, entry.run.label)
    return placed


def _key(run: Run, record: dict) -> tuple:
    return (run.label, record["config_hash"], str(record.get("finished_at")), record["status"])


def _cells_table(run: Run, placed: dict, page: str) -> str:
    rows = []
    for record in run.records:
        where = placed.get(_key(run, record))
        value = (record.get("metrics") or {}).get("top1")
        number = value if isinstance(value, int | float) else None
        value_text = "—" if number is None else f"{number:.2f}"
        ids = f"{record['model']} · {record['dataset']} · {record['strategy']}"
        if where is None:
            shown_as = esc(ids)
            state = "—"
        else:
            target, entry, superseded_by = where
            shown_as = link(page, f"{target}#seed-{entry.seed}", ids)
            if number is not None:
                value_text = link(page, f"{target}#seed-{entry.seed}", value_text)
            state = f"superseded by run {esc(superseded_by)}" if superseded_by else "shown"
            if superseded_by == run.label:
                state = "superseded by a later attempt"
        rows.append(
            [
                td(shown_as, ids),
                td(str(record["seed"]), record["seed"]),
                esc(str(record["status"])),
                td(value_text, number),
                esc(when(record.get("finished_at"))),
                state,
            ]
        )
    return table(["cell", "seed", "status", "top1", "finished", "on the site"], rows, "sortable")


def _plugins_table(plugins: list) -> str:
    rows = [
        [
            esc(str(p.get("name"))),
            esc(str(p.get("version", "?"))),
            esc(str(p.get("source", ""))),
            esc(", ".join(p.get("hooks") or [])),
        ]
        for p in plugins
        if isinstance(p, dict)
    ]
    return table(["plugin", "version", "source", "hooks"], rows) if rows else note("None recorded.")
