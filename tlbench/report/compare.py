"""Compare two runs of one suite cell by cell: deltas of the mean, a paired t-test over seeds
where both runs have at least two, and regressions and improvements flagged by a threshold."""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from tlbench.errors import UserError
from tlbench.report.records import GROUP_KEY, PathLike, load_records
from tlbench.report.tables import Table, cell_text, latex_escape, summarize

ALPHA = 0.05
# Flags, worst first. "broken": a value in A, none in B; "fixed": the reverse.
FLAGS = ("broken", "regression", "improvement", "fixed")
BAD_FLAGS = ("broken", "regression")


@dataclass(frozen=True)
class Comparison:
    """``cells``: one row per (model, dataset, strategy) present in both runs, with ``mean_a``,
    ``mean_b``, ``delta`` (B - A, points), ``n_a``, ``n_b``, ``pairs`` (seeds ok in both),
    ``p_value`` (paired t-test, NaN with fewer than two pairs), ``text_a``, ``text_b`` and
    ``flag`` (one of FLAGS, or "")."""

    run_a: str
    run_b: str
    suite: str
    metric: str
    threshold: float
    cells: pd.DataFrame
    only_a: tuple[tuple[str, str, str], ...] = ()
    only_b: tuple[tuple[str, str, str], ...] = ()

    @property
    def regressions(self) -> pd.DataFrame:
        return self.cells[self.cells["flag"].isin(BAD_FLAGS)]

    @property
    def improvements(self) -> pd.DataFrame:
        return self.cells[self.cells["flag"].isin(("improvement", "fixed"))]


def compare(
    run_a: PathLike, run_b: PathLike, *, threshold: float = 1.0, metric: str = "top1"
) -> Comparison:
    """Compare run B against run A (the reference). A cell is a regression when B's mean is at
    least ``threshold`` points below A's, an improvement when at least that much above."""
    if threshold < 0:
        raise UserError(f"--threshold must be at least 0 points, got {threshold}")
    records_a, records_b = load_records(run_a), load_records(run_b)
    suite = _same_suite(run_a, records_a, run_b, records_b)
    summary_a, summary_b = summarize(records_a, metric), summarize(records_b, metric)
    cells = summary_a.merge(summary_b, on=GROUP_KEY, suffixes=("_a", "_b"))
    if cells.empty:
        raise UserError(
            f"{run_a} and {run_b} have no (model, dataset, strategy) cells in common; nothing to compare"
        )
    cells = _with_deltas(cells, records_a, records_b, metric, threshold)
    return Comparison(
        run_a=str(run_a),
        run_b=str(run_b),
        suite=suite,
        metric=metric,
        threshold=threshold,
        cells=cells,
        only_a=_only(summary_a, summary_b),
        only_b=_only(summary_b, summary_a),
    )


def _same_suite(run_a: PathLike, a: pd.DataFrame, run_b: PathLike, b: pd.DataFrame) -> str:
    suites_a, suites_b = sorted(a["suite"].unique()), sorted(b["suite"].unique())
    if suites_a != suites_b:
        raise UserError(
            f"{run_a} is suite {', '.join(suites_a)} but {run_b} is suite {', '.join(suites_b)}; compare runs of the same suite"
        )
    return ", ".join(suites_a)


def _with_deltas(
    cells: pd.DataFrame, a: pd.DataFrame, b: pd.DataFrame, metric: str, threshold: float
) -> pd.DataFrame:
    tests = [_paired_test(a, b, key, metric) for key in cells[GROUP_KEY].itertuples(index=False)]
    cells = cells.assign(
        delta=cells["mean_b"] - cells["mean_a"],
        pairs=[pairs for pairs, _ in tests],
        p_value=[p for _, p in tests],
        text_a=[cell_text(_side(row, "_a")) for _, row in cells.iterrows()],
        text_b=[cell_text(_side(row, "_b")) for _, row in cells.iterrows()],
    )
    return cells.assign(flag=[_flag(row, threshold) for _, row in cells.iterrows()])


def _side(row: pd.Series, suffix: str) -> dict:
    return {key: row[key + suffix] for key in ("n", "mean", "ci95", "status", "problems")}


def _paired_test(a: pd.DataFrame, b: pd.DataFrame, key: tuple, metric: str) -> tuple[int, float]:
    """(seeds ok in both runs, two-sided p-value of the paired t-test over them)."""
    values_a, values_b = _by_seed(a, key, metric), _by_seed(b, key, metric)
    paired = pd.concat([values_a, values_b], axis=1, join="inner", keys=["a", "b"]).dropna()
    if len(paired) < 2:
        return len(paired), math.nan
    differences = (paired["b"] - paired["a"]).to_numpy()
    if np.ptp(differences) < 1e-9:
        # Every seed moved by the same amount: no spread, so no t statistic; the shift is exact.
        return len(paired), 1.0 if abs(differences[0]) < 1e-9 else 0.0
    from scipy import stats  # deferred: slow to import

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return len(paired), float(stats.ttest_rel(paired["b"], paired["a"]).pvalue)


