"""Intervals that include the test set's noise, and tests between cells on the same items."""

import numpy as np
import pytest

from tlbench.report.stats import (
    accuracy_interval,
    difference_interval,
    holm,
    mcnemar,
    normal_interval,
)


def _correct(accuracy: float, items: int, seeds: int = 1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random((seeds, items)) < accuracy).astype(np.float32)


def test_a_single_seed_interval_is_the_test_sets_binomial_noise():
    matrix = _correct(0.8, 2000)
    interval = accuracy_interval(matrix)
    binomial = 1.96 * 100 * (0.8 * 0.2 / 2000) ** 0.5  # 1.75 points
    assert interval.half_width == pytest.approx(binomial, rel=0.15)
    assert interval.low < 100 * matrix.mean() < interval.high
    assert interval.method == "bootstrap: items"


def test_the_bootstrap_interval_covers_the_true_accuracy_about_95_percent_of_the_time():
    covered = sum(
        accuracy_interval(_correct(0.7, 300, seed=trial)).contains(70.0) for trial in range(60)
    )
    assert 52 <= covered <= 60  # 95% of 60 = 57; a broken interval (seeds only) covers ~0


def test_seeds_that_disagree_widen_the_interval_beyond_the_item_noise():
    items = _correct(0.8, 1000, seeds=1)
    agreeing = np.repeat(items, 3, axis=0)
    rng = np.random.default_rng(1)
    disagreeing = np.stack([(rng.random(1000) < p).astype(np.float32) for p in (0.7, 0.8, 0.9)])
    assert accuracy_interval(disagreeing).half_width > 1.5 * accuracy_interval(agreeing).half_width


def test_paired_differences_cancel_the_noise_two_cells_share():
    a = _correct(0.8, 1000, seeds=2)
    b = a.copy()
    b[:, :20] = 1 - b[:, :20]  # B differs from A on 20 items only
    paired = difference_interval(a, b)
    unpaired = (accuracy_interval(a).half_width ** 2 + accuracy_interval(b).half_width ** 2) ** 0.5
    assert paired.half_width < unpaired / 2


def test_the_normal_fallback_adds_the_binomial_noise_to_the_seed_spread():
    only_seeds = normal_interval(np.array([80.0, 82.0]), None)
    with_items = normal_interval(np.array([80.0, 82.0]), 1000)
    assert with_items.half_width > only_seeds.half_width
    assert np.isnan(normal_interval(np.array([80.0]), None).low)


def test_mcnemar_counts_discordant_items_over_seeds():
    a = np.array([[1, 1, 0, 0, 1], [1, 0, 0, 1, 1]], dtype=np.float32)
    b = np.array([[1, 0, 1, 0, 1], [1, 0, 0, 0, 1]], dtype=np.float32)
    only_a, only_b, p = mcnemar(a, b)
    assert (only_a, only_b) == (2, 1)
    assert p == pytest.approx(1.0)


def test_a_one_image_shift_per_seed_is_not_significant():
    """The old paired t-test over two seeds called this p = 0.001."""
    a = _correct(0.8, 2000, seeds=2)
    b = a.copy()
    for seed in range(2):
        wrong = np.flatnonzero(b[seed] == 0)[0]
        b[seed, wrong] = 1  # B gets one more image right on each seed
    assert mcnemar(a, b)[2] > 0.4
    assert mcnemar(a, a)[2] == 1.0


def test_a_real_difference_is_significant():
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
