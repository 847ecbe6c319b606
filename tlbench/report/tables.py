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
from tlbench.report.records import GROUP_KEY, STATUSES
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
    }
    return "".join(replacements.get(char, char) for char in str(text))


def summarize(records: pd.DataFrame, metric: str = "top1") -> pd.DataFrame:
    """One row per (model, dataset, strategy), in suite order: ``seeds`` (records), ``n``
    (seeds with a value), ``mean``, ``std``, ``ci95`` (half-width, Student t), ``status``
    (``ok`` when any seed has a value, else the most common failure), ``problems``
    ({status: count} of the seeds that did not finish ok), ``baseline`` and cost figures."""
    column = f"metrics.{metric}"
    if column not in records:
        known = sorted(c.removeprefix("metrics.") for c in records if c.startswith("metrics."))
        raise UserError(
            f"metric {metric!r} is in no record; recorded metrics: {', '.join(known) or 'none'}"
        )
    groups = records.groupby(GROUP_KEY, sort=False)
    return pd.DataFrame([_summarize_group(key, group, column) for key, group in groups])


def _summarize_group(key: tuple, group: pd.DataFrame, column: str) -> dict:
    values = group.loc[group["status"] == "ok", column].dropna()
    n = len(values)
    std = values.std(ddof=1) if n >= 2 else math.nan
    problems = group.loc[group["status"] != "ok", "status"].value_counts()
    problems = {status: int(problems[status]) for status in STATUSES if status in problems}
    return {
        **dict(zip(GROUP_KEY, key, strict=True)),
        "baseline": bool(group["baseline"].any()),
        "seeds": len(group),
        "n": n,
        "mean": values.mean() if n else math.nan,
        "std": std,
        "ci95": t_quantile(n - 1) * std / math.sqrt(n) if n >= 2 else math.nan,
        "status": "ok" if n else _dominant(problems),
        "problems": problems,
        "trainable_params": group["cost.trainable_params"].median(),
        "total_params": group["cost.total_params"].median(),
        "wall_s": group["cost.wall_s"].mean(),
        "peak_mem_mb": group["cost.peak_mem_mb"].max(),
    }


def t_quantile(dof: int) -> float:
    from scipy import stats  # deferred: scipy's import is slow and only statistics need it

    return float(stats.t.ppf(0.5 + CI_LEVEL / 2, dof))


def _dominant(problems: dict) -> str:
    # Most frequent failure; ties go to the earlier status in STATUSES (dict order).
    return max(problems, key=problems.get) if problems else "no value"


def cell_text(row: pd.Series | dict, spread: str = "ci95") -> str:
    """``81.3 ± 0.4``, ``81.3`` (one seed), ``81.3 ± 0.4 (1 failed)`` or the failure itself."""
    if row["n"] == 0:
        return row["status"]
    text = f"{row['mean']:.1f}"
    if row["n"] >= 2:
        text += f" ± {row[spread]:.1f}"
    if row["problems"]:
        text += (
            " (" + ", ".join(f"{count} {status}" for status, count in row["problems"].items()) + ")"
        )
    return text


def build_tables(records: pd.DataFrame, metric: str = "top1") -> list[Table]:
    """Every table of the report, in reading order."""
    summary = summarize(records, metric)
    tables = [
        *accuracy_tables(summary, "model", "strategy", metric),
        *accuracy_tables(summary, "strategy", "model", metric),
    ]
    tables += [rank_table(summary, "strategy"), rank_table(summary, "model")]
    gain = gain_table(summary)
    tables += [gain] if gain is not None else []
    tables.append(cost_table(summary))
    failures = failure_table(records)
    tables += [failures] if failures is not None else []
    return tables


def accuracy_tables(
    summary: pd.DataFrame, rows: str, per: str, metric: str = "top1"
) -> list[Table]:
    """One table per value of ``per``: ``rows`` x dataset, best of each dataset in bold."""
    note = f"{metric} (%), mean ± {CI_LEVEL:.0%} CI over seeds (Student t); one seed: its value. Best per dataset in bold."
    tables = []
    for name, part in summary.groupby(per, sort=False):
        part = part.assign(text=[cell_text(row) for _, row in part.iterrows()])
        text = _pivot(part, rows, "text")
        best = _best(_pivot(part, rows, "mean"), higher=True)
        tables.append(
            _table(f"{metric} by {rows} and dataset: {per} {name}", text, best, rows, note)
        )
    return tables


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


def gains(summary: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """``(rows, reference)``: the non-baseline rows of ``summary`` with ``gain``, the points of
    mean over the best from-scratch result on the same dataset, and that best result per
    dataset. ``None`` when the suite has no from-scratch model with a value."""
    base = summary[summary["baseline"] & (summary["n"] > 0)]
    if base.empty:
        return None
    reference = base.loc[base.groupby("dataset", sort=False)["mean"].idxmax()].set_index("dataset")
    rows = summary[~summary["baseline"]]
    return rows.assign(gain=rows["mean"] - rows["dataset"].map(reference["mean"])), reference


def gain_table(summary: pd.DataFrame) -> Table | None:
    found = gains(summary)
    if found is None:
        return None
    rows, reference = found
    rows = rows.assign(label=rows["model"] + " / " + rows["strategy"])
    rows = rows.assign(text=[_gain_text(row, reference["mean"]) for _, row in rows.iterrows()])
    text, gain = _pivot(rows, "label", "text"), _pivot(rows, "label", "gain")
    described = ", ".join(
        f"{dataset} {r['mean']:.1f} ({r.model} / {r.strategy})"
        for dataset, r in reference.iterrows()
    )
    note = f"Points of mean top-1 over the best from-scratch result per dataset: {described}."
    return _table(
        "Gain over training from scratch", text, _best(gain, higher=True), "model / strategy", note
    )


def _gain_text(row: pd.Series, reference: pd.Series) -> str:
    if row["dataset"] not in reference:
        return MISSING
    return row["status"] if row["n"] == 0 else f"{row['gain']:+.1f}"


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
    line = message.strip().splitlines()[0][:200]
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
