"""Compare two runs of one suite cell by cell, and flag only what the test set can tell apart.

Each (model, dataset, strategy) of run B is compared with run A's on the same test items:
McNemar's exact test on the items one run got right and the other wrong, summed over the seeds
both finished (from the stored per-example predictions; ``tlbench.report.stats``). The p-values
of all cells are Holm-corrected, and a cell is flagged a regression or an improvement only when
its corrected p is below ``alpha`` and its change is at least ``threshold`` points. Without
predictions (older runs) the paired t-test over seeds stands in, and with fewer than two seeds
nothing can be tested and nothing is flagged. Cells are paired only when their configuration
hashes and test split hashes agree: a changed recipe or split is not a regression.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from tlbench.errors import UserError
from tlbench.report.records import CELL_KEY, GROUP_KEY, PathLike, load_records
from tlbench.report.tables import Table, cell_text, latex_escape, summarize
from tlbench.safeio import csv_frame

ALPHA = 0.05
DEFAULT_THRESHOLD = 0.0
# Flags, worst first. "broken": a value in A, none in B; "fixed": the reverse.
FLAGS = ("broken", "regression", "improvement", "fixed")
BAD_FLAGS = ("broken", "regression")


@dataclass(frozen=True)
class Comparison:
    """``cells``: one row per (model, dataset, strategy) present in both runs, with ``mean_a``,
    ``mean_b``, ``delta`` (B - A, points), ``n_a``, ``n_b``, ``pairs`` (seeds ok in both),
    ``test`` ("mcnemar", "t-test" or "none"), ``right_only_a``/``right_only_b`` (the
    discordant items: right in one run only),
    ``p_value``, ``p_holm`` (Holm-corrected over the cells), ``text_a``, ``text_b``,
    ``mismatch`` (why the cells differ in configuration, when allowed) and ``flag`` (one of
    FLAGS, or "")."""

    run_a: str
    run_b: str
    suite: str
    metric: str
    threshold: float
    cells: pd.DataFrame
    alpha: float = ALPHA
    only_a: tuple[tuple[str, str, str], ...] = ()
    only_b: tuple[tuple[str, str, str], ...] = ()

    @property
    def regressions(self) -> pd.DataFrame:
        return self.cells[self.cells["flag"].isin(BAD_FLAGS)]

    @property
    def improvements(self) -> pd.DataFrame:
        return self.cells[self.cells["flag"].isin(("improvement", "fixed"))]


def compare(
    run_a: PathLike,
    run_b: PathLike,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    metric: str = "top1",
    alpha: float = ALPHA,
    allow_mismatch: bool = False,
) -> Comparison:
    """Compare run B against run A (the reference); see the module docstring for what is
    flagged. Cells whose configuration or test split differ between the runs are refused
    (``UserError`` naming them) unless ``allow_mismatch``."""
    if threshold < 0:
        raise UserError(f"--threshold must be at least 0 points, got {threshold}")
    if not 0 < alpha < 1:
        raise UserError(f"--alpha must be between 0 and 1, got {alpha}")
    records_a, records_b = load_records(run_a), load_records(run_b)
    suite = _same_suite(run_a, records_a, run_b, records_b)
    mismatches = _mismatches(records_a, records_b)
    if mismatches and not allow_mismatch:
        shown = "; ".join(f"{' / '.join(key)}: {why}" for key, why in list(mismatches.items())[:3])
        more = f" (and {len(mismatches) - 3} more)" if len(mismatches) > 3 else ""
        raise UserError(
            f"{run_a} and {run_b} ran {len(mismatches)} cells differently, so their numbers "
            f"are not comparable: {shown}{more}; pass --allow-mismatch to compare them anyway"
        )
    summary_a, summary_b = summarize(records_a, metric), summarize(records_b, metric)
    cells = summary_a.merge(summary_b, on=GROUP_KEY, suffixes=("_a", "_b"))
    if cells.empty:
        raise UserError(
            f"{run_a} and {run_b} have no (model, dataset, strategy) cells in common; nothing to compare"
        )
    cells = _with_tests(cells, records_a, records_b, metric, threshold, alpha, mismatches)
    return Comparison(
        run_a=str(run_a),
        run_b=str(run_b),
        suite=suite,
        metric=metric,
        threshold=threshold,
        cells=cells,
        alpha=alpha,
        only_a=_only(summary_a, summary_b),
        only_b=_only(summary_b, summary_a),
    )


def _mismatches(a: pd.DataFrame, b: pd.DataFrame) -> dict[tuple, str]:
    """(model, dataset, strategy) -> why its seeds differ between the runs in configuration
    (config hash: options, references, recipe versions) or in test items (split hash)."""
    found: dict[tuple, str] = {}
    left = a.set_index(CELL_KEY)
    right = b.set_index(CELL_KEY)
    for key in left.index.intersection(right.index):
        ra, rb = left.loc[key], right.loc[key]
        group = tuple(key[:3])
        if ra.get("config_hash") != rb.get("config_hash"):
            found.setdefault(
                group, "configuration differs (options, references or recipe versions)"
            )
        elif _test_hash(ra) != _test_hash(rb):
            found.setdefault(group, "test split differs")
    return found


def _test_hash(row: pd.Series) -> str | None:
    split = row.get("split")
    return (split.get("hashes") or {}).get("test") if isinstance(split, Mapping) else None


def _same_suite(run_a: PathLike, a: pd.DataFrame, run_b: PathLike, b: pd.DataFrame) -> str:
    suites_a, suites_b = sorted(a["suite"].unique()), sorted(b["suite"].unique())
    if suites_a != suites_b:
        raise UserError(
            f"{run_a} is suite {', '.join(suites_a)} but {run_b} is suite {', '.join(suites_b)}; compare runs of the same suite"
        )
    return ", ".join(suites_a)


def _with_tests(cells, a, b, metric, threshold, alpha, mismatches) -> pd.DataFrame:
    from tlbench.report.stats import holm, predictions_by_cell

    preds_a = predictions_by_cell(a) if metric == "top1" else {}
    preds_b = predictions_by_cell(b) if metric == "top1" else {}
    keys = list(cells[GROUP_KEY].itertuples(index=False, name=None))
    tests = [_test(a, b, key, metric, preds_a.get(key), preds_b.get(key)) for key in keys]
    cells = cells.assign(
        delta=cells["mean_b"] - cells["mean_a"],
        pairs=[t["pairs"] for t in tests],
        test=[t["test"] for t in tests],
        right_only_a=[t.get("only_a") for t in tests],
        right_only_b=[t.get("only_b") for t in tests],
        p_value=[t["p"] for t in tests],
        mismatch=[mismatches.get(key, "") for key in keys],
        text_a=[cell_text(_side(row, "_a")) for _, row in cells.iterrows()],
        text_b=[cell_text(_side(row, "_b")) for _, row in cells.iterrows()],
    )
    cells["p_holm"] = holm(cells["p_value"].to_numpy(dtype=float))
    return cells.assign(flag=[_flag(row, threshold, alpha) for _, row in cells.iterrows()])


def _side(row: pd.Series, suffix: str) -> dict:
    return {key: row[key + suffix] for key in ("n", "mean", "ci95", "status", "problems")}


def _test(a, b, key: tuple, metric: str, preds_a, preds_b) -> dict:
    """McNemar over the items both runs scored, summed over their common seeds; else the
    paired t-test over seeds; else no test."""
    from tlbench.report.stats import mcnemar

    if preds_a is not None and preds_b is not None and preds_a.split_hash == preds_b.split_hash:
        seeds = sorted(set(preds_a.correct) & set(preds_b.correct))
        if seeds:
            only_a, only_b, p = mcnemar(preds_a.matrix(seeds), preds_b.matrix(seeds))
            return {
                "pairs": len(seeds),
                "test": "mcnemar",
                "only_a": only_a,
                "only_b": only_b,
                "p": p,
            }
    pairs, p = _paired_t_test(a, b, key, metric)
    return {"pairs": pairs, "test": "t-test" if not math.isnan(p) else "none", "p": p}


def _paired_t_test(a: pd.DataFrame, b: pd.DataFrame, key: tuple, metric: str) -> tuple[int, float]:
    """(seeds ok in both runs, two-sided p of the paired t-test over them; NaN when it cannot
    be computed: fewer than two seeds, or differences without spread)."""
    values_a, values_b = _by_seed(a, key, metric), _by_seed(b, key, metric)
    paired = pd.concat([values_a, values_b], axis=1, join="inner", keys=["a", "b"]).dropna()
    if len(paired) < 2:
        return len(paired), math.nan
    differences = (paired["b"] - paired["a"]).to_numpy()
    if np.ptp(differences) < 1e-9:
        # Every seed moved by the same amount: the t statistic is undefined, not infinite.
        return len(paired), math.nan
    from scipy import stats  # deferred: slow to import

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return len(paired), float(stats.ttest_rel(paired["b"], paired["a"]).pvalue)


def _by_seed(records: pd.DataFrame, key: tuple, metric: str) -> pd.Series:
    mask = (records[GROUP_KEY] == list(key)).all(axis=1) & (records["status"] == "ok")
    return records.loc[mask].set_index("seed")[f"metrics.{metric}"]


def _flag(row: pd.Series, threshold: float, alpha: float) -> str:
    has_a, has_b = row["n_a"] > 0, row["n_b"] > 0
    if has_a and not has_b:
        return "broken"
    if has_b and not has_a:
        return "fixed"
    if not (has_a and has_b) or not row["p_holm"] < alpha or abs(row["delta"]) < threshold:
        return ""
    return "regression" if row["delta"] < 0 else "improvement"


def _only(summary: pd.DataFrame, other: pd.DataFrame) -> tuple:
    keys = set(other[GROUP_KEY].itertuples(index=False, name=None))
    return tuple(
        key for key in summary[GROUP_KEY].itertuples(index=False, name=None) if key not in keys
    )


def comparison_table(comparison: Comparison) -> Table:
    """The per-cell table: both runs' mean ± interval, the delta, the test and the flag."""
    cells = comparison.cells
    text = cells[GROUP_KEY].assign(
        A=cells["text_a"],
        B=cells["text_b"],
        delta=[f"{d:+.2f}" if pd.notna(d) else "—" for d in cells["delta"]],
        test=[_test_text(row) for _, row in cells.iterrows()],
        p=[f"{p:.3f}" if pd.notna(p) else "n/a" for p in cells["p_holm"]],
        flag=[_flag_text(row) for _, row in cells.iterrows()],
    )
    text = text.reset_index(drop=True)
    best = pd.DataFrame(False, index=text.index, columns=text.columns)
    best["flag"] = cells["flag"].isin(FLAGS).to_numpy()
    note = (
        f"{comparison.metric} (%), A = {comparison.run_a}, B = {comparison.run_b}; delta = B - A in points; "
        "test: McNemar's exact test on the test items one run got right and the other wrong "
        "(summed over seeds both ran), or the paired t-test over seeds without stored predictions; "
        f"p: Holm-corrected over the {len(cells)} cells; flagged when p < {comparison.alpha:g}"
        + (f" and |delta| >= {comparison.threshold:g}" if comparison.threshold else "")
        + "."
    )
    return Table(f"{comparison.suite}: B against A", text, best, note)


def _test_text(row: pd.Series) -> str:
    if row["test"] == "mcnemar":
        return f"McNemar {int(row['right_only_a'])}/{int(row['right_only_b'])} items, {row['pairs']} seeds"
    if row["test"] == "t-test":
        return f"t-test, {row['pairs']} seeds"
    return "not testable"


def _flag_text(row: pd.Series) -> str:
    return row["flag"] + (f" (config differs: {row['mismatch']})" if row["mismatch"] else "")


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
        "test",
        "right_only_a",
        "right_only_b",
        "p_value",
        "p_holm",
        "mismatch",
        "status_a",
        "status_b",
        "flag",
    ]
    numbers = comparison.cells[columns]
    if fmt == "csv":
        return csv_frame(numbers).to_csv(index=False)
    if fmt == "json":
        document = {
            "suite": comparison.suite,
            "run_a": comparison.run_a,
            "run_b": comparison.run_b,
            "metric": comparison.metric,
            "threshold": comparison.threshold,
            "alpha": comparison.alpha,
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
