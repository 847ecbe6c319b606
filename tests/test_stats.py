"""Intervals over seeds and shared test items, and tests between configurations and models."""

import numpy as np
import pytest

from tlbench.report.stats import (
    accuracy_interval,
    cell_interval,
    difference_interval,
    half_width,
    holm,
    mcnemar,
    normal_interval,
    welch,
)


def _correct(accuracy: float, items: int, seeds: int = 1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random((seeds, items)) < accuracy).astype(np.float32)


def test_a_single_seed_interval_is_the_test_sets_binomial_noise_and_says_so():
    matrix = _correct(0.8, 2000)
    interval = accuracy_interval(matrix)
    binomial = 1.959963984540054 * 100 * (0.8 * 0.2 / 2000) ** 0.5  # 1.75 points
    assert interval.half_width == pytest.approx(binomial, rel=0.05)
    assert interval.one_draw and "one training draw" in interval.method


def test_seeds_that_disagree_widen_the_interval_beyond_the_item_noise():
    items = _correct(0.8, 1000, seeds=1)
    agreeing = np.repeat(items, 3, axis=0)
    rng = np.random.default_rng(1)
    disagreeing = np.stack([(rng.random(1000) < p).astype(np.float32) for p in (0.7, 0.8, 0.9)])
    assert accuracy_interval(disagreeing).half_width > 1.5 * accuracy_interval(agreeing).half_width


def test_identical_seeds_add_nothing_to_the_test_sets_noise():
    one = _correct(0.8, 1000)
    assert accuracy_interval(np.repeat(one, 3, axis=0)).half_width == pytest.approx(
        accuracy_interval(one).half_width, rel=1e-6
    )


def test_the_half_width_is_student_t_when_seeds_are_all_there_is_and_normal_when_items_are():
    from scipy import stats

    assert half_width(4.0, 0.0, 2) == pytest.approx(stats.t.ppf(0.975, 1) * 2.0)
    assert half_width(0.0, 4.0, 2) == pytest.approx(1.959963984540054 * 2.0)
    assert half_width(1e-9, 4.0, 3) < half_width(1.0, 4.0, 3) < half_width(4.0, 4.0, 3)


def test_paired_differences_cancel_the_noise_two_cells_share():
    a = _correct(0.8, 1000, seeds=2)
    b = a.copy()
    b[:, :20] = 1 - b[:, :20]  # B differs from A on 20 items only
    paired = difference_interval(a, b)
    unpaired = (accuracy_interval(a).half_width ** 2 + accuracy_interval(b).half_width ** 2) ** 0.5
    assert paired.half_width < unpaired / 2


def test_the_fallback_without_predictions_adds_the_seed_spread_to_the_binomial_noise():
    spread = normal_interval(np.array([80.0, 82.0]), 1000)
    agreeing = normal_interval(np.array([81.0, 81.0]), 1000)
    one_seed = normal_interval(np.array([81.0]), 1000)
    assert spread.half_width > agreeing.half_width == pytest.approx(one_seed.half_width)
    assert one_seed.one_draw and np.isnan(normal_interval(np.array([80.0]), None).low)


def test_cell_interval_uses_predictions_when_every_seed_has_them():
    from tlbench.report.stats import SeedPredictions

    matrix = _correct(0.8, 500, seeds=2).astype(bool)
    predictions = SeedPredictions("h", {0: matrix[0], 1: matrix[1]})
    values = 100 * matrix.mean(axis=1)
    assert cell_interval(values, predictions).method.startswith("t: seeds + shared")
    assert cell_interval(values, None, 500).method == "t: seeds + binomial"
    assert cell_interval(values, predictions).mean == pytest.approx(values.mean())


def test_welch_needs_two_seeds_a_side_and_spread():
    assert np.isnan(welch([80.0], [75.0, 76.0])[1])
    assert np.isnan(welch([80.0, 80.0], [75.0, 75.0])[1])
    delta, p = welch([80.0, 81.0, 82.0], [76.0, 77.0, 78.0])
    assert delta == pytest.approx(-4.0) and p < 0.05
    assert welch([80.0, 82.0], [80.1, 82.1])[1] > 0.9


def test_mcnemar_counts_discordant_items_over_seeds():
    a = np.array([[1, 1, 0, 0, 1], [1, 0, 0, 1, 1]], dtype=np.float32)
    b = np.array([[1, 0, 1, 0, 1], [1, 0, 0, 0, 1]], dtype=np.float32)
    only_a, only_b, p = mcnemar(a, b)
    assert (only_a, only_b) == (2, 1)
    assert p == pytest.approx(1.0)


def test_a_real_difference_between_two_models_is_significant():
    a = _correct(0.80, 2000, seeds=2)
    b = a.copy()
    b[:, :300] = 0  # B loses 300 images per seed that A had partly right
    assert mcnemar(a, b)[2] < 1e-6


def test_holm_adjusts_in_step_down_order_and_keeps_missing_tests_missing():
    adjusted = holm([0.01, 0.04, np.nan, 0.03])
    assert adjusted[0] == pytest.approx(0.03)  # 3 tests x 0.01
    assert adjusted[3] == pytest.approx(0.06)  # 2 x 0.03
    assert adjusted[1] == pytest.approx(0.06)  # max(1 x 0.04, the step before)
    assert np.isnan(adjusted[2])
