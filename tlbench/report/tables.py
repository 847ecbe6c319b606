"""Seed statistics and the report's tables, built as pandas pivots.

A ``Table`` holds what a reader sees (``text``) and which cells are the best of their column
(``best``); it renders itself to Markdown, LaTeX and HTML through pandas, marking the best
cells bold in each syntax.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from tlbench.errors import UserError
from tlbench.report.records import (
    FROM_SCRATCH,
    GROUP_KEY,
    STATUSES,
    is_trivial,
    reference_position,
    tuning,
)
from tlbench.specs import KINDS

CI_LEVEL = 0.95
MISSING = "—"  # a cell the suite excluded, or a dataset without a baseline


@dataclass(frozen=True)
class Table:
    """``text``: one row per line of the table, row labels in the first column(s).
    ``best``: same shape, True where the cell is shown bold."""

    title: str
    text: pd.DataFrame
    best: pd.DataFrame
    note: str = ""

    def to_markdown(self) -> str:
        frame = self._marked(lambda s: f"**{s}**", lambda s: s.replace("|", r"\|"))
        return frame.to_markdown(index=False, disable_numparse=True)

    def to_latex(self) -> str:
        frame = self._marked(lambda s: rf"\textbf{{{s}}}", latex_escape)
        return frame.to_latex(
            index=False, escape=False, caption=latex_escape(self.title), position="htbp"
        )

    def to_html(self, row_classes: list[str] | None = None) -> str:
        """A sortable ``<table>``; ``row_classes`` (one CSS class per row) colours rows."""
        frame = self._marked(lambda s: f"<b>{s}</b>", html.escape)
        if row_classes is None:
            return frame.to_html(index=False, escape=False, border=0, classes="sortable")
        classes = pd.DataFrame({column: row_classes for column in frame.columns}, index=frame.index)
        styler = frame.style.hide(axis="index").set_td_classes(classes)
        return styler.set_table_attributes('class="sortable"').to_html()

    def _marked(self, bold: Callable[[str], str], escape: Callable[[str], str]) -> pd.DataFrame:
        escaped = self.text.fillna(MISSING).astype(str).map(escape)
        marked = escaped.where(~self.best, escaped.map(bold))
        return marked.rename(columns=lambda c: escape(str(c)))


def latex_escape(text: str) -> str:
    replacements = {
        "\\": r"\textbackslash{}",
        "&": r"\&",
        "%": r"\%",
        "$": r"\$",
        "#": r"\#",
        "_": r"\_",
        "{": r"\{",
        "}": r"\}",
        "~": r"\textasciitilde{}",
        "^": r"\textasciicircum{}",
        "±": r"$\pm$",
        "—": "--",
        "↗": r"$\nearrow$",
        "¹": r"\textsuperscript{1}",
    }
    return "".join(replacements.get(char, char) for char in str(text))


def summarize(records: pd.DataFrame, metric: str = "top1") -> pd.DataFrame:
    """One row per (model, dataset, strategy), in suite order: ``seeds`` (records), ``n``
    (seeds with a value), ``mean``, ``std`` (over seeds), the 95% interval ``ci_low``/``ci_high``
    with its half-width ``ci95`` and ``interval`` (how it was computed: over test items and
    seeds from stored predictions, see ``tlbench.report.stats``), ``val_mean`` (validation
    top-1, what baselines are chosen by), ``status`` (``ok`` when any seed has a value, else the
    most common failure), ``problems`` ({status: count} of the seeds that did not finish ok),
    ``baseline`` (trained from scratch), ``trivial`` (a trivial baseline: raw pixels, random
    features), ``role`` (``tlbench.report.records.init_role``: trained from scratch,
    random-init features or ""), ``one_draw`` (one seed: the interval is the test set's noise
    only), ``still_improving`` (validation still rising at the budget in any seed) and cost
    figures."""
    from tlbench.report.stats import predictions_by_cell

    column = f"metrics.{metric}"
    if column not in records:
        known = sorted(c.removeprefix("metrics.") for c in records if c.startswith("metrics."))
        raise UserError(
            f"metric {metric!r} is in no record; recorded metrics: {', '.join(known) or 'none'}"
        )
    # Stored predictions are of top-1 on the test split; other metrics get the normal interval.
    predictions = predictions_by_cell(records) if metric == "top1" else {}
    groups = records.groupby(GROUP_KEY, sort=False)
    return pd.DataFrame(
        [_summarize_group(key, group, column, predictions.get(key)) for key, group in groups]
    )


def _summarize_group(key: tuple, group: pd.DataFrame, column: str, predictions) -> dict:
    from tlbench.report.stats import cell_interval, test_set_size

    ok = group[group["status"] == "ok"]
    values = ok[column].dropna()
    n = len(values)
    problems = group.loc[group["status"] != "ok", "status"].value_counts()
    problems = {status: int(problems[status]) for status in STATUSES if status in problems}
    interval = None
    if n:
        items = test_set_size(ok.get("split", ())) if column == "metrics.top1" else None
        interval = cell_interval(values.to_numpy(), predictions, items)
    roles = [r for r in group.get("role", ()) if r]
    val = ok["metrics.val_top1"].dropna() if "metrics.val_top1" in ok else pd.Series(dtype=float)
    return {
        **dict(zip(GROUP_KEY, key, strict=True)),
        "baseline": bool(group["baseline"].any()),
        "trivial": bool(_trivial(group)),
        "seeds": len(group),
        "n": n,
        "mean": values.mean() if n else math.nan,
        "std": values.std(ddof=1) if n >= 2 else math.nan,
        "ci_low": interval.low if interval else math.nan,
        "ci_high": interval.high if interval else math.nan,
        "ci95": interval.half_width if interval else math.nan,
        "interval": interval.method if interval else "",
        "one_draw": n == 1,
        "still_improving": bool(ok.get("still_improving", pd.Series(dtype=bool)).any()),
        "role": roles[0] if roles else "",
        "val_mean": val.mean() if len(val) else math.nan,
        "status": "ok" if n else _dominant(problems),
        "problems": problems,
        "trainable_params": group["cost.trainable_params"].median(),
        "total_params": group["cost.total_params"].median(),
        "wall_s": group["cost.wall_s"].mean(),
        "peak_mem_mb": group["cost.peak_mem_mb"].max(),
    }


def _trivial(group: pd.DataFrame) -> bool:
    return any(is_trivial(card) for card in group.get("model_card", ()))


def t_quantile(dof: int) -> float:
    from scipy import stats  # deferred: scipy's import is slow and only statistics need it

    return float(stats.t.ppf(0.5 + CI_LEVEL / 2, dof))


def _dominant(problems: dict) -> str:
    # Most frequent failure; ties go to the earlier status in STATUSES (dict order).
    return max(problems, key=problems.get) if problems else "no value"


def cell_text(row: pd.Series | dict, spread: str = "ci95") -> str:
    """``81.3 ± 1.7`` (mean ± half the 95% interval), ``81.3 ± 1.7 (1 failed)``, ``81.3`` when
    no interval could be computed, or the failure itself. ``spread = "std"`` shows the seeds'
    standard deviation instead (the terminal's compact view)."""
    if row["n"] == 0:
        return row["status"]
    text = f"{row['mean']:.1f}"
    width = row.get(spread) if hasattr(row, "get") else row[spread]
    if width is not None and not (isinstance(width, float) and math.isnan(width)):
        text += f" ± {width:.1f}"
    if row["problems"]:
        text += (
            " (" + ", ".join(f"{count} {status}" for status, count in row["problems"].items()) + ")"
        )
    return text


def build_tables(records: pd.DataFrame, metric: str = "top1") -> list[Table]:
    """Every table of the report, in reading order."""
    summary = with_comparisons(summarize(records, metric), records, metric)
    tables = [
        *accuracy_tables(summary, "model", "strategy", metric),
        *accuracy_tables(summary, "strategy", "model", metric),
    ]
    tables += [rank_table(summary, "strategy"), rank_table(summary, "model")]
    for table in (trivial_table(summary), gain_table(summary), tuning_table(records)):
        tables += [table] if table is not None else []
    tables.append(cost_table(summary))
    failures = failure_table(records)
    tables += [failures] if failures is not None else []
    return tables


INTERVAL_NOTE = (
    "mean ± half the 95% interval over training seeds and test items (Student's t over the "
    "seeds plus the noise of the shared test set; docs/reports.md)"
)
TRIVIAL_MARKS = {"indistinct": "†", "below": "‡"}
ONE_DRAW_MARK = "¹"
UNDERTRAINED_MARK = "↗"
ONE_DRAW_NOTE = (
    f"{ONE_DRAW_MARK} one training draw (one seed): its interval is the test set's noise only "
    "and says nothing about retraining."
)
UNDERTRAINED_NOTE = (
    f"{UNDERTRAINED_MARK} under-trained: validation was still improving when the training "
    "budget ran out (in at least one seed)."
)
ROLE_NOTE = (
    "Cells of a randomly initialised network: full fine-tuning is the network trained from "
    "scratch; the other strategies keep random layers frozen and are random-init features."
)


def marks_note(summary: pd.DataFrame) -> str:
    """The footnotes for the marks ``cell_marks`` put on any of ``summary``'s rows."""
    ok = summary[summary["n"] > 0]
    notes = []
    if "one_draw" in ok and ok["one_draw"].any():
        notes.append(ONE_DRAW_NOTE)
    if "still_improving" in ok and ok["still_improving"].any():
        notes.append(UNDERTRAINED_NOTE)
    return " ".join(notes)


def cell_marks(row) -> str:
    """Marks after a cell's value: under-trained, one training draw (see ``marks_note``)."""
    if not row["n"]:
        return ""
    marks = UNDERTRAINED_MARK if row.get("still_improving") else ""
    return marks + (ONE_DRAW_MARK if row.get("one_draw") else "")


def accuracy_tables(
    summary: pd.DataFrame, rows: str, per: str, metric: str = "top1"
) -> list[Table]:
    """One table per value of ``per``: ``rows`` x dataset, best of each dataset in bold."""
    note = f"{metric} (%), {INTERVAL_NOTE}. Best per dataset in bold."
    if "vs_trivial" in summary and summary["vs_trivial"].isin(TRIVIAL_MARKS).any():
        note += (
            f" {TRIVIAL_MARKS['indistinct']} not distinguishable from the best trivial baseline"
            f" (raw pixels, random features; chosen on validation); {TRIVIAL_MARKS['below']} below it."
        )
    marks = marks_note(summary)
    note += f" {marks}" if marks else ""
    if "role" in summary and summary["role"].ne("").any():
        note += f" {ROLE_NOTE}"
    tables = []
    for name, part in summary.groupby(per, sort=False):
        part = part.assign(text=[_marked_text(row) for _, row in part.iterrows()])
        if "role" in part:  # what a random-init model's cell measures, in its row label
            part = part.assign(
                **{
                    rows: [
                        f"{r[rows]} ({r['role']})" if r["role"] else r[rows]
                        for _, r in part.iterrows()
                    ]
                }
            )
        text = _pivot(part, rows, "text")
        best = _best(_pivot(part, rows, "mean"), higher=True)
        tables.append(
            _table(f"{metric} by {rows} and dataset: {per} {name}", text, best, rows, note)
        )
    return tables


def _marked_text(row: pd.Series) -> str:
    mark = TRIVIAL_MARKS.get(row.get("vs_trivial", ""), "") if row["n"] else ""
    mark = cell_marks(row) + mark
    return cell_text(row) + (f" {mark}" if mark else "")


def average_ranks(summary: pd.DataFrame, of: str) -> pd.DataFrame:
    """Average rank of each ``of`` (strategy or model), per dataset and over all datasets.

    Within every (other component, dataset) pair the ``of`` values are ranked by mean, 1 = best;
    ties share the mean of their ranks, and cells without a value rank last."""
    within = [key for key in GROUP_KEY if key != of]
    ranks = summary.assign(
        rank=summary.groupby(within)["mean"].rank(ascending=False, na_option="bottom")
    )
    table = ranks.pivot_table(
        index=of, columns="dataset", values="rank", aggfunc="mean", sort=False
    )
    table.columns = [str(c) for c in table.columns]
    table["all datasets"] = ranks.groupby(of, sort=False)["rank"].mean()
    return table


def rank_table(summary: pd.DataFrame, of: str) -> Table:
    table = average_ranks(summary, of)
    other = KINDS[next(key for key in GROUP_KEY if key not in (of, "dataset"))]
    note = f"Average rank of each {of} (1 = best) among its peers, averaged over the {other} on each dataset; failed cells rank last."
    return _table(
        f"Average rank of {KINDS[of]}",
        table.map(lambda v: f"{v:.2f}"),
        _best(table, higher=False),
        of,
        note,
    )


def with_comparisons(summary: pd.DataFrame, records: pd.DataFrame, metric: str) -> pd.DataFrame:
    """``summary`` with each row's gain over training from scratch (``gain``, ``gain_low``,
    ``gain_high``, ``gain_reference``) and over the best trivial baseline (``trivial_gain``,
    ``trivial_low``, ``trivial_high``, ``trivial_reference``, ``vs_trivial``: "above",
    "indistinct" or "below"). Every reference is chosen without the test set: the network
    trained from scratch on the dataset (``init_role``: a random-init model under a strategy
    that trains all of it; the best on validation when there are several), never a
    random-init-features cell, and the trivial baseline with the best validation top-1."""
    from tlbench.report.stats import predictions_by_cell

    predictions = predictions_by_cell(records) if metric == "top1" else {}
    summary = summary.copy()
    summary["from_scratch"] = summary.get("role", pd.Series("", index=summary.index)).eq(
        FROM_SCRATCH
    )
    for column in ("gain", "gain_low", "gain_high", "trivial_gain", "trivial_low", "trivial_high"):
        summary[column] = math.nan
    for column in ("gain_reference", "trivial_reference", "vs_trivial"):
        summary[column] = ""
    for index, row in summary.iterrows():
        if row["n"] == 0 or row["baseline"] or row["trivial"]:
            continue
        scratch = _reference(summary, row["dataset"], "from_scratch")
        if scratch is not None:
            low, mean, high = _difference(row, scratch, predictions)
            summary.loc[index, ["gain", "gain_low", "gain_high"]] = (mean, low, high)
            summary.loc[index, "gain_reference"] = f"{scratch['model']} / {scratch['strategy']}"
        trivial = _reference(summary, row["dataset"], "trivial")
        if trivial is not None:
            low, mean, high = _difference(row, trivial, predictions)
            summary.loc[index, ["trivial_gain", "trivial_low", "trivial_high"]] = (mean, low, high)
            summary.loc[index, "trivial_reference"] = f"{trivial['model']} / {trivial['strategy']}"
            verdict = "above" if low > 0 else "below" if high < 0 else "indistinct"
            summary.loc[index, "vs_trivial"] = verdict
    return summary


def _reference(summary, dataset, kind: str) -> pd.Series | None:
    """The ``kind`` ("from_scratch" or "trivial") row to compare with on ``dataset``: the best
    by validation top-1, else the first in suite order."""
    mask = summary[kind] & (summary["dataset"] == dataset) & (summary["n"] > 0)
    candidates = summary[mask]
    at = reference_position([float(v) for v in candidates["val_mean"]])
    return None if at is None else candidates.iloc[at]


def _difference(row, reference, predictions) -> tuple[float, float, float]:
    """(low, mean, high) of row minus reference in points: a paired bootstrap over test items and
    common seeds when both stored predictions on the same test items, else a normal
    approximation from the two intervals."""
    from tlbench.report.stats import difference_interval

    key = (row["model"], row["dataset"], row["strategy"])
    ref_key = (reference["model"], reference["dataset"], reference["strategy"])
    a, b = predictions.get(key), predictions.get(ref_key)
    if a is not None and b is not None and a.split_hash == b.split_hash:
        seeds = sorted(set(a.correct) & set(b.correct))
        if seeds:
            interval = difference_interval(a.matrix(seeds), b.matrix(seeds))
            return interval.low, row["mean"] - reference["mean"], interval.high
    mean = row["mean"] - reference["mean"]
    widths = [w for w in (row["ci95"], reference["ci95"]) if not math.isnan(w)]
    half = math.sqrt(sum(w**2 for w in widths)) if widths else math.nan
    return mean - half, mean, mean + half


def gains(summary: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """``(rows, references)``: the rows of ``summary`` that have a gain over training from
    scratch (see ``with_comparisons``), and the from-scratch row each was compared with.
    ``None`` when the suite has no from-scratch model with a value."""
    if "gain" not in summary or summary["gain"].isna().all():
        return None
    rows = summary[summary["gain"].notna()]
    return rows, rows[["dataset", "strategy", "gain_reference"]]


def gain_table(summary: pd.DataFrame) -> Table | None:
    found = gains(summary)
    if found is None:
        return None
    rows, _ = found
    rows = rows.assign(label=rows["model"] + " / " + rows["strategy"])
    rows = rows.assign(text=[_signed(r, "gain") for _, r in rows.iterrows()])
    text, gain = _pivot(rows, "label", "text"), _pivot(rows, "label", "gain")
    references = ", ".join(sorted(set(rows["gain_reference"])))
    note = (
        "Points of top-1 over the network trained from scratch (full fine-tuning of the "
        f"randomly initialised model) on the same dataset ({references}; with several, the best "
        "on validation), whatever the row's strategy; random-init-features cells are never the "
        "reference. ± half the 95% interval of the paired difference over test items and seeds."
    )
    return _table(
        "Gain over training from scratch", text, _best(gain, higher=True), "model / strategy", note
    )


def trivial_table(summary: pd.DataFrame) -> Table | None:
    """Every cell against the best trivial baseline of its dataset; a dataset where nothing is
    above it cannot measure transfer, and the note says so."""
    if "trivial_gain" not in summary or summary["trivial_gain"].isna().all():
        return None
    rows = summary[summary["trivial_gain"].notna()]
    rows = rows.assign(label=rows["model"] + " / " + rows["strategy"])
    rows = rows.assign(
        text=[_signed(r, "trivial") + _mark(r["vs_trivial"]) for _, r in rows.iterrows()]
    )
    text, gain = _pivot(rows, "label", "text"), _pivot(rows, "label", "trivial_gain")
    lines = []
    for dataset, part in rows.groupby("dataset", sort=False):
        above = int((part["vs_trivial"] == "above").sum())
        reference = part["trivial_reference"].iloc[0]
        verdict = (
            "no cell is above it beyond the noise: this target cannot show transfer"
            if above == 0
            else f"{above} of {len(part)} cells are above it beyond the noise"
        )
        lines.append(f"{dataset}: against {reference}, {verdict}")
    note = (
        "Points of top-1 over the best trivial baseline of each dataset (raw pixels or random "
        "features through the same probe; the best on validation), ± half the 95% interval of "
        f"the paired difference. {TRIVIAL_MARKS['indistinct']} inside the noise, "
        f"{TRIVIAL_MARKS['below']} below. " + "; ".join(lines) + "."
    )
    return _table(
        "Gain over the best trivial baseline",
        text,
        _best(gain, higher=True),
        "model / strategy",
        note,
    )


def _signed(row: pd.Series, prefix: str) -> str:
    names = {
        "gain": ("gain", "gain_low", "gain_high"),
        "trivial": ("trivial_gain", "trivial_low", "trivial_high"),
    }
    mean, low, high = (row[c] for c in names[prefix])
    if math.isnan(mean):
        return MISSING
    if math.isnan(low) or math.isnan(high):
        return f"{mean:+.1f}"
    return f"{mean:+.1f} ± {(high - low) / 2:.1f}"


def _mark(verdict: str) -> str:
    mark = TRIVIAL_MARKS.get(verdict, "")
    return f" {mark}" if mark else ""


def tuning_budgets(records: pd.DataFrame) -> pd.DataFrame:
    """Per strategy, what tuning cost each cell (``tlbench.report.records.tuning``): mean
    configurations tried, epochs and seconds spent tuning, and the schedules used."""
    ok = records[records["status"] == "ok"]
    rows = []
    for strategy, part in ok.groupby("strategy", sort=False):
        found = [tuning(h) for h in part.get("hparams", ())]
        found = [t for t in found if t]
        if not found:
            continue

        def mean(key, found=found):
            values = [t[key] for t in found if isinstance(t.get(key), int | float)]
            return sum(values) / len(values) if values else math.nan

        schedules = sorted({str(t["schedule"]) for t in found if t.get("schedule")})
        rows.append(
            {
                "strategy": strategy,
                "cells": len(found),
                "configurations": mean("configurations"),
                "epochs": mean("epochs"),
                "train_s": mean("train_s"),
                "schedule": ", ".join(schedules) or MISSING,
            }
        )
    return pd.DataFrame(rows)


def tuning_table(records: pd.DataFrame) -> Table | None:
    """Each strategy's tuning budget side by side, so unequal tuning is visible."""
    budgets = tuning_budgets(records)
    if budgets.empty:
        return None
    formats = {"configurations": "{:.1f}", "epochs": "{:.1f}", "train_s": "{:.1f}"}
    text = pd.DataFrame(
        {
            "strategy": budgets["strategy"],
            "configurations tried": budgets["configurations"].map(
                lambda v: MISSING if pd.isna(v) else formats["configurations"].format(v)
            ),
            "epochs tuning": budgets["epochs"].map(
                lambda v: MISSING if pd.isna(v) else formats["epochs"].format(v)
            ),
            "seconds tuning": budgets["train_s"].map(
                lambda v: MISSING if pd.isna(v) else formats["train_s"].format(v)
            ),
            "schedule": budgets["schedule"],
        }
    )
    best = pd.DataFrame(False, index=text.index, columns=text.columns)
    note = (
        "Mean per cell over the strategy's cells: hyperparameter configurations tried, epochs "
        "and seconds spent choosing them (before the refit). Strategies tuned with unequal "
        "budgets are compared with that in mind; records older than the tuning field show "
        "their sweep's length and the epochs its schedule trained."
    )
    return Table("Tuning budget per strategy", text, best, note)


def cost_table(summary: pd.DataFrame) -> Table:
    """Per model and strategy: trainable parameters (median over datasets), their share of
    all parameters, mean wall time per cell and peak memory; the cheapest of each in bold."""
    grouped = summary.groupby(["model", "strategy"], sort=False)
    costs = grouped.agg(
        trainable=("trainable_params", "median"),
        total=("total_params", "median"),
        wall=("wall_s", "mean"),
        peak=("peak_mem_mb", "max"),
    )
    costs.index = [f"{model} / {strategy}" for model, strategy in costs.index]
    values = pd.DataFrame(
        {
            "trainable params": costs["trainable"],
            "trainable %": 100 * costs["trainable"] / costs["total"],
            "wall s / cell": costs["wall"],
            "peak memory MB": costs["peak"],
        }
    )
    formats = {
        "trainable params": "{:,.0f}",
        "trainable %": "{:.2f}",
        "wall s / cell": "{:.1f}",
        "peak memory MB": "{:,.0f}",
    }
    text = values.apply(
        lambda col: col.map(lambda v: MISSING if pd.isna(v) else formats[col.name].format(v))
    )
    note = "Trainable parameters: median over datasets. Wall time: mean per cell, failed cells included. Least of each in bold."
    return _table("Cost", text, _best(values, higher=False), "model / strategy", note)


def failures(records: pd.DataFrame) -> pd.DataFrame:
    """Every cell whose last record is not ok, with the first line of its error."""
    failed = records[records["status"] != "ok"]
    frame = failed[[*GROUP_KEY, "seed", "status"]].reset_index(drop=True)
    frame["error"] = [_error_line(row) for _, row in failed.iterrows()]
    return frame


def failure_table(records: pd.DataFrame) -> Table | None:
    text = failures(records).astype(str)
    if text.empty:
        return None
    best = pd.DataFrame(False, index=text.index, columns=text.columns)
    return Table(
        f"Cells that did not finish ({len(text)})",
        text,
        best,
        "Each is the last record of its cell.",
    )


def _error_line(row: pd.Series) -> str:
    message = row.get("error.message")
    if not isinstance(message, str) or not message:
        return ""
    line = " ".join(message.split())  # whole: the terminal wraps it, a page too
    error_type, step = row.get("error.type"), row.get("error.step")
    if isinstance(error_type, str) and error_type:
        line = f"{error_type}: {line}"
    if pd.notna(step):
        line += f" (step {int(step)})"
    return line


def _pivot(part: pd.DataFrame, rows: str, values: str) -> pd.DataFrame:
    """rows x dataset, in the order the suite lists them (pivot would sort alphabetically)."""
    table = part.pivot(index=rows, columns="dataset", values=values)
    return table.reindex(index=part[rows].unique(), columns=part["dataset"].unique())


def _best(values: pd.DataFrame, higher: bool) -> pd.DataFrame:
    values = values.apply(pd.to_numeric, errors="coerce")
    target = values.max() if higher else values.min()
    return values.eq(target) & values.notna()


def _table(title: str, text: pd.DataFrame, best: pd.DataFrame, label: str, note: str) -> Table:
    """Move the row labels into the first column, so every output format shows them alike."""
    text = text.fillna(MISSING).rename_axis(index=label, columns=None).reset_index()
    text.columns = [str(c) for c in text.columns]
    best = best.rename_axis(index=label, columns=None).reset_index()
    best[label] = False
    best.columns = text.columns
    return Table(title, text, best.astype(bool), note)
