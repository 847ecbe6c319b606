"""A suite's leaderboard under one strategy: models x datasets with the mean and 95% interval
over seeds, the rank of each model on each dataset, its average rank and its gain over training
from scratch.

Statistics are ``tlbench report``'s, computed by the same function
(``tlbench.report.stats.cell_interval``, docs/reports.md): for top-1, the seeds' spread with
Student's t plus the noise of the shared test items, from the stored predictions when every seed
has them (so one seed has an interval too: the test set's noise only, marked); ties share
the mean of their ranks, a cell without a value ranks last among the models that have the cell.
A model without a cell on a dataset is not ranked there, so its average covers fewer datasets
(the page says how many). The gain is the report's too: points over the trained-from-scratch
cell of the same dataset, whatever the leaderboard's strategy, the cell of a randomly
initialised model under a strategy that trains all of it (``tlbench.report.records.init_role``),
chosen on validation by ``tlbench.report.records.reference_position``. A random-init model under
a linear probe or partial unfreezing is "random-init features", never the reference; random-init
models and trivial baselines get no gain themselves.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field, replace

import pandas as pd

from tlbench.publish.variants import Group, SuiteView, Variant
from tlbench.report.records import (
    FROM_SCRATCH,
    STATUSES,
    reference_position,
    still_improving,
)
from tlbench.report.stats import Interval, cell_interval, read_seed_predictions, test_set_size


@dataclass(frozen=True)
class Score:
    """One leaderboard cell: the seeds of a group and their statistics."""

    group: Group
    values: tuple[tuple[int, float], ...]  # (seed, value) of the seeds that finished ok
    problems: dict  # status -> count of the seeds that did not
    rank: float | None = None
    gain: float | None = None
    test_items: float | None = None  # the test split's size, when the metric is a test accuracy
    interval: Interval | None = None  # the report's interval (``cell_interval``)

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return sum(v for _, v in self.values) / self.n if self.n else math.nan

    @property
    def ci95(self) -> float:
        """Half the 95% interval, the report's (NaN for one seed of a metric without a known
        test-set size or predictions)."""
        if not self.n:
            return math.nan
        if self.interval is not None:
            return self.interval.half_width
        return cell_interval([v for _, v in self.values], None, self.test_items).half_width

    @property
    def one_draw(self) -> bool:
        """One seed: the interval is the test set's noise only."""
        return self.n == 1

    @property
    def still_improving(self) -> bool:
        """Validation was still improving at the budget in a seed (under-trained)."""
        return any(
            still_improving(e.record.get("hparams")) for e in self.group.entries if e.status == "ok"
        )

    @property
    def marks(self) -> str:
        """The report's marks: under-trained, one training draw (``tlbench.report.tables``)."""
        from tlbench.report.tables import cell_marks

        return cell_marks(
            {"n": self.n, "one_draw": self.one_draw, "still_improving": self.still_improving}
        )

    @property
    def status(self) -> str:
        if self.n:
            return "ok"
        return max(self.problems, key=self.problems.get) if self.problems else "no value"

    @property
    def text(self) -> str:
        """``81.3 ± 0.4``, ``81.3`` (one seed), ``81.3 ± 0.4 (1 failed)`` or the failure."""
        if not self.n:
            return self.status
        text = f"{self.mean:.1f}" + (f" ± {self.ci95:.1f}" if not math.isnan(self.ci95) else "")
        text += f" {self.marks}" if self.marks else ""
        if self.problems:
            text += " (" + ", ".join(f"{c} {s}" for s, c in self.problems.items()) + ")"
        return text


@dataclass
class Row:
    model: Variant
    role: str  # ``init_role`` of the row's cells: trained from scratch, random-init features, ""
    scores: dict[str, Score]  # dataset variant key -> score
    average_rank: float | None = None
    mean_gain: float | None = None
    position: int = 0


@dataclass
class Leaderboard:
    suite: SuiteView
    strategy: Variant
    metric: str
    datasets: list[Variant]
    rows: list[Row]
    references: dict[str, Score] = field(default_factory=dict)  # dataset key -> from scratch
    notes: list[str] = field(default_factory=list)

    def is_reference(self, score: Score) -> bool:
        """``score`` is the trained-from-scratch cell this board's gains are measured against."""
        reference = self.references.get(score.group.dataset.key)
        return reference is not None and reference.group is score.group


def score(group: Group, metric: str) -> Score:
    values = tuple(
        (e.seed, value) for e in group.entries if (value := e.metric(metric)) is not None
    )
    counts = Counter(e.status for e in group.entries if e.metric(metric) is None)
    problems = {s: counts[s] for s in (*STATUSES, *sorted(counts)) if counts.get(s)}
    items = _test_items(group) if metric == "top1" else None
    interval = None
    if values:
        predictions = _predictions(group) if metric == "top1" else None
        interval = cell_interval([v for _, v in values], predictions, items)
    return Score(group, values, problems, test_items=items, interval=interval)


