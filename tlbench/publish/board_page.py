"""The leaderboard page of one suite under one strategy (``leaderboard.html.j2``), and its CSV
download."""

from __future__ import annotations

import csv
import io
import math

from tlbench.publish.html import SiteInfo, document, esc, link, td
from tlbench.publish.leaderboard import Leaderboard, Row, Score
from tlbench.publish.paths import (
    board_csv_path,
    board_path,
    cell_path,
    dataset_path,
    model_path,
    relative,
)
from tlbench.publish.variants import Variant
from tlbench.report.tables import ONE_DRAW_NOTE, UNDERTRAINED_NOTE
from tlbench.safeio import csv_cell


def board_page(board: Leaderboard, page: str, default: Variant, site: SiteInfo) -> str:
    view = board.suite
    legend = (
        f"{board.metric} (%): mean ± half the 95% interval over training seeds and test items "
        "(the report's: Student t over the seeds plus the noise of the shared test set), so one "
        "seed has one too. The small number is the rank on that dataset (1 = best); "
    )
    if board.references:
        named = ", ".join(
            sorted(
                {
                    f"{s.group.model.label} / {s.group.strategy.label}"
                    for s in board.references.values()
                }
            )
        )
        legend += (
            "the signed number is the gain in points over training from scratch: the network "
            f"trained from scratch (full fine-tuning of the randomly initialised model) on the same "
            f"dataset ({named}; with several, the best on validation), whatever this "
            "leaderboard's strategy; random-init-features cells are never the reference. "
        )
    legend += "Click a number for its cell: configuration, hyperparameters, cost, environment, errors made."
    scores = [s for row in board.rows for s in row.scores.values() if s.n]
    if any(s.one_draw for s in scores):
        legend += f" {ONE_DRAW_NOTE}"
    if any(s.still_improving for s in scores):
        legend += f" {UNDERTRAINED_NOTE}"
    return document(
        page,
        f"{view.name}: {board.strategy.label}",
        "",
        site,
        view.runs,
        [(view.name, None)],
        template="leaderboard.html.j2",
        description=view.description,
        selector=strategy_selector(board, page, default),
        warnings=[*view.notes, *board.notes],
        csv=relative(page, board_csv_path(view.name, board.strategy.key)),
        table=board_table(board, page),
        legend=legend,
        datasets=[(relative(page, dataset_path(view.name, d.id)), d.label) for d in board.datasets],
    )


def strategy_selector(board: Leaderboard, page: str, default: Variant) -> str:
    view = board.suite
    items = []
    for strategy in view.strategies:
        target = board_path(view.name, strategy.key, strategy.key == default.key)
        current = ' aria-current="page"' if strategy.key == board.strategy.key else ""
        items.append(f"<li{current}>{link(page, target, strategy.label, strategy.difference)}</li>")
    return f'<nav class="strategies" aria-label="strategy"><span>Strategy:</span><ul>{"".join(items)}</ul></nav>'


def board_table(board: Leaderboard, page: str) -> str:
    # Scores and gains sort best first on the first click; positions and ranks lowest first.
    heads = [("#", ""), ("model", "")]
    heads += [(d.label, "desc") for d in board.datasets] + [("average rank", "")]
    if board.references:
        heads.append(("gain over training from scratch", "desc"))
    header = "".join(
        f'<th data-order="{order}">{esc(h)}</th>' if order else f"<th>{esc(h)}</th>"
        for h, order in heads
    )
    rows = "\n".join(_row(board, row, page) for row in board.rows)
    return f"""<table class="sortable leaderboard" id="leaderboard">
<thead><tr>{header}</tr></thead>
<tbody>
{rows}
</tbody>
</table>"""


