"""A page per model and per dataset of a suite (``card.html.j2``): its card as recorded, and all
its cells."""

from __future__ import annotations

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
)
from tlbench.publish.leaderboard import Score
from tlbench.publish.paths import cell_path, suite_index_path
from tlbench.publish.variants import Group, SuiteView
from tlbench.report.records import FROM_SCRATCH


def model_page(
    view: SuiteView, model_id: str, page: str, site: SiteInfo, scores: dict[str, Score]
) -> str:
    rows = [m for m in view.models if m.id == model_id]
    groups = [g for g in view.groups if g.model.id == model_id]
    variants = []
    for row in rows:
        mine = [g for g in groups if g.model.key == row.key]
        roles = {g.strategy.label: g.role for g in mine if g.role}
        variants.append(
            {
                "label": row.label,
                "ref": row.ref,
                "warning": f"A separate variant of {row.id}: {row.difference}"
                if row.index
                else None,
                "roles": _roles_text(roles) if roles else "",
                "cells": _grid(view, mine, "strategy", "dataset", page, scores),
                "card": _card(mine, "model_card"),
                "protocol": None,
            }
        )
    return _card_page("model", model_id, view, groups, variants, page, site)


def dataset_page(
    view: SuiteView, dataset_id: str, page: str, site: SiteInfo, scores: dict[str, Score]
) -> str:
    columns = [d for d in view.datasets if d.id == dataset_id]
    groups = [g for g in view.groups if g.dataset.id == dataset_id]
    variants = []
    for column in columns:
        mine = [g for g in groups if g.dataset.key == column.key]
        split = _newest(mine, "split")
        protocol = [
            (k, v)
            for k, v in flatten(split)
            if k not in ("hash", "seed", "hashes.train", "hashes.val")
        ]
        variants.append(
            {
                "label": column.label,
                "ref": column.ref,
                "warning": (
                    f"A separate variant of {column.id}: {column.difference}"
                    if column.index
                    else None
                ),
                "roles": "",
                "cells": _grid(view, mine, "model", "strategy", page, scores),
                "card": _card(mine, "dataset_card"),
                "protocol": fields_table(protocol),
            }
        )
    return _card_page("dataset", dataset_id, view, groups, variants, page, site)


def _card_page(kind, name, view, groups, variants, page, site) -> str:
    """The page of one model or dataset (``kind``): its variants under the suite's crumbs."""
    crumbs = [(view.name, suite_index_path(view.name)), (f"{kind} {name}", None)]
    return document(
        page,
        f"{kind.capitalize()} {name}",
        "",
        site,
        _runs(view, groups),
        crumbs,
        template="card.html.j2",
        variants=variants,
        card_title=f"{kind.capitalize()} card",
    )


def _newest(groups: list[Group], key: str) -> dict:
    entries = sorted(
        (
            e
            for g in groups
            for e in g.entries
            if isinstance(e.record.get(key), dict) and e.record[key]
        ),
        key=lambda e: str(e.record.get("finished_at", "")),
    )
    return entries[-1].record[key] if entries else {}


def _card(groups: list[Group], key: str) -> str:
    card = _newest(groups, key)
    if not card:
        return note("No card recorded (every cell failed before loading it).")
    return fields_table(flatten(card))


def _grid(
    view: SuiteView, groups: list[Group], rows: str, columns: str, page: str, scores: dict
) -> str:
    """``rows`` x ``columns`` (two of model, dataset, strategy) with a link per cell."""
    order = {"model": view.models, "dataset": view.datasets, "strategy": view.strategies}
    used_rows = [v for v in order[rows] if any(getattr(g, rows).key == v.key for g in groups)]
    used_cols = [v for v in order[columns] if any(getattr(g, columns).key == v.key for g in groups)]
    by_key = {(getattr(g, rows).key, getattr(g, columns).key): g for g in groups}
    body = []
    for row in used_rows:
        cells = [td(esc(row.label), row.label)]
        for column in used_cols:
            group = by_key.get((row.key, column.key))
            cells.append(_cell(view, group, page, scores) if group else td("—", cls="missing"))
        body.append(cells)
    return table([rows, *[c.label for c in used_cols]], body, "sortable")


def _cell(view: SuiteView, group: Group, page: str, scores: dict) -> str:
    score = scores[group.id]
    target = cell_path(view.name, group.model.key, group.dataset.key, group.strategy.key)
    return td(link(page, target, score.text), score.mean if score.n else None)


def _runs(view: SuiteView, groups: list[Group]) -> list:
    labels = {
        r.label for g in groups for e in g.entries for r in [e.run, *(o for _, o in e.superseded)]
    }
    return [run for run in view.runs if run.label in labels]


def _roles_text(roles: dict[str, str]) -> str:
    """What a randomly initialised model's cells measure, per strategy (the report's roles)."""
    parts = [
        f"{role} with {', '.join(s for s, r in roles.items() if r == role)}"
        for role in dict.fromkeys(roles.values())
    ]
    text = "Randomly initialised: " + "; ".join(parts) + "."
    if FROM_SCRATCH in roles.values():
        text += (
            " Gains over training from scratch are measured against its trained-from-scratch cells."
        )
    return text