def _predictions(group: Group):
    """The stored predictions of the group's ok seeds, read as the report reads them."""
    return read_seed_predictions(
        (e.seed, e.run.path, e.record) for e in group.entries if e.metric("top1") is not None
    )


def _test_items(group: Group) -> float | None:
    """The test-split size of the group's ok seeds, from their split records."""
    return test_set_size(
        e.record.get("split") for e in group.entries if e.metric("top1") is not None
    )


def from_scratch_references(view: SuiteView, metric: str) -> dict[str, Score]:
    """Dataset key -> the trained-from-scratch cell gains on it are measured against (the
    report's rule, see the module doc); datasets without one are left out."""
    order = {m.key: i for i, m in enumerate(view.models)}
    strategies = {s.key: i for i, s in enumerate(view.strategies)}
    references = {}
    for dataset in view.datasets:
        groups = sorted(
            (g for g in view.groups if g.dataset.key == dataset.key and g.role == FROM_SCRATCH),
            key=lambda g: (order.get(g.model.key, 0), strategies.get(g.strategy.key, 0)),
        )
        candidates = [s for g in groups if (s := score(g, metric)).n]
        at = reference_position([_val_mean(s.group) for s in candidates])
        if at is not None:
            references[dataset.key] = candidates[at]
    return references


def _val_mean(group: Group) -> float:
    """Mean validation top-1 of the group's ok seeds (NaN without one): what picks a reference."""
    values = [
        v for e in group.entries if e.status == "ok" and (v := e.metric("val_top1")) is not None
    ]
    return sum(values) / len(values) if values else math.nan


def build_leaderboard(
    view: SuiteView, strategy: Variant, metric: str, references: dict[str, Score] | None = None
) -> Leaderboard:
    """``references``: ``from_scratch_references(view, metric)``, computed once per suite."""
    groups = [g for g in view.groups if g.strategy.key == strategy.key]
    columns = [d for d in view.datasets if any(g.dataset.key == d.key for g in groups)]
    models = [m for m in view.models if any(g.model.key == m.key for g in groups)]
    scores = {(g.model.key, g.dataset.key): score(g, metric) for g in groups}
    _rank(scores, columns)
    if references is None:
        references = from_scratch_references(view, metric)
    notes = _gains(scores, columns, references)
    rows = []
    for m in models:
        mine = {d.key: scores[(m.key, d.key)] for d in columns if (m.key, d.key) in scores}
        roles = [s.group.role for s in mine.values() if s.group.role]
        rows.append(Row(model=m, role=roles[0] if roles else "", scores=mine))
    for row in rows:
        ranks = [s.rank for s in row.scores.values() if s.rank is not None]
        gains = [s.gain for s in row.scores.values() if s.gain is not None]
        row.average_rank = sum(ranks) / len(ranks) if ranks else None
        row.mean_gain = sum(gains) / len(gains) if gains else None
    rows.sort(key=lambda r: _position_key(r, models))
    for position, row in enumerate(rows, start=1):
        row.position = position
    used = {d.key: references[d.key] for d in columns if d.key in references}
    return Leaderboard(view, strategy, metric, columns, rows, used, notes)


def _rank(scores: dict, columns: list[Variant]) -> None:
    for column in columns:
        keys = [key for key in scores if key[1] == column.key]
        means = pd.Series([scores[key].mean for key in keys], dtype=float)
        ranks = means.rank(ascending=False, method="average", na_option="bottom")
        for key, rank in zip(keys, ranks, strict=True):
            scores[key] = replace(scores[key], rank=float(rank))


def _gains(scores: dict, columns: list[Variant], references: dict[str, Score]) -> list[str]:
    if not references:
        return [
            "No network trained from scratch in this suite (a randomly initialised model under "
            "full fine-tuning), so no gain over training from scratch."
        ]
    missing = []
    for column in columns:
        reference = references.get(column.key)
        if reference is None:
            missing.append(column.label)
            continue
        for key in [k for k in scores if k[1] == column.key]:
            found = scores[key]
            if found.n and not found.group.baseline and not found.group.trivial:
                scores[key] = replace(found, gain=found.mean - reference.mean)
    if missing:
        return [f"No gain on {', '.join(missing)}: no network trained from scratch there."]
    return []


def _position_key(row: Row, models: list[Variant]) -> tuple:
    means = [s.mean for s in row.scores.values() if s.n]
    return (
        row.average_rank is None,
        row.average_rank if row.average_rank is not None else 0.0,
        -(sum(means) / len(means)) if means else 0.0,
        models.index(row.model),
    )
