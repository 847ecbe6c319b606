"""Intervals and tests for a configuration (model x dataset x strategy) measured over seeds.

A cell's top-1 is a mean over a finite test set, and its seeds are a sample of training draws.
The interval of ``cell_interval`` estimates how far that mean can be from the configuration's
expected accuracy (over training draws and over test sets from the same population), the
question Bouthillier et al. (2021) ask of benchmark results. Every seed of a configuration is
scored on the *same* test items (``tlbench.splits.TEST_SEED``), so the correctness matrix
(seeds x items) is a crossed two-way design with random seeds and random items, and the
variance of its mean is, from the ANOVA mean squares (Owen 2007, "The pigeonhole bootstrap"):

    Var(mean) = sigma2_items / N + sigma2_seeds / n + sigma2_residual / (n N)
              = s^2 / n  +  max(0, MS_items - MS_residual) / (n N)

where ``s`` is the standard deviation of the seeds' accuracies (their spread already holds each
seed's own test-set noise, so it is not added twice) and the second term is the noise the seeds
share because they share the test items. The interval is Student's t with Satterthwaite's
degrees of freedom (n - 1 for the seed term, N - 1 for the item term): with two seeds whose
spread dominates, about t with 1 df; with one seed it is the test set's noise only (one training
draw: nothing is known about retraining). Without stored predictions the item term takes its
largest possible value, the binomial p(1-p)/N (seeds that agree on every item): conservative.
A simulation in tests/test_interval_coverage.py (docs/reports.md has its table) shows coverage
within 0.93-0.97 of the nominal 95% for 2-5 seeds, seed SD 0-4.4 points and 359 or 2000 items.
The resampling bootstrap this replaces under-covered with 2-3 seeds (it shrinks the seeds'
variance by (n - 1)/n and has no t correction).

Two configurations scored on the same items are compared with Welch's t-test on their seeds'
accuracies (``welch``): the question is whether the configurations differ, retraining noise
included, not whether two fixed models do. With one seed a side only the trained models can be
compared: McNemar's exact test on their discordant items (``mcnemar``). Many comparisons are
corrected with Holm's step-down method (Holm 1979).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

CI_LEVEL = 0.95
Z = 1.959963984540054  # the normal quantile of CI_LEVEL's upper tail
ONE_DRAW = "test items only (one training draw)"


@dataclass(frozen=True)
class Interval:
    """``mean`` with its 95% interval [``low``, ``high``] (percent or points); ``se`` the
    standard error; ``seeds`` how many training draws it
    rests on; ``method`` how it was computed, in words."""

    mean: float
    low: float
    high: float
    method: str
    se: float = math.nan
    seeds: int = 0

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    @property
    def one_draw(self) -> bool:
        """One training draw: the interval is the test set's noise only."""
        return self.seeds == 1

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high


def _interval(mean: float, seed_term: float, item_term: float, seeds: int, method: str) -> Interval:
    """The interval from the two variance terms (in squared percent or points)."""
    half = float(half_width(seed_term, item_term, seeds))
    se = math.sqrt(max(seed_term + item_term, 0.0))
    return Interval(mean, mean - half, mean + half, method, se, seeds)


def _satterthwaite(terms: Iterable[tuple[float, float]]) -> float:
    """Degrees of freedom of a sum of independent variance estimates (estimate, its df)."""
    terms = [(v, d) for v, d in terms if v > 0]
    total = sum(v for v, _ in terms)
    if total <= 0:
        return math.inf
    return total**2 / sum(v**2 / d for v, d in terms)


# ------------------------------------------------------------------------------ predictions


@dataclass(frozen=True)
class SeedPredictions:
    """Per seed, whether each test item was right (bool, in the split's item order)."""

    split_hash: str
    correct: dict[int, np.ndarray]

    def matrix(self, seeds=None) -> np.ndarray:
        seeds = sorted(self.correct) if seeds is None else seeds
        return np.stack([self.correct[s] for s in seeds]).astype(np.float64)


def read_seed_predictions(entries: Iterable[tuple[int, Path, Mapping]]) -> SeedPredictions | None:
    """The stored predictions of one configuration's seeds, from (seed, run directory, record)
    of each seed that finished ok; ``None`` unless every one stored readable predictions on one
    test split (the interval then falls back to the per-seed values). Report and site both
    read them through here, so they compute the same interval."""
    from tlbench.predictions import read_predictions

    correct, hashes = {}, set()
    for seed, run_dir, record in entries:
        if not isinstance(record.get("predictions"), Mapping):
            return None
        try:
            preds = read_predictions(Path(run_dir), {"predictions": dict(record["predictions"])})
        except Exception:  # a damaged or refused file: this cell falls back
            return None
        if preds is None:
            return None
        correct[int(seed)] = preds.correct
        hashes.add(preds.split_hash)
    if correct and len(hashes) == 1 and len({len(c) for c in correct.values()}) == 1:
        return SeedPredictions(hashes.pop(), correct)
    return None


