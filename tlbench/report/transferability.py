"""The transferability section of a report: did the estimators rank the source models the way
fine-tuning did, and how much cheaper were they?

``transferability_tables(cells_df, estimates)`` returns three pandas frames:

``scores``       one row per (dataset, model): each estimator's score next to each strategy's
                 top-1 (means over seeds; ok records only).
``correlation``  one row per (dataset, estimator, strategy): Kendall's tau, its bootstrap interval
                 over source models and its p-value, and weighted tau, between the estimator's
                 scores and the strategy's accuracies across models. Per dataset, because no
                 estimator is reliable everywhere (TLlib: weighted tau -0.26..0.92). Shown only
                 where significance is reachable: with n models the smallest two-sided p of
                 Kendall's exact test is 2/n! (0.33 for 3, 0.083 for 4), so below 5 models the
                 table says "too few sources" instead of a number that cannot be evidence.
``time``         one row per (estimator, strategy): seconds the estimator took (``wall_s`` +
                 ``features_s``) against the seconds fine-tuning took (cells' ``cost.wall_s``)
                 on the same (model, dataset, seed) triples, their ratio, and whether it meets
                 the goal of ``SPEEDUP_GOAL`` x.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence

import pandas as pd

from tlbench.transferability import rank_correlation

PAIR = ["model", "dataset", "seed"]
MISSING = "—"
ALPHA = 0.05  # significance level the "enough sources" rule is stated for
BOOTSTRAP_SAMPLES = 2000
CI_LEVEL = 0.95
SPEEDUP_GOAL = 100.0  # an estimator should cost at most 1% of fine-tuning the same sources
TOO_FEW = "too few sources"


def transferability_tables(
    cells_df: pd.DataFrame, estimates: Sequence[Mapping]
) -> dict[str, pd.DataFrame]:
    """The section's frames from the report's cell frame (``tlbench.report.load_records``) and the
    run's estimate records (``tlbench.transferability.load_estimates``)."""
    est = estimates_frame(estimates)
    cells = _ok_cells(cells_df)
    return {
        "scores": scores_table(est, cells),
        "correlation": correlation_table(est, cells),
        "time": time_table(est, cells),
    }


