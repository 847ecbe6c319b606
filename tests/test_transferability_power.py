"""Rank correlations with power: Kendall's tau with a bootstrap interval over source models and
its p-value, printed only where enough sources exist for significance to be reachable; the time
comparison against fine-tuning states whether the 100x goal is met."""

from __future__ import annotations

import math

import numpy as np
import pytest
from rich.console import Console
from scipy.stats import kendalltau

from tlbench.report.records import records_frame
from tlbench.report.transferability import (
    formatted,
    kendall_tau_b,
    min_reachable_p,
    render_transferability,
    tau_interval,
    transferability_markdown,
    transferability_tables,
)


def cell(model, strategy, top1, wall_s):
    return {
        "suite": "s",
        "model": model,
        "dataset": "digits",
        "strategy": strategy,
        "seed": 0,
        "status": "ok",
        "model_ref": model,
        "metrics": {"top1": top1},
        "cost": {"wall_s": wall_s},
    }


def estimate(model, estimator, score):
    return {
        "kind": "estimate",
        "model": model,
        "dataset": "digits",
        "seed": 0,
        "estimator": estimator,
        "status": "ok",
        "score": score,
        "wall_s": 0.5,
        "features_s": 0.5,
        "features_cached": False,
    }


def tables_for(accuracies, scores, finetune_s=150.0):
    models = [f"m{i}" for i in range(len(accuracies))]
    cells = [
        cell(m, "full-finetune", a, finetune_s) for m, a in zip(models, accuracies, strict=True)
    ]
    estimates = [estimate(m, "logme", s) for m, s in zip(models, scores, strict=True)]
    return transferability_tables(records_frame(cells), estimates)


def test_the_smallest_reachable_p_is_two_over_n_factorial():
    assert min_reachable_p(3) == pytest.approx(1 / 3) and min_reachable_p(4) == pytest.approx(
        1 / 12
    )
    assert min_reachable_p(5) < 0.05 <= min_reachable_p(4)
    exact = kendalltau(range(5), range(5), method="exact").pvalue
    assert min_reachable_p(5) == pytest.approx(exact)


def test_vectorised_tau_b_matches_scipy_with_ties():
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 4, size=(30, 7)), rng.normal(size=(30, 7))
    ours = kendall_tau_b(x.astype(float), y)
    assert ours == pytest.approx([kendalltau(a, b).statistic for a, b in zip(x, y, strict=True)])


def test_four_sources_say_too_few_instead_of_a_tau():
    tables = tables_for([50, 60, 70, 80], [0.1, 0.2, 0.3, 0.4])
    row = tables["correlation"].iloc[0]
    assert row["kendall_tau"] == pytest.approx(1.0) and not row["powered"]  # kept for analysis
    assert math.isnan(row["tau_ci_low"])
    shown = formatted("correlation", tables["correlation"]).iloc[0]
    assert shown["kendall_tau"] == "too few sources (4: min p 0.083)"
    assert shown["tau_95ci"] == shown["kendall_p"] == shown["weighted_tau"] == "—"


def test_enough_sources_show_tau_its_bootstrap_interval_and_p():
    accuracies = [50, 55, 60, 65, 70, 75, 80, 85]
    scores = [0.1, 0.3, 0.2, 0.4, 0.5, 0.7, 0.6, 0.8]  # two neighbouring swaps
    row = tables_for(accuracies, scores)["correlation"].iloc[0]
    assert row["powered"] and row["models"] == 8
    assert row["kendall_tau"] == pytest.approx(kendalltau(scores, accuracies).statistic)
    assert row["tau_ci_low"] < row["kendall_tau"] <= row["tau_ci_high"] <= 1.0
    assert row["kendall_p"] < 0.05
    shown = formatted("correlation", tables_for(accuracies, scores)["correlation"]).iloc[0]
    assert shown["tau_95ci"] == f"[{row['tau_ci_low']:.2f}, {row['tau_ci_high']:.2f}]"


def test_a_perfect_ranking_has_a_degenerate_interval_and_the_bootstrap_is_repeatable():
    assert tau_interval(list(range(6)), list(range(6))) == (1.0, 1.0)
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=10), rng.normal(size=10)
    assert tau_interval(x, y) == tau_interval(x, y)


def test_time_says_whether_the_estimator_is_100x_cheaper_than_fine_tuning():
    cheap = tables_for([1, 2, 3, 4, 5], [1, 2, 3, 4, 5], finetune_s=150.0)["time"].iloc[0]
    assert cheap["speedup"] == pytest.approx(150.0) and cheap["100x_cheaper"]
    costly = tables_for([1, 2, 3, 4, 5], [1, 2, 3, 4, 5], finetune_s=50.0)["time"].iloc[0]
    assert not costly["100x_cheaper"]


def test_the_rendered_section_explains_the_rule():
    tables = tables_for([50, 60, 70, 80], [0.1, 0.2, 0.3, 0.4])
    markdown = transferability_markdown(tables)
    assert "too few sources (4: min p 0.083)" in markdown and "0.083 for 4" in markdown
    console = Console(record=True, width=250)
    render_transferability(tables, console)
    assert "too few sources" in console.export_text()
