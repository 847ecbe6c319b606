"""The transferability section of a report: did the estimators rank the source models the way
fine-tuning did, and how much cheaper were they?

``transferability_tables(cells_df, estimates)`` returns four pandas frames:

``scores``       one row per (dataset, model): whether the source is realistic or deliberately
                 weakened (``weakened``), each estimator's score next to each strategy's top-1
                 (means over seeds; ok records only).
``ground_truth`` one row per (dataset, strategy, sources): the ranking the estimators must
                 recover, and its own noise: how many seeds each source's mean top-1 averages
                 (flagged below ``MIN_SEEDS``), the best source with its 95% interval
                 (``tlbench.report.stats.cell_interval``, the report's interval) and how many
                 other sources lie inside that interval. ``sources`` is ``all``, and also
                 ``realistic`` when some sources are weakened.
``correlation``  one row per (dataset, estimator, strategy): Kendall's tau, its bootstrap interval
                 over source models and its p-value, and weighted tau, between the estimator's
                 scores and the strategy's accuracies across models, over all sources and
                 (``realistic_*``) over the realistic ones alone. Per dataset, because no
                 estimator is reliable everywhere (TLlib: weighted tau -0.26..0.92). Shown only
                 where significance is reachable: with n models the smallest two-sided p of
                 Kendall's exact test is 2/n! (0.33 for 3, 0.083 for 4), so below 5 models the
                 table says "too few sources" instead of a number that cannot be evidence.
``time``         one row per (estimator, strategy): seconds the estimator took (``wall_s`` +
                 ``features_s``) against the seconds fine-tuning took (cells' ``cost.wall_s``)
                 on the same (model, dataset, seed) triples, their ratio, and whether it meets
                 the goal of ``SPEEDUP_GOAL`` x.

Scores and accuracies are means over seeds; several run directories of one suite configuration
(say, extra seeds run into another directory) combine, and ids configured differently in two of
them are refused (``check_same_configuration``).
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pandas as pd

from tlbench.errors import UserError
from tlbench.report.records import is_baseline, set_options
from tlbench.transferability import rank_correlation

PAIR = ["model", "dataset", "seed"]
MISSING = "—"
ALPHA = 0.05  # significance level the "enough sources" rule is stated for
BOOTSTRAP_SAMPLES = 2000
CI_LEVEL = 0.95
SPEEDUP_GOAL = 100.0  # an estimator should cost at most 1% of fine-tuning the same sources
TOO_FEW = "too few sources"
MIN_SEEDS = 3  # a ground truth averaged over fewer seeds is flagged (issue 25)
ALL, REALISTIC = "all", "realistic"
# Model references that construct a weakened source from another (docs/transferability.md).
WEAKENED_PREFIXES = ("scratch:", "reinit-top:")


def transferability_tables(
    cells_df: pd.DataFrame, estimates: Sequence[Mapping]
) -> dict[str, pd.DataFrame]:
    """The section's frames from the report's cell frame (``tlbench.report.load_records``) and the
    run's estimate records (``tlbench.transferability.load_estimates``)."""
    est = estimates_frame(estimates)
    cells = _ok_cells(cells_df)
    truth = ground_truth(cells_df)
    weak = weakened_models(cells_df, estimates)
    return {
        "scores": scores_table(est, cells, weak),
        "ground_truth": ground_truth_table(truth, weak),
        "correlation": correlation_table(est, cells, weak, truth),
        "time": time_table(est, cells),
    }


def weakened(model_ref: Any, model_card: Any = None) -> bool:
    """A source built to be weak rather than a realistic pretrained model: randomly
    initialised (``scratch:``, or a card with ``weights = "random"``), pretrained weights
    partly re-initialised (``reinit-top:``, card ``reinit_top``), or a trivial baseline (card
    ``trivial_baseline``: raw pixels, random features)."""
    if is_baseline(model_ref, model_card):
        return True
    if isinstance(model_ref, str) and model_ref.startswith(WEAKENED_PREFIXES):
        return True
    card = model_card if isinstance(model_card, Mapping) else {}
    return bool(card.get("reinit_top") or card.get("trivial_baseline"))