def predictions_by_cell(records: pd.DataFrame) -> dict[tuple, SeedPredictions]:
    """(model, dataset, strategy) -> ``SeedPredictions`` of its ``ok`` seeds, for cells whose
    every ok seed stored readable predictions on one test split; others are left out."""
    found: dict[tuple, SeedPredictions] = {}
    if "predictions" not in records:
        return found
    ok = records[records["status"] == "ok"]
    for key, group in ok.groupby(["model", "dataset", "strategy"], sort=False):
        entries = [(row["seed"], row["run_dir"], row) for _, row in group.iterrows()]
        preds = read_seed_predictions(entries)
        if preds is not None:
            found[key] = preds
    return found


# ------------------------------------------------------------------------------ intervals


def crossed_terms(matrix: np.ndarray):
    """(seed term, item term) of the variance of the mean of a seeds x items matrix of per-item
    scores (correctness, or paired differences) where seeds and test items are both random
    samples and every seed is scored on the same items: s^2/n and max(0, MS_items -
    MS_residual)/(n N); see the module docstring. One seed: (0, the items' variance / N).
    Leading axes are a batch (the coverage simulation evaluates thousands of matrices at once)."""
    matrix = np.asarray(matrix)
    seeds, items = matrix.shape[-2:]
    if seeds == 1:
        return np.zeros(matrix.shape[:-2]), matrix[..., 0, :].var(
            axis=-1, ddof=1, dtype=np.float64
        ) / items
    seed_means = matrix.mean(axis=-1, dtype=np.float64)
    item_means = matrix.mean(axis=-2, dtype=np.float64)
    grand = seed_means.mean(axis=-1)
    # Sums of squares without a centred copy (the simulation passes large boolean batches);
    # for correctness (0/1) the sum of squares is the sum.
    squares = matrix if matrix.dtype == bool else np.square(matrix, dtype=np.float64)
    ss_total = squares.sum(axis=(-2, -1), dtype=np.float64) - seeds * items * grand**2
    ss_seeds = items * ((seed_means - grand[..., None]) ** 2).sum(axis=-1)
    ss_items = seeds * ((item_means - grand[..., None]) ** 2).sum(axis=-1)
    ss_residual = np.maximum(ss_total - ss_seeds - ss_items, 0.0)
    seed_term = ss_seeds / (seeds - 1) / (seeds * items)
    ms_items = ss_items / (items - 1)
    ms_residual = ss_residual / ((seeds - 1) * (items - 1))
    return seed_term, np.maximum(ms_items - ms_residual, 0.0) / (seeds * items)


SHARE_SCALE = 0.3  # where the seeds' t correction is half applied: seed term = 0.3 x item term


