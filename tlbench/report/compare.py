"""Compare two runs of one suite cell by cell, and flag only what retraining cannot explain.

Each (model, dataset, strategy) is a configuration. With at least two seeds on each side, the
question is whether the *configurations* differ, retraining noise included (Bouthillier et al.
2021): Welch's t-test on the seeds' accuracies (``tlbench.report.stats.welch``), so a rerun
with other seeds (even disjoint ones) is not a regression. With one seed on a side, only the two
trained models can be compared: McNemar's exact test on the test items one got right and the
other wrong (from stored predictions, over the seeds both ran); the output says so
(``scope``). The p-values of all cells are Holm-corrected, and a cell is flagged a regression or
an improvement only when its corrected p is below ``alpha`` and its change is at least
``threshold`` points. Cells are paired only when their configurations and test splits agree: a
changed recipe or split is not a regression.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass

import pandas as pd

from tlbench.errors import UserError
from tlbench.report.records import CELL_KEY, GROUP_KEY, PathLike, load_records, set_options
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
    ``test`` ("welch", "mcnemar" or "none"), ``scope`` (what the test compares:
    "configurations", "trained models" or ""), ``right_only_a``/``right_only_b`` (McNemar's
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
    """(model, dataset, strategy) -> why it differs between the runs in configuration (config
    hash of a seed both ran; for other seeds the references, options and recipe versions) or in
    test items (split hash)."""
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
    recipes_a, recipes_b = _recipes(a), _recipes(b)
    for group in recipes_a.keys() & recipes_b.keys():
        if group in found:
            continue
        (recipe_a, test_a), (recipe_b, test_b) = recipes_a[group], recipes_b[group]
        if recipe_a != recipe_b:
            found[group] = "configuration differs (options, references or recipe versions)"
        elif test_a != test_b:
            found[group] = "test split differs"
    return found


def _recipes(records: pd.DataFrame) -> dict[tuple, tuple[str, str | None]]:
    """(model, dataset, strategy) -> (what defines it apart from the seed, its test hash), from
    its first record: runs with disjoint seeds share no config hash to compare."""
    found = {}
    for key, group in records.groupby(GROUP_KEY, sort=False):
        row = group.iloc[0]
        options = row.get("options")
        if isinstance(options, Mapping):  # unset options, null or absent, compare as one
            options = {kind: set_options(values) for kind, values in options.items()}
        refs = [row.get(k) for k in ("model_ref", "dataset_ref", "strategy_ref")]
        recipe = json.dumps(
            [*refs, options, row.get("versions")],
            sort_keys=True,
            default=str,
        )
        found[tuple(key)] = (recipe, _test_hash(row))
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
        scope=[t["scope"] for t in tests],
        right_only_a=[t.get("only_a") for t in tests],
        right_only_b=[t.get("only_b") for t in tests],
        p_value=[t["p"] for t in tests],
        mismatch=[mismatches.get(key, "") for key in keys],
        text_a=[side_text(row, "_a") for _, row in cells.iterrows()],
        text_b=[side_text(row, "_b") for _, row in cells.iterrows()],
    )
    cells["p_holm"] = holm(cells["p_value"].to_numpy(dtype=float))
    return cells.assign(flag=[_flag(row, threshold, alpha) for _, row in cells.iterrows()])


def _side(row: pd.Series, suffix: str) -> dict:
    keys = ("n", "mean", "ci95", "status", "problems", "one_draw", "still_improving")
    return {key: row[key + suffix] for key in keys}


def side_text(row: pd.Series, suffix: str) -> str:
    """One run's cell as the tables show it, with its marks (under-trained, one draw)."""
    from tlbench.report.tables import cell_marks

    side = _side(row, suffix)
    marks = cell_marks(side)
    return cell_text(side) + (f" {marks}" if marks else "")


CONFIGURATIONS, MODELS = "configurations", "trained models"
MODELS_ONLY = (
    "one seed on a side: McNemar compares the two trained models only (one training draw "
    "each), not the configurations; rerun with at least 2 seeds a side to include retraining noise"
)


