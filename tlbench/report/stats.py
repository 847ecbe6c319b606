"""Intervals and tests that include the test set's own noise, from per-example predictions.

A cell's top-1 is a mean over a finite test set, and its seeds are a sample too. Every interval
here resamples both: a two-level bootstrap draws test items with replacement (the same draw for
every seed, because seeds are scored on the same test images) and seeds with replacement, and
takes the 2.5% and 97.5% percentiles of the mean top-1 (Efron & Tibshirani 1993; the hierarchical
bootstrap of Saravanan et al. 2020). Differences between two cells scored on the same items
(a gain over a baseline) are bootstrapped the same way on the paired per-item differences.
Without stored predictions (runs of older versions) the interval falls back to Student's t over
the seeds combined with the binomial noise p(1-p)/N of one test set of N items.

Two cells on the same items are compared with McNemar's exact test on their discordant items,
summed over the seeds both ran (each discordant item is a fair coin under the null); many
comparisons are corrected with Holm's step-down method (Holm 1979).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

CI_LEVEL = 0.95
BOOTSTRAP_SAMPLES = 2000
_CHUNK = 100  # bootstrap draws per matrix product: bounds memory at ~8 bytes x items x chunk
_SEED = 0  # reports are deterministic: the same records always give the same intervals
Z = 1.959963984540054  # the normal quantile of CI_LEVEL's upper tail


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float
    method: str  # "bootstrap: items x seeds", "bootstrap: items", "normal: seeds + binomial"

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high


# ------------------------------------------------------------------------------ predictions


@dataclass(frozen=True)
class SeedPredictions:
    """Per seed, whether each test item was right (bool, in the split's item order)."""

    split_hash: str
    correct: dict[int, np.ndarray]

    def matrix(self, seeds) -> np.ndarray:
        return np.stack([self.correct[s] for s in seeds]).astype(np.float32)


def predictions_by_cell(records: pd.DataFrame) -> dict[tuple, SeedPredictions]:
    """(model, dataset, strategy) -> ``SeedPredictions`` of its ``ok`` seeds, for cells whose
    every ok seed stored readable predictions on one test split; others are left out."""
    from tlbench.predictions import read_predictions

    found: dict[tuple, SeedPredictions] = {}
    if "predictions" not in records:
        return found
    ok = records[records["status"] == "ok"]
    for key, group in ok.groupby(["model", "dataset", "strategy"], sort=False):
        correct, hashes = {}, set()
        for _, row in group.iterrows():
            entry = row.get("predictions")
            if not isinstance(entry, Mapping):
                break
            try:
                preds = read_predictions(Path(row["run_dir"]), {"predictions": entry})
            except Exception:  # a damaged file: this cell falls back to the normal interval
                preds = None
            if preds is None:
                break
            correct[int(row["seed"])] = preds.correct
            hashes.add(preds.split_hash)
        else:
            if correct and len(hashes) == 1 and len({len(c) for c in correct.values()}) == 1:
                found[key] = SeedPredictions(hashes.pop(), correct)
    return found


# ------------------------------------------------------------------------------ intervals


def _bootstrap(matrix: np.ndarray, samples: int = BOOTSTRAP_SAMPLES) -> np.ndarray:
    """Means (percent) of ``matrix`` (seeds x items) under resampled items and seeds."""
    rng = np.random.default_rng(_SEED)
    seeds, items = matrix.shape
    out = np.empty(samples)
    uniform = np.full(items, 1.0 / items)
    for start in range(0, samples, _CHUNK):
        size = min(_CHUNK, samples - start)
        weights = rng.multinomial(items, uniform, size=size).astype(np.float32) / items
        per_seed = matrix @ weights.T  # (seeds, size): each seed on the same resampled items
        if seeds > 1:
            picks = rng.integers(0, seeds, size=(size, seeds))
            out[start : start + size] = per_seed[picks, np.arange(size)[:, None]].mean(1)
        else:
            out[start : start + size] = per_seed[0]
    return 100.0 * out


def _percentiles(draws: np.ndarray, mean: float, method: str) -> Interval:
    tail = 100 * (1 - CI_LEVEL) / 2
    low, high = np.percentile(draws, [tail, 100 - tail])
    return Interval(mean, float(low), float(high), method)


def accuracy_interval(matrix: np.ndarray) -> Interval:
    """Mean top-1 (percent) of a seeds x items correctness matrix, with its bootstrap interval."""
    mean = 100.0 * float(matrix.mean())
    method = "bootstrap: items x seeds" if matrix.shape[0] > 1 else "bootstrap: items"
    return _percentiles(_bootstrap(matrix), mean, method)


def difference_interval(a: np.ndarray, b: np.ndarray) -> Interval:
    """a - b in points, both seeds x items on the same items and seeds, paired."""
    diff = a - b
    mean = 100.0 * float(diff.mean())
    method = "paired bootstrap: items x seeds" if a.shape[0] > 1 else "paired bootstrap: items"
    return _percentiles(_bootstrap(diff), mean, method)


def test_set_size(splits: Iterable) -> float | None:
    """The test-split size ``normal_interval`` takes, from records' ``split`` entries: the smallest
    recorded (the widest binomial term when seeds differ), ``None`` when none records one."""
    sizes = [split.get("sizes", {}).get("test") for split in splits if isinstance(split, Mapping)]
    sizes = [size for size in sizes if isinstance(size, int) and size > 0]
    return float(min(sizes)) if sizes else None


def normal_interval(values: np.ndarray, test_items: float | None) -> Interval:
    """Without predictions: Student's t over the seeds, combined with one test set's binomial
    noise (when its size is known): half-width sqrt((t s / sqrt(n))^2 + (z sqrt(p(1-p)/N))^2)."""
    from scipy import stats  # deferred: scipy is slow to import

    values = np.asarray(values, dtype=float)
    n, mean = len(values), float(values.mean())
    seeds = (
        float(stats.t.ppf(0.5 + CI_LEVEL / 2, n - 1)) * values.std(ddof=1) / math.sqrt(n)
        if n > 1
        else 0.0
    )
    items = 0.0
    if test_items and test_items > 0:
        p = min(max(mean / 100, 0.0), 1.0)
        items = Z * 100 * math.sqrt(p * (1 - p) / test_items)
    if n == 1 and not test_items:
        return Interval(mean, math.nan, math.nan, "none: one seed, no predictions")
    half = math.hypot(seeds, items)
    method = "t over seeds + binomial" if test_items else "t over seeds only"
    return Interval(mean, mean - half, mean + half, method)


# ------------------------------------------------------------------------------ tests


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