def weakened_models(cells_df: pd.DataFrame | None, estimates: Sequence[Mapping]) -> set[str]:
    """Model ids any record (cell or estimate) shows to be ``weakened``."""
    found = {e.get("model") for e in estimates if weakened(e.get("model_ref"))}
    if cells_df is not None and not cells_df.empty:
        cards = cells_df.get("model_card", pd.Series([None] * len(cells_df), index=cells_df.index))
        refs = cells_df.get("model_ref", pd.Series([None] * len(cells_df), index=cells_df.index))
        for model, ref, card in zip(cells_df["model"], refs, cards, strict=True):
            if weakened(ref, card):
                found.add(model)
    return {m for m in found if isinstance(m, str)}


def ground_truth(cells_df: pd.DataFrame | None) -> pd.DataFrame:
    """One row per (dataset, model, strategy) with a value: ``mean`` top-1 over its ok seeds,
    ``n`` (seeds), and the report's 95% interval ``ci_low``/``ci_high`` with its ``interval``
    method (``tlbench.report.tables.summarize``: the same numbers as the main table)."""
    from tlbench.report.tables import summarize

    columns = ["dataset", "model", "strategy", "mean", "n", "ci_low", "ci_high", "interval"]
    if cells_df is None or cells_df.empty:
        return pd.DataFrame(columns=columns)
    summary = summarize(cells_df, "top1")
    return summary.loc[summary["n"] > 0, columns].reset_index(drop=True)


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


def scores_table(est: pd.DataFrame, cells: pd.DataFrame, weak: Iterable[str] = ()) -> pd.DataFrame:
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
    table = scores.join(top1).reset_index()
    table.insert(2, "weakened", table["model"].isin(set(weak)))
    return table


CORRELATION_STATS = [
    "models",
    "kendall_tau",
    "tau_ci_low",
    "tau_ci_high",
    "kendall_p",
    "weighted_tau",
    "min_p",
    "powered",
]