def _row(board: Leaderboard, row: Row, page: str) -> str:
    view = board.suite
    model = row.model
    marker = (
        f' <sup class="variant" title="{esc(model.difference)}">variant</sup>'
        if model.index
        else ""
    )
    badge = f' <span class="badge">{esc(row.role)}</span>' if row.role else ""
    name = (
        link(page, model_path(view.name, model.id), model.label)
        + marker
        + badge
        + f'<br><span class="ref">{esc(model.ref)}</span>'
    )
    cells = [td(str(row.position), row.position), td(name, model.label)]
    for dataset in board.datasets:
        score = row.scores.get(dataset.key)
        cells.append(_score_cell(board, score, page) if score else td("—", cls="num missing"))
    datasets_ranked = sum(1 for s in row.scores.values() if s.rank is not None)
    coverage = (
        f' <span class="ref">({datasets_ranked} of {len(board.datasets)})</span>'
        if datasets_ranked < len(board.datasets)
        else ""
    )
    average = f"{row.average_rank:.2f}" if row.average_rank is not None else "—"
    cells.append(td(average + coverage, row.average_rank, cls="num"))
    if board.references:
        reference = any(board.is_reference(s) for s in row.scores.values())
        gain = "reference" if reference else _signed(row.mean_gain)
        cells.append(td(gain, None if reference else row.mean_gain, cls="num"))
    search = esc(f"{model.label} {model.ref}".lower())
    return f'<tr data-filter="{search}">' + "".join(cells) + "</tr>"


def _score_cell(board: Leaderboard, score: Score, page: str) -> str:
    group = score.group
    target = cell_path(board.suite.name, group.model.key, group.dataset.key, group.strategy.key)
    seeds = ", ".join(f"seed {seed}: {value:.2f}" for seed, value in score.values)
    tip = f"{group.model.label} on {group.dataset.label}: {seeds or score.status}"
    content = link(page, target, score.text, tip)
    if score.rank is not None:
        content += (
            f' <span class="rank" title="rank on {esc(group.dataset.label)}">{score.rank:g}</span>'
        )
    if score.gain is not None:
        content += f' <span class="gain">{_signed(score.gain)}</span>'
    return td(content, score.mean if score.n else None, "num" if score.n else "num failed")


def _signed(value: float | None) -> str:
    return "—" if value is None or math.isnan(value) else f"{value:+.1f}"


def board_csv(board: Leaderboard) -> str:
    """One line per (model, dataset): the numbers behind the page."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(
        [
            "position",
            "model",
            "model_ref",
            "dataset",
            "strategy",
            "metric",
            "mean",
            "ci95",
            "n",
            "seeds",
            "status",
            "rank",
            "gain",
            "average_rank",
            "mean_gain",
            "one_training_draw",
            "still_improving",
            "role",
            "gain_reference",
        ]
    )
    for row in board.rows:
        for dataset in board.datasets:
            score = row.scores.get(dataset.key)
            if score is None:
                continue
            writer.writerow(
                map(
                    csv_cell,
                    [
                        row.position,
                        row.model.label,
                        row.model.ref,
                        dataset.label,
                        board.strategy.label,
                        board.metric,
                        _number(score.mean),
                        _number(score.ci95),
                        score.n,
                        " ".join(str(e.seed) for e in score.group.entries),
                        score.status,
                        _number(score.rank),
                        _number(score.gain),
                        _number(row.average_rank),
                        _number(row.mean_gain),
                        str(score.one_draw).lower() if score.n else "",
                        str(score.still_improving).lower() if score.n else "",
                        score.group.role,
                        _reference_label(board, score),
                    ],
                )
            )
    return out.getvalue()


def _number(value: float | None) -> str:
    return "" if value is None or math.isnan(value) else f"{value:.4f}".rstrip("0").rstrip(".")


def _reference_label(board: Leaderboard, score: Score) -> str:
    """``model / strategy`` of the trained-from-scratch cell the score's gain is over."""
    reference = board.references.get(score.group.dataset.key)
    if score.gain is None or reference is None:
        return ""
    return f"{reference.group.model.label} / {reference.group.strategy.label}"