def estimates_frame(estimates: Sequence[Mapping]) -> pd.DataFrame:
    columns = [*PAIR, "estimator", "status", "score", "wall_s", "features_s", "features_cached"]
    frame = pd.DataFrame([{c: r.get(c) for c in columns} for r in estimates], columns=columns)
    for column in ("score", "wall_s", "features_s"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame


def _ok_cells(cells_df: pd.DataFrame) -> pd.DataFrame:
    columns = [*PAIR, "strategy", "top1", "wall_s"]
    if cells_df is None or cells_df.empty:
        return pd.DataFrame(columns=columns)
    ok = cells_df[cells_df["status"] == "ok"]
    return pd.DataFrame(
        {
            **{c: ok[c] for c in [*PAIR, "strategy"]},
            "top1": pd.to_numeric(ok.get("metrics.top1"), errors="coerce"),
            "wall_s": pd.to_numeric(ok.get("cost.wall_s"), errors="coerce"),
        },
        columns=columns,
    )


def _mean_over_seeds(frame: pd.DataFrame, column: str, value: str) -> pd.DataFrame:
    """(dataset, model) rows, one column per ``column`` value; means over seeds."""
    if frame.empty:
        return pd.DataFrame(index=pd.MultiIndex.from_tuples([], names=["dataset", "model"]))
    return frame.pivot_table(
        index=["dataset", "model"], columns=column, values=value, aggfunc="mean", sort=False
    )


def scores_table(est: pd.DataFrame, cells: pd.DataFrame) -> pd.DataFrame:
    datasets = _ordered([*est["dataset"], *cells["dataset"]])
    models = _ordered([*est["model"], *cells["model"]])
    present = set(zip(est["dataset"], est["model"], strict=True)) | set(
        zip(cells["dataset"], cells["model"], strict=True)
    )
    pairs = [(d, m) for d in datasets for m in models if (d, m) in present]  # grouped per dataset
    if not pairs:
        return pd.DataFrame(columns=["dataset", "model"])
    index = pd.MultiIndex.from_tuples(pairs, names=["dataset", "model"])
    scores = _mean_over_seeds(est[est["status"] == "ok"], "estimator", "score").reindex(
        index=index, columns=_ordered(est["estimator"])
    )
    top1 = _mean_over_seeds(cells, "strategy", "top1").reindex(
        index=index, columns=_ordered(cells["strategy"])
    )
    top1.columns = [f"{s} top1" for s in top1.columns]
    return scores.join(top1).reset_index()


def correlation_table(est: pd.DataFrame, cells: pd.DataFrame) -> pd.DataFrame:
    ok = est[est["status"] == "ok"]
    scores = _mean_over_seeds(ok, "estimator", "score")
    top1 = _mean_over_seeds(cells, "strategy", "top1")
    rows = []
    for dataset in _ordered(est["dataset"]):
        for estimator in _ordered(est["estimator"]):
            for strategy in _ordered(cells["strategy"]):
                rows.append(
                    {
                        "dataset": dataset,
                        "estimator": estimator,
                        "strategy": strategy,
                        **_correlate(scores, top1, dataset, estimator, strategy),
                    }
                )
    columns = [
        "dataset",
        "estimator",
        "strategy",
        "models",
        "kendall_tau",
        "tau_ci_low",
        "tau_ci_high",
        "kendall_p",
        "weighted_tau",
        "min_p",
        "powered",
    ]
    return pd.DataFrame(rows, columns=columns)


def _correlate(scores: pd.DataFrame, top1: pd.DataFrame, dataset, estimator, strategy) -> dict:
    empty = {
        "models": 0,
        "kendall_tau": math.nan,
        "tau_ci_low": math.nan,
        "tau_ci_high": math.nan,
        "kendall_p": math.nan,
        "weighted_tau": math.nan,
        "min_p": math.nan,
        "powered": False,
    }
    if estimator not in scores.columns or strategy not in top1.columns:
        return empty
    s = _column_for(scores, dataset, estimator)
    a = _column_for(top1, dataset, strategy)
    both = s.to_frame("s").join(a.to_frame("a"), how="inner").dropna()
    result = rank_correlation(both["s"].tolist(), both["a"].tolist())
    n = result["n"]
    powered = min_reachable_p(n) < ALPHA
    low, high = (
        tau_interval(both["s"].to_numpy(float), both["a"].to_numpy(float))
        if powered
        else (math.nan, math.nan)
    )
    return {
        **empty,
        "models": n,
        "kendall_tau": result["kendall_tau"],
        "tau_ci_low": low,
        "tau_ci_high": high,
        "kendall_p": result["kendall_p"],
        "weighted_tau": result["weighted_tau"],
        "min_p": min_reachable_p(n),
        "powered": powered,
    }


def min_reachable_p(n: int) -> float:
    """The smallest two-sided p-value Kendall's exact test can give for ``n`` untied pairs: both
    perfect orderings out of n! permutations, 2 / n!."""
    return min(1.0, 2.0 / math.factorial(n)) if n >= 2 else 1.0


def tau_interval(
    scores, accuracies, samples: int = BOOTSTRAP_SAMPLES, level: float = CI_LEVEL, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of Kendall's tau-b, resampling source models with
    replacement (repeated models are ties, which tau-b accounts for); resamples where one side
    is constant are left out. Deterministic for a given ``seed``."""
    import numpy as np

    rng = np.random.default_rng(seed)
    index = rng.integers(0, len(scores), size=(samples, len(scores)))
    taus = kendall_tau_b(np.asarray(scores)[index], np.asarray(accuracies)[index])
    taus = taus[np.isfinite(taus)]
    if not len(taus):
        return math.nan, math.nan
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(taus, [tail, 100 - tail])
    return float(low), float(high)


def kendall_tau_b(x, y):
    """Kendall's tau-b of each row pair of ``x`` and ``y`` (shape (rows, n)), vectorised: NaN
    where a row has no untied pair on one side."""
    import numpy as np

    dx = np.sign(x[:, :, None] - x[:, None, :])
    dy = np.sign(y[:, :, None] - y[:, None, :])
    upper = np.triu(np.ones(x.shape[1:] * 2, dtype=bool), k=1)
    concordance = (dx * dy)[:, upper].sum(1)
    untied_x = (dx[:, upper] != 0).sum(1)
    untied_y = (dy[:, upper] != 0).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return concordance / np.sqrt(untied_x * untied_y)


def _column_for(frame: pd.DataFrame, dataset, column) -> pd.Series:
    if dataset not in frame.index.get_level_values("dataset"):
        return pd.Series(dtype=float)
    return frame.xs(dataset, level="dataset")[column]


def time_table(est: pd.DataFrame, cells: pd.DataFrame) -> pd.DataFrame:
    """Estimator seconds vs. fine-tuning seconds, summed over the triples both finished."""
    ok = est[est["status"] == "ok"].assign(
        total_s=lambda f: f["wall_s"].fillna(0) + f["features_s"].fillna(0)
    )
    rows = []
    for estimator in _ordered(est["estimator"]):
        mine = ok[ok["estimator"] == estimator].set_index(PAIR)
        for strategy in _ordered(cells["strategy"]):
            theirs = cells[cells["strategy"] == strategy].groupby(PAIR)["wall_s"].sum()
            shared = mine.index.intersection(theirs.index)
            estimator_s = float(mine.loc[shared, "total_s"].sum()) if len(shared) else math.nan
            finetune_s = float(theirs.loc[shared].sum()) if len(shared) else math.nan
            cached = (
                int(mine.loc[shared, "features_cached"].fillna(False).astype(bool).sum())
                if len(shared)
                else 0
            )
            speedup = finetune_s / estimator_s if estimator_s and estimator_s > 0 else math.nan
            rows.append(
                {
                    "estimator": estimator,
                    "strategy": strategy,
                    "pairs": len(shared),
                    "estimator_s": estimator_s,
                    "finetune_s": finetune_s,
                    "speedup": speedup,
                    f"{SPEEDUP_GOAL:.0f}x_cheaper": None
                    if math.isnan(speedup)
                    else bool(speedup >= SPEEDUP_GOAL),
                    "inputs_from_cache": cached,
                }
            )
    columns = [
        "estimator",
        "strategy",
        "pairs",
        "estimator_s",
        "finetune_s",
        "speedup",
        f"{SPEEDUP_GOAL:.0f}x_cheaper",
        "inputs_from_cache",
    ]
    return pd.DataFrame(rows, columns=columns)


def _ordered(values) -> list:
    """Distinct values in first-seen order (the suite's order), NaN dropped."""
    return [v for v in dict.fromkeys(values) if not (isinstance(v, float) and math.isnan(v))]


# ---------------------------------------------------------------------------------------- rendering

TITLES = {
    "scores": "Transferability scores (higher = predicted to transfer better) and actual top-1 (%)",
    "correlation": "Rank correlation between estimator scores and actual top-1 across models, per dataset",
    "time": "Estimator time (features/logits + scoring) vs. fine-tuning time on the same models",
}
NOTES = {
    "correlation": (
        f"Kendall's tau-b with a {CI_LEVEL:.0%} percentile bootstrap interval over source models "
        f"({BOOTSTRAP_SAMPLES} resamples) and its exact p-value, shown where n models can reach "
        f"p < {ALPHA} (n >= 5; the smallest p is 2/n!: 0.33 for 3 models, 0.083 for 4); "
        f"otherwise '{TOO_FEW}'."
    ),
    "time": (
        f"The goal is an estimator at least {SPEEDUP_GOAL:.0f}x cheaper than fine-tuning the same "
        "sources; inputs_from_cache counts pairs whose features were already cached."
    ),
}
DIGITS = {
    "kendall_tau": 2,
    "weighted_tau": 2,
    "kendall_p": 3,
    "estimator_s": 1,
    "finetune_s": 1,
    "speedup": 1,
}
# What the correlation table shows instead of the raw columns (see NOTES).
CORRELATION_SHOWN = ["dataset", "estimator", "strategy", "models", "kendall_tau", "tau_95ci"]
CORRELATION_SHOWN += ["kendall_p", "weighted_tau"]


def formatted(name: str, frame: pd.DataFrame) -> pd.DataFrame:
    """Strings for display: scores to 3 significant places, top-1 to 1 decimal, NaN as a dash;
    correlations only where enough sources exist for significance (else "too few sources")."""
    if name == "correlation" and "powered" in frame:
        return _shown_correlation(frame)
    return frame.apply(lambda column: column.map(lambda v, c=column.name: _fmt(name, c, v)))


def _shown_correlation(frame: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for row in frame.to_dict("records"):
        shown = {c: _fmt("correlation", c, row[c]) for c in ("dataset", "estimator", "strategy")}
        shown["models"] = str(row["models"])
        if not row["powered"]:
            enough = f" ({row['models']}: min p {row['min_p']:.2g})" if row["models"] >= 2 else ""
            shown.update(
                kendall_tau=TOO_FEW + enough,
                tau_95ci=MISSING,
                kendall_p=MISSING,
                weighted_tau=MISSING,
            )
        else:
            interval = (row["tau_ci_low"], row["tau_ci_high"])
            shown.update(
                kendall_tau=_fmt("correlation", "kendall_tau", row["kendall_tau"]),
                tau_95ci=MISSING
                if any(math.isnan(v) for v in interval)
                else f"[{interval[0]:.2f}, {interval[1]:.2f}]",
                kendall_p=_fmt("correlation", "kendall_p", row["kendall_p"]),
                weighted_tau=_fmt("correlation", "weighted_tau", row["weighted_tau"]),
            )
        rows.append(shown)
    return pd.DataFrame(rows, columns=CORRELATION_SHOWN)


def _fmt(table: str, column, value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if not isinstance(value, float):
        return str(value)
    if column in DIGITS:
        return f"{value:.{DIGITS[column]}f}" + ("x" if column == "speedup" else "")
    if str(column).endswith(" top1"):
        return f"{value:.1f}"
    return f"{value:.4g}"


def transferability_markdown(tables: Mapping[str, pd.DataFrame]) -> str:
    """The section as Markdown: a heading, then each table (``DataFrame.to_markdown``)."""
    parts = ["## Transferability estimation", ""]
    for name, frame in tables.items():
        parts += [f"### {TITLES.get(name, name)}", ""]
        if frame.empty:
            parts += ["No estimates or no finished cells to compare.", ""]
            continue
        parts += [formatted(name, frame).to_markdown(index=False, disable_numparse=True), ""]
        parts += [f"_{NOTES[name]}_", ""] if name in NOTES else []
    return "\n".join(parts)


def render_transferability(tables: Mapping[str, pd.DataFrame], console) -> None:
    """Print each table to a ``rich.console.Console``."""
    from rich.table import Table as RichTable

    for name, frame in tables.items():
        if frame.empty:
            console.print(f"{TITLES.get(name, name)}: nothing to show yet.")
            continue
        table = RichTable(title=TITLES.get(name, name), title_justify="left")
        text = formatted(name, frame)
        for column in text.columns:
            table.add_column(
                str(column),
                justify="left"
                if column in ("dataset", "model", "estimator", "strategy")
                else "right",
            )
        for row in text.itertuples(index=False):
            table.add_row(*row)
        if name in NOTES:
            table.caption, table.caption_justify = NOTES[name], "left"
        console.print(table)


def transferability_html(tables: Mapping[str, pd.DataFrame]) -> str:
    """The section as HTML for the self-contained report page (``DataFrame.to_html``)."""
    parts = ["<h2>Transferability estimation</h2>"]
    for name, frame in tables.items():
        parts.append(f"<h3>{TITLES.get(name, name)}</h3>")
        if frame.empty:
            parts.append("<p>No estimates or no finished cells to compare.</p>")
            continue
        parts.append(formatted(name, frame).to_html(index=False, classes="sortable", border=0))
        if name in NOTES:
            parts.append(f'<p class="note">{html.escape(NOTES[name])}</p>')
    return "\n".join(parts)


def section_for_runs(cells_df: pd.DataFrame, run_dirs) -> dict[str, pd.DataFrame] | None:
    """The section's tables when any of ``run_dirs`` holds estimates, else ``None``."""
    from tlbench.transferability import load_estimates

    estimates = [e for run_dir in run_dirs for e in load_estimates(run_dir)]
    return transferability_tables(cells_df, estimates) if estimates else None