def correlation_table(
    est: pd.DataFrame,
    cells: pd.DataFrame,
    weak: Iterable[str] = (),
    truth: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Tau per (dataset, estimator, strategy) over all sources, ``seeds`` (the fewest seeds any
    ranked source's ground truth averages) and the same over the realistic sources alone
    (``realistic_models``, ``realistic_kendall_tau``, ..., ``realistic_seeds``)."""
    ok = est[est["status"] == "ok"]
    scores = _mean_over_seeds(ok, "estimator", "score")
    top1 = _mean_over_seeds(cells, "strategy", "top1")
    seeds = _seeds_per_source(truth if truth is not None else _seed_counts(cells))
    weak = set(weak)
    rows = []
    for dataset in _ordered(est["dataset"]):
        for estimator in _ordered(est["estimator"]):
            for strategy in _ordered(cells["strategy"]):
                every = _correlate(scores, top1, dataset, estimator, strategy)
                realistic = _correlate(scores, top1, dataset, estimator, strategy, weak)
                rows.append(
                    {
                        "dataset": dataset,
                        "estimator": estimator,
                        "strategy": strategy,
                        **{k: v for k, v in every.items() if k != "sources"},
                        "seeds": _fewest(seeds, dataset, strategy, every["sources"]),
                        **{f"realistic_{k}": realistic[k] for k in CORRELATION_STATS},
                        "realistic_seeds": _fewest(seeds, dataset, strategy, realistic["sources"]),
                    }
                )
    columns = ["dataset", "estimator", "strategy", *CORRELATION_STATS, "seeds"]
    columns += [f"realistic_{k}" for k in CORRELATION_STATS] + ["realistic_seeds"]
    return pd.DataFrame(rows, columns=columns)


def _seed_counts(cells: pd.DataFrame) -> pd.DataFrame:
    counts = cells.dropna(subset=["top1"]).groupby(["dataset", "model", "strategy"], sort=False)
    return counts.size().rename("n").reset_index()


def _seeds_per_source(truth: pd.DataFrame) -> dict[tuple, int]:
    return {
        (d, m, s): int(n)
        for d, m, s, n in zip(
            truth["dataset"], truth["model"], truth["strategy"], truth["n"], strict=True
        )
    }


def _fewest(seeds: Mapping[tuple, int], dataset, strategy, models) -> float:
    counts = [seeds[(dataset, m, strategy)] for m in models if (dataset, m, strategy) in seeds]
    return min(counts) if counts else math.nan


def _correlate(
    scores: pd.DataFrame, top1: pd.DataFrame, dataset, estimator, strategy, leave_out=()
) -> dict:
    """The statistics over the sources with both a score and an accuracy, less ``leave_out``;
    ``sources`` lists the models that entered."""
    empty = {
        "sources": [],
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
    both = both[~both.index.isin(list(leave_out))]
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
        "sources": list(both.index),
        "models": n,
        "kendall_tau": result["kendall_tau"],
        "tau_ci_low": low,
        "tau_ci_high": high,
        "kendall_p": result["kendall_p"],
        "weighted_tau": result["weighted_tau"],
        "min_p": min_reachable_p(n),
        "powered": powered,
    }


GROUND_TRUTH_COLUMNS = [
    "dataset",
    "strategy",
    "sources",
    "models",
    "seeds",
    "max_seeds",
    "few_seeds",
    "best",
    "best_top1",
    "best_ci_low",
    "best_ci_high",
    "interval",
    "within_best",
    "top5_spread",
]


def ground_truth_table(truth: pd.DataFrame, weak: Iterable[str] = ()) -> pd.DataFrame:
    """The ranking each tau is measured against, and how much of it is noise: per (dataset,
    strategy) and source set, the sources ranked, the fewest and most seeds a source's mean
    averages (``few_seeds`` below ``MIN_SEEDS``), the best source with its 95% interval, how
    many other sources' means lie inside that interval (``within_best``: their order among
    themselves is not established) and the gap from the best to the fifth (``top5_spread``)."""
    weak = set(weak)
    rows = []
    for (dataset, strategy), group in truth.groupby(["dataset", "strategy"], sort=False):
        subsets = [(ALL, group)]
        if weak & set(group["model"]):
            subsets.append((REALISTIC, group[~group["model"].isin(weak)]))
        for name, part in subsets:
            if len(part):
                rows.append(
                    {"dataset": dataset, "strategy": strategy, "sources": name, **_noise(part)}
                )
    return pd.DataFrame(rows, columns=GROUND_TRUTH_COLUMNS)


def _noise(part: pd.DataFrame) -> dict:
    ranked = part.sort_values("mean", ascending=False, kind="stable")
    best = ranked.iloc[0]
    others = ranked["mean"].iloc[1:]
    low = float(best["ci_low"])
    return {
        "models": len(ranked),
        "seeds": int(ranked["n"].min()),
        "max_seeds": int(ranked["n"].max()),
        "few_seeds": bool(ranked["n"].min() < MIN_SEEDS),
        "best": best["model"],
        "best_top1": float(best["mean"]),
        "best_ci_low": low,
        "best_ci_high": float(best["ci_high"]),
        "interval": best["interval"],
        "within_best": math.nan if math.isnan(low) else int((others >= low).sum()),
        "top5_spread": float(best["mean"] - ranked["mean"].iloc[4])
        if len(ranked) >= 5
        else math.nan,
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
    "ground_truth": "The ranking to recover: actual top-1 per source, and how much of it is noise",
    "correlation": "Rank correlation between estimator scores and actual top-1 across models, per dataset",
    "time": "Estimator time (features/logits + scoring) vs. fine-tuning time on the same models",
}
NOTES = {
    "scores": (
        "Means over seeds. weakened: a source built to be weak (scratch:, reinit-top:, random "
        "weights, a trivial baseline), left out of the realistic taus."
    ),
    "ground_truth": (
        f"Each source's top-1 is its mean over seeds; seeds: the fewest (and most) a source "
        f"averages, marked below {MIN_SEEDS}. best: the best source with the report's "
        f"{CI_LEVEL:.0%} interval (one seed: test-set noise only); within_best: how many other "
        "sources' means lie inside that interval, so their order is not established; "
        "top5_spread: points from the best to the fifth."
    ),
    "correlation": (
        f"Kendall's tau-b with a {CI_LEVEL:.0%} percentile bootstrap interval over source models "
        f"({BOOTSTRAP_SAMPLES} resamples) and its exact p-value, shown where n models can reach "
        f"p < {ALPHA} (n >= 5; the smallest p is 2/n!: 0.33 for 3 models, 0.083 for 4); "
        f"otherwise '{TOO_FEW}'. Scores and top-1 are means over seeds; seeds: the fewest a "
        f"ranked source's top-1 averages, marked below {MIN_SEEDS}. realistic_*: the same over "
        "the sources that are not deliberately weakened (when some are)."
    ),
    "time": (
        f"The goal is an estimator at least {SPEEDUP_GOAL:.0f}x cheaper than fine-tuning the same "
        "sources; inputs_from_cache counts pairs whose features were already cached."
    ),
}
DIGITS = {
    "top5_spread": 1,
    "kendall_tau": 2,
    "weighted_tau": 2,
    "kendall_p": 3,
    "estimator_s": 1,
    "finetune_s": 1,
    "speedup": 1,
}
# What the correlation table shows instead of the raw columns (see NOTES).
CORRELATION_SHOWN = ["dataset", "estimator", "strategy", "models", "kendall_tau", "tau_95ci"]
CORRELATION_SHOWN += ["kendall_p", "weighted_tau", "seeds"]
REALISTIC_SHOWN = ["realistic_models", "realistic_tau", "realistic_95ci", "realistic_p"]
REALISTIC_SHOWN += ["realistic_seeds"]
GROUND_TRUTH_SHOWN = ["dataset", "strategy", "sources", "models", "seeds", "best", "best_top1"]
GROUND_TRUTH_SHOWN += ["interval", "within_best", "top5_spread"]


def formatted(name: str, frame: pd.DataFrame) -> pd.DataFrame:
    """Strings for display: scores to 3 significant places, top-1 to 1 decimal, NaN as a dash;
    correlations only where enough sources exist for significance (else "too few sources"),
    with the realistic-subset columns beside them when some sources are weakened."""
    if name == "correlation" and "powered" in frame:
        return _shown_correlation(frame)
    if name == "ground_truth" and "few_seeds" in frame:
        return _shown_ground_truth(frame)
    return frame.apply(lambda column: column.map(lambda v, c=column.name: _fmt(name, c, v)))


def seeds_text(fewest, most=None) -> str:
    """``3``, ``1-3``, marked ``(< 3)`` when the fewest is below ``MIN_SEEDS``."""
    if fewest is None or (isinstance(fewest, float) and math.isnan(fewest)):
        return MISSING
    text = str(int(fewest)) if most is None or most == fewest else f"{int(fewest)}-{int(most)}"
    return text + (f" (< {MIN_SEEDS})" if fewest < MIN_SEEDS else "")


def _shown_ground_truth(frame: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for row in frame.to_dict("records"):
        interval = (row["best_ci_low"], row["best_ci_high"])
        best = f"{row['best_top1']:.1f}" + (
            ""
            if any(math.isnan(v) for v in interval)
            else f" [{interval[0]:.1f}, {interval[1]:.1f}]"
        )
        rows.append(
            {
                **{c: str(row[c]) for c in ("dataset", "strategy", "sources", "models", "best")},
                "seeds": seeds_text(row["seeds"], row["max_seeds"]),
                "best_top1": best,
                "interval": row["interval"] or MISSING,
                "within_best": MISSING
                if math.isnan(row["within_best"])
                else f"{int(row['within_best'])} of {row['models'] - 1}",
                "top5_spread": _fmt("ground_truth", "top5_spread", row["top5_spread"]),
            }
        )
    return pd.DataFrame(rows, columns=GROUND_TRUTH_SHOWN)


def _shown_correlation(frame: pd.DataFrame) -> pd.DataFrame:
    subset = "realistic_models" in frame and bool(
        (frame["realistic_models"] != frame["models"]).any()
    )
    rows = []
    for row in frame.to_dict("records"):
        shown = {c: _fmt("correlation", c, row[c]) for c in ("dataset", "estimator", "strategy")}
        shown.update(_shown_tau(row))
        shown["seeds"] = seeds_text(row.get("seeds"))
        if subset:
            realistic = _shown_tau({k: row[f"realistic_{k}"] for k in CORRELATION_STATS})
            shown.update(
                realistic_seeds=seeds_text(row.get("realistic_seeds")),
                realistic_models=realistic["models"],
                realistic_tau=realistic["kendall_tau"],
                realistic_95ci=realistic["tau_95ci"],
                realistic_p=realistic["kendall_p"],
            )
        rows.append(shown)
    return pd.DataFrame(rows, columns=CORRELATION_SHOWN + (REALISTIC_SHOWN if subset else []))


def _shown_tau(row: Mapping) -> dict:
    """models, kendall_tau, tau_95ci, kendall_p and weighted_tau as text ("too few sources"
    where n models cannot reach significance)."""
    shown = {"models": str(row["models"])}
    if not row["powered"]:
        enough = f" ({row['models']}: min p {row['min_p']:.2g})" if row["models"] >= 2 else ""
        return {
            **shown,
            "kendall_tau": TOO_FEW + enough,
            "tau_95ci": MISSING,
            "kendall_p": MISSING,
            "weighted_tau": MISSING,
        }
    interval = (row["tau_ci_low"], row["tau_ci_high"])
    return {
        **shown,
        "kendall_tau": _fmt("correlation", "kendall_tau", row["kendall_tau"]),
        "tau_95ci": MISSING
        if any(math.isnan(v) for v in interval)
        else f"[{interval[0]:.2f}, {interval[1]:.2f}]",
        "kendall_p": _fmt("correlation", "kendall_p", row["kendall_p"]),
        "weighted_tau": _fmt("correlation", "weighted_tau", row["weighted_tau"]),
    }


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
                if column
                in ("dataset", "model", "estimator", "strategy", "sources", "best", "interval")
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
    """The section's tables when any of ``run_dirs`` holds estimates, else ``None``.

    The runs' records combine: an estimate recorded in two runs counts once (the later run's,
    as for cells), and means go over every seed any run recorded, so extra seeds run into
    another directory join the ground truth. Runs that configure a shared id differently are
    refused (``check_same_configuration``)."""
    from tlbench.transferability import load_estimates

    latest: dict[tuple, dict] = {}
    for run_dir in run_dirs:
        for record in load_estimates(run_dir):
            key = (record.get("model"), record.get("dataset"), record.get("seed"))
            latest[(*key, record.get("estimator"))] = {**record, "run_dir": str(run_dir)}
    if not latest:
        return None
    estimates = list(latest.values())
    check_same_configuration(cells_df, estimates)
    return transferability_tables(cells_df, estimates)


def check_same_configuration(cells_df: pd.DataFrame | None, estimates: Sequence[Mapping]) -> None:
    """Refuse, in one line, to combine run directories that configure one model, dataset,
    strategy or estimator id differently (reference, options or recipe version): their means
    over seeds would mix two configurations. Records carry their ``run_dir``; differences
    inside one run directory (an edited suite, resumed) are left to the run's own report."""
    seen: dict[tuple[str, str], tuple[dict, str]] = {}
    for kind, name, config, run_dir in _configurations(cells_df, estimates):
        first, where = seen.setdefault((kind, name), (config, run_dir))
        if config != first and run_dir != where:
            differ = next(k for k in config if config[k] != first.get(k))
            raise UserError(
                f"{where} and {run_dir} configure {kind} {name!r} differently ({differ} "
                f"{_compact(first.get(differ))} vs {_compact(config[differ])}): combine only "
                "runs of one suite configuration (other seeds of the same cells)"
            )


def _configurations(cells_df: pd.DataFrame | None, estimates: Sequence[Mapping]):
    """(kind, id, {reference, options, version}, run_dir) of every component of every record."""
    rows = [] if cells_df is None or cells_df.empty else cells_df.to_dict("records")
    for record in [*rows, *estimates]:
        run_dir = str(record.get("run_dir") or "")
        options = _mapping(record.get("options"))
        versions = _mapping(record.get("versions"))
        kinds = ["model", "dataset", "strategy" if "strategy" in record else "estimator"]
        for kind in kinds:
            version = versions.get(kind)
            if kind == "dataset":
                version = [version, versions.get("protocol")]
            config = {
                "reference": _text(record.get(f"{kind}_ref")),
                "options": set_options(options.get(kind)),
                "version": version,
            }
            yield kind, record.get(kind), config, run_dir


def _mapping(value) -> dict:
    return dict(value) if isinstance(value, Mapping) else {}


def _text(value) -> str | None:
    return value if isinstance(value, str) else None


def _compact(value) -> str:
    return json.dumps(value, sort_keys=True, default=str)