def _by_seed(records: pd.DataFrame, key: tuple, metric: str) -> pd.Series:
    mask = (records[GROUP_KEY] == list(key)).all(axis=1) & (records["status"] == "ok")
    return records.loc[mask].set_index("seed")[f"metrics.{metric}"]


def _flag(row: pd.Series, threshold: float) -> str:
    has_a, has_b = row["n_a"] > 0, row["n_b"] > 0
    if has_a and not has_b:
        return "broken"
    if has_b and not has_a:
        return "fixed"
    if not (has_a and has_b):
        return ""
    if row["delta"] <= -threshold:
        return "regression"
    return "improvement" if row["delta"] >= threshold else ""


def _only(summary: pd.DataFrame, other: pd.DataFrame) -> tuple:
    keys = set(other[GROUP_KEY].itertuples(index=False, name=None))
    return tuple(
        key for key in summary[GROUP_KEY].itertuples(index=False, name=None) if key not in keys
    )


def comparison_table(comparison: Comparison) -> Table:
    """The per-cell table: both runs' mean ± CI, the delta, the p-value and the flag."""
    cells = comparison.cells
    text = cells[GROUP_KEY].assign(
        A=cells["text_a"],
        B=cells["text_b"],
        delta=[f"{d:+.2f}" if pd.notna(d) else "—" for d in cells["delta"]],
        p=[f"{p:.3f}" if pd.notna(p) else "n/a" for p in cells["p_value"]],
        flag=cells["flag"],
    )
    text = text.reset_index(drop=True)
    best = pd.DataFrame(False, index=text.index, columns=text.columns)
    best["flag"] = cells["flag"].isin(FLAGS).to_numpy()
    note = (
        f"{comparison.metric} (%), A = {comparison.run_a}, B = {comparison.run_b}; delta = B - A in points; "
        f"p: paired t-test over seeds finished in both (n/a below two); flagged when |delta| >= {comparison.threshold:g}."
    )
    return Table(f"{comparison.suite}: B against A", text, best, note)


def render_comparison(comparison: Comparison, fmt: str) -> str:
    """The comparison as md, html, latex, csv or json text."""
    table = comparison_table(comparison)
    if fmt == "md":
        return (
            f"# {table.title}\n\n_{table.note}_\n\n{_counts(comparison)}\n\n{table.to_markdown()}\n"
        )
    if fmt == "latex":
        return (
            "\n\n".join(
                [table.to_latex(), latex_escape(table.note), latex_escape(_counts(comparison))]
            )
            + "\n"
        )
    if fmt == "html":
        return _html(comparison, table)
    columns = [
        *GROUP_KEY,
        "mean_a",
        "mean_b",
        "delta",
        "n_a",
        "n_b",
        "pairs",
        "p_value",
        "status_a",
        "status_b",
        "flag",
    ]
    numbers = comparison.cells[columns]
    if fmt == "csv":
        return numbers.to_csv(index=False)
    if fmt == "json":
        document = {
            "suite": comparison.suite,
            "run_a": comparison.run_a,
            "run_b": comparison.run_b,
            "metric": comparison.metric,
            "threshold": comparison.threshold,
            "cells": json.loads(numbers.to_json(orient="records")),
            "only_a": [list(key) for key in comparison.only_a],
            "only_b": [list(key) for key in comparison.only_b],
        }
        return json.dumps(document, indent=2) + "\n"
    raise UserError(f"unknown format {fmt!r}; expected one of md, html, latex, csv, json")


def _counts(comparison: Comparison) -> str:
    flags = comparison.cells["flag"].value_counts()
    counted = ", ".join(f"{flag}: {int(flags.get(flag, 0))}" for flag in FLAGS)
    missing = (
        f"; {len(comparison.only_a)} cells only in A, {len(comparison.only_b)} only in B"
        if comparison.only_a or comparison.only_b
        else ""
    )
    return f"{len(comparison.cells)} cells compared; {counted}{missing}."


def _html(comparison: Comparison, table: Table) -> str:
    from tlbench.report import html as html_page

    kinds = [
        "regression" if flag in BAD_FLAGS else "improvement" if flag else ""
        for flag in comparison.cells["flag"]
    ]
    note = f'<p class="note">{html_page.html.escape(table.note)}</p><p>{html_page.html.escape(_counts(comparison))}</p>'
    return html_page.page(
        f"tlbench compare: {table.title}", [note, table.to_html(row_classes=kinds)]
    )