def half_width(seed_term, item_term, seeds: int):
    """Half the 95% interval of a mean whose variance is ``seed_term`` (s^2/n, estimated from
    n seeds: n - 1 degrees of freedom) plus ``item_term`` (estimated from many test items,
    taken as known):

        h^2 = z^2 (seed + item) + (t_{n-1}^2 - z^2) seed w,   w = x^2 / (x^2 + 0.3^2),  x = seed/item

    Student's t with n - 1 df when the seeds' term is all there is, the normal quantile when
    the items' term is, and in between the t correction in proportion to the seeds' share.
    Satterthwaite's df (under-covers, down to 0.87 with two seeds) and per-term t quantiles
    added in quadrature (over-cover, up to 0.99) both miss 95% in between; this weight keeps
    the exact coverage within 0.939-0.965 for 2 seeds and 0.950-0.963 for 3-10 at every ratio
    (docs/reports.md). Leading axes are a batch."""
    from scipy import stats  # deferred: scipy is slow to import

    seed_term = np.maximum(np.asarray(seed_term, dtype=np.float64), 0.0)
    item_term = np.maximum(np.asarray(item_term, dtype=np.float64), 0.0)
    if seeds < 2:
        return Z * np.sqrt(seed_term + item_term)
    t = stats.t.ppf(0.5 + CI_LEVEL / 2, seeds - 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        x = np.where(item_term > 0, seed_term / item_term, np.inf)
        share = np.where(np.isinf(x), 1.0, x**2 / (x**2 + SHARE_SCALE**2))
    return np.sqrt(Z**2 * (seed_term + item_term) + (t**2 - Z**2) * seed_term * share)


def accuracy_interval(matrix: np.ndarray, mean: float | None = None) -> Interval:
    """Mean top-1 (percent) of a seeds x items correctness matrix and its 95% interval;
    ``mean`` overrides the centre (the records' own top-1, which the matrix may round)."""
    matrix = np.asarray(matrix, dtype=np.float64)
    centre = 100.0 * float(matrix.mean()) if mean is None else float(mean)
    seed_term, item_term = crossed_terms(matrix)
    seeds, items = matrix.shape
    method = "t: seeds + shared test items" if seeds > 1 else ONE_DRAW
    return _interval(centre, 1e4 * seed_term, 1e4 * item_term, seeds, method)


def difference_interval(a: np.ndarray, b: np.ndarray) -> Interval:
    """a - b in points, both seeds x items on the same items and seeds, paired by item and
    seed (the same crossed-design terms, on the per-item differences)."""
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    seed_term, item_term = crossed_terms(diff)
    seeds, items = diff.shape
    method = "paired t: seeds + shared test items" if seeds > 1 else f"paired, {ONE_DRAW}"
    mean = 100.0 * float(diff.mean())
    return _interval(mean, 1e4 * seed_term, 1e4 * item_term, seeds, method)


def test_set_size(splits: Iterable) -> float | None:
    """The test-split size ``normal_interval`` takes, from records' ``split`` entries: the smallest
    recorded (the widest binomial term when seeds differ), ``None`` when none records one."""
    sizes = [split.get("sizes", {}).get("test") for split in splits if isinstance(split, Mapping)]
    sizes = [size for size in sizes if isinstance(size, int) and size > 0]
    return float(min(sizes)) if sizes else None


def normal_interval(values, test_items: float | None) -> Interval:
    """Without predictions: the seeds' variance s^2/n plus the largest item term the test set
    can have, the binomial p(1-p)/N (when its size is known; seeds that agree on every item)."""
    values = np.asarray(values, dtype=float)
    n, mean = len(values), float(values.mean())
    if n == 1 and not test_items:
        return Interval(mean, math.nan, math.nan, "none: one seed, no test-set size", seeds=1)
    seed_term = float(values.var(ddof=1)) / n if n > 1 else 0.0
    item_term = 0.0
    if test_items and test_items > 0:
        p = min(max(mean / 100, 0.0), 1.0)
        item_term = 1e4 * p * (1 - p) / test_items
    if n == 1:
        method = ONE_DRAW + ", binomial"
    else:
        method = "t: seeds + binomial" if test_items else "t: seeds only"
    return _interval(mean, seed_term, item_term, n, method)


def cell_interval(
    values, predictions: SeedPredictions | None = None, test_items: float | None = None
) -> Interval:
    """THE interval of a configuration's mean top-1 (``tlbench report``, ``tlbench publish``
    and ``tlbench compare`` all call this): from the stored predictions when every seed with a
    value has them, else from the per-seed ``values`` and the test-set size."""
    values = np.asarray(values, dtype=float)
    if predictions is not None and len(predictions.correct) == len(values) and len(values):
        return accuracy_interval(predictions.matrix(), mean=float(values.mean()))
    return normal_interval(values, test_items)


# ------------------------------------------------------------------------------ tests


def welch(a, b) -> tuple[float, float]:
    """(difference of means b - a, two-sided p of Welch's t-test) on two configurations' seed
    accuracies; p is NaN with fewer than two seeds a side or no spread in either."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    delta = float(b.mean() - a.mean()) if len(a) and len(b) else math.nan
    if len(a) < 2 or len(b) < 2:
        return delta, math.nan
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    if va + vb <= 1e-18:
        return delta, math.nan
    from scipy import stats  # deferred: scipy is slow to import

    t = delta / math.sqrt(va + vb)
    df = _satterthwaite([(va, len(a) - 1), (vb, len(b) - 1)])
    return delta, float(2 * stats.t.sf(abs(t), df))


def mcnemar(a: np.ndarray, b: np.ndarray) -> tuple[int, int, float]:
    """(items only A got right, items only B got right, exact two-sided p), summed over seeds.
    ``a``, ``b``: seeds x items correctness on the same items."""
    from scipy.stats import binomtest  # deferred: scipy is slow to import

    only_a = int(((a > 0) & (b == 0)).sum())
    only_b = int(((a == 0) & (b > 0)).sum())
    if only_a + only_b == 0:
        return 0, 0, 1.0
    return only_a, only_b, float(binomtest(min(only_a, only_b), only_a + only_b, 0.5).pvalue)


def holm(p_values) -> np.ndarray:
    """Holm-adjusted p-values (NaN stays NaN): reject where adjusted p < alpha."""
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full_like(p, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    order = valid[np.argsort(p[valid], kind="stable")]
    running, m = 0.0, len(order)
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[index]))
        adjusted[index] = running
    return adjusted