def _test(a, b, key: tuple, metric: str, preds_a, preds_b) -> dict:
    """Welch's t-test on the seeds' values when both sides have at least two (the
    configurations); else McNemar over the items both scored, on their common seeds (the
    trained models); else no test."""
    from tlbench.report.stats import mcnemar, welch

    values_a, values_b = _by_seed(a, key, metric).dropna(), _by_seed(b, key, metric).dropna()
    pairs = len(values_a.index.intersection(values_b.index))
    if len(values_a) >= 2 and len(values_b) >= 2:
        _, p = welch(values_a.to_numpy(), values_b.to_numpy())
        if not math.isnan(p):
            return {"pairs": pairs, "test": "welch", "scope": CONFIGURATIONS, "p": p}
        return {"pairs": pairs, "test": "none", "scope": "", "p": math.nan}
    if preds_a is not None and preds_b is not None and preds_a.split_hash == preds_b.split_hash:
        seeds = sorted(set(preds_a.correct) & set(preds_b.correct))
        if seeds:
            only_a, only_b, p = mcnemar(preds_a.matrix(seeds), preds_b.matrix(seeds))
            return {
                "pairs": len(seeds),
                "test": "mcnemar",
                "scope": MODELS,
                "only_a": only_a,
                "only_b": only_b,
                "p": p,
            }
    return {"pairs": pairs, "test": "none", "scope": "", "p": math.nan}


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
        "test: Welch's t-test on the seeds' accuracies when both runs have at least 2 seeds (do "
        "the configurations differ, retraining noise included), else McNemar's exact test on "
        "the test items one trained model got right and the other wrong (the trained models "
        f"only); p: Holm-corrected over the {len(cells)} cells; flagged when p < {comparison.alpha:g}"
        + (f" and |delta| >= {comparison.threshold:g}" if comparison.threshold else "")
        + "."
    )
    extra = " ".join(note for note in (marks_line(comparison), scope_line(comparison)) if note)
    note += f" {extra}" if extra else ""
    return Table(f"{comparison.suite}: B against A", text, best, note)


def _test_text(row: pd.Series) -> str:
    if row["test"] == "mcnemar":
        return (
            f"McNemar {int(row['right_only_a'])}/{int(row['right_only_b'])} items, "
            f"{row['pairs']} seeds (trained models only)"
        )
    if row["test"] == "welch":
        return f"Welch t, {int(row['n_a'])} vs {int(row['n_b'])} seeds"
    return "not testable"


def scope_line(comparison: Comparison) -> str:
    """The one line that says when only trained models, not configurations, were compared."""
    return MODELS_ONLY + "." if (comparison.cells["scope"] == MODELS).any() else ""


def marks_line(comparison: Comparison) -> str:
    from tlbench.report.tables import ONE_DRAW_NOTE, UNDERTRAINED_NOTE

    cells = comparison.cells
    notes = []
    if cells[["still_improving_a", "still_improving_b"]].to_numpy().any():
        notes.append(UNDERTRAINED_NOTE)
    ok_a, ok_b = cells["n_a"] > 0, cells["n_b"] > 0
    if (cells["one_draw_a"] & ok_a).any() or (cells["one_draw_b"] & ok_b).any():
        notes.append(ONE_DRAW_NOTE)
    return " ".join(notes)


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
        "scope",
        "right_only_a",
        "right_only_b",
        "p_value",
        "p_holm",
        "mismatch",
        "status_a",
        "status_b",
        "still_improving_a",
        "still_improving_b",
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
            "scope": _scope(comparison),
            "scope_note": scope_line(comparison),
            "cells": json.loads(numbers.to_json(orient="records")),
            "only_a": [list(key) for key in comparison.only_a],
            "only_b": [list(key) for key in comparison.only_b],
        }
        return json.dumps(document, indent=2) + "\n"
    raise UserError(f"unknown format {fmt!r}; expected one of md, html, latex, csv, json")


def _scope(comparison: Comparison) -> str:
    """What the flagged tests compared, over all cells: configurations, trained models, mixed."""
    scopes = set(comparison.cells["scope"]) - {""}
    return scopes.pop() if len(scopes) == 1 else "mixed" if scopes else "none"


def _counts(comparison: Comparison) -> str:
    flags = comparison.cells["flag"].value_counts()
    counted = ", ".join(f"{flag}: {int(flags.get(flag, 0))}" for flag in FLAGS)
    missing = (
        f"; {len(comparison.only_a)} cells only in A, {len(comparison.only_b)} only in B"
        if comparison.only_a or comparison.only_b
        else ""
    )
    scope = scope_line(comparison)
    return f"{len(comparison.cells)} cells compared; {counted}{missing}." + (
        f" Note: {scope}" if scope else ""
    )


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
