"""How a sweep spends its epochs: every candidate to the end (``grid``), or successive halving
(``asha``): all candidates train a grace period, the better half by validation top-1 continues,
and so on until one is left, which trains to its end (Jamieson & Talwalkar 2016; ASHA, Li et al.
2018/2020, is the asynchronous form of the same rule). The grace period (ASHA's minimum resource
r) is several epochs, not one: early learning curves cross, and a higher learning rate that
starts worse and ends better would otherwise be pruned after its first epoch.

The candidate list is small and known in advance (2-4 points), so the halving is synchronous:
every candidate reaches a rung before any is dropped, which makes the outcome independent of the
order the candidates are listed in. docs/strategies.md says why this is not Optuna's pruner.
Nothing here knows about models; a candidate is anything with the ``Candidate`` interface.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

SCHEDULES = ("asha", "grid")
ETA = 2  # keep the better 1/ETA at every rung
MIN_GRACE = 3  # the first rung is never below this many epochs (or the budget, if smaller)
GRACE_FRACTION = 0.25  # ... nor below this share of the budget


class Candidate(Protocol):
    epochs_trained: int
    max_epochs: int
    stopped: bool  # early-stopped on val, diverged, or at max_epochs: it trains no further

    @property
    def score(self) -> float | None:  # best val top-1 so far; None when diverged or untrained
        ...

    def advance(self, epochs: int) -> None:  # train until ``epochs`` are done or it stops
        ...


@dataclass(frozen=True)
class SweepPlan:
    """What a schedule did: which candidates it pruned, at how many epochs, and the rungs."""

    schedule: str
    rungs: tuple[int, ...]
    pruned_at: dict[int, int]  # candidate index -> epochs trained when pruned
    grace_epochs: int | None = None

    def describe(self, candidates: Sequence[Candidate]) -> dict:
        trained = sum(c.epochs_trained for c in candidates)
        return {
            "schedule": self.schedule,
            "eta": ETA if self.schedule == "asha" else None,
            "grace_epochs": self.grace_epochs,
            "rungs": list(self.rungs),
            "pruned": len(self.pruned_at),
            "epochs_trained": trained,
            "epochs_exhaustive": sum(c.max_epochs for c in candidates),
        }


def grace_period(max_epochs: int, grace_epochs: int | None = None) -> int:
    """Epochs every candidate trains before the first cut: ``grace_epochs`` when given, else
    ``max(MIN_GRACE, ceil(GRACE_FRACTION * max_epochs))``; never more than ``max_epochs``."""
    if grace_epochs is None:
        grace_epochs = max(MIN_GRACE, math.ceil(GRACE_FRACTION * max_epochs))
    return max(1, min(grace_epochs, max_epochs))


def rungs(max_epochs: int, min_epochs: int = MIN_GRACE, eta: int = ETA) -> tuple[int, ...]:
    """Epoch budgets at which candidates are compared: min_epochs, x eta, ... below max_epochs."""
    out, budget = [], max(min_epochs, 1)
    while budget < max_epochs:
        out.append(budget)
        budget *= eta
    return tuple(out)


def ranked(candidates: Sequence[Candidate], alive: Sequence[int]) -> list[int]:
    """Best score first; diverged last; ties go to the candidate listed first."""
    return sorted(
        alive,
        key=lambda i: (candidates[i].score is None, -(candidates[i].score or 0.0), i),
    )


def run_sweep(
    candidates: Sequence[Candidate], schedule: str, grace_epochs: int | None = None
) -> SweepPlan:
    """Train ``candidates`` under ``schedule`` (``asha`` or ``grid``); ``grace_epochs`` is the
    first rung of ``asha`` (default: ``grace_period``)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"sweep schedule must be one of {SCHEDULES}, got {schedule!r}")
    if schedule == "grid" or len(candidates) < 2:
        for candidate in candidates:
            candidate.advance(candidate.max_epochs)
        return SweepPlan("grid" if len(candidates) > 1 else schedule, (), {})
    grace = grace_period(max(c.max_epochs for c in candidates), grace_epochs)
    return successive_halving(candidates, min_epochs=grace)


def successive_halving(
    candidates: Sequence[Candidate], *, eta: int = ETA, min_epochs: int = MIN_GRACE
) -> SweepPlan:
    """Every live candidate trains ``min_epochs`` (the grace period), then at each rung the best
    ``max(1, live // eta)`` by score go on to ``eta`` times the budget. A candidate that stopped
    on its own (early stopping, divergence) still competes with its score but is not counted as
    pruned."""
    budgets = rungs(max(c.max_epochs for c in candidates), min_epochs, eta)
    alive, pruned, used = list(range(len(candidates))), {}, []
    for budget in budgets:
        if len(alive) < 2:
            break
        used.append(budget)
        for i in alive:
            candidates[i].advance(min(budget, candidates[i].max_epochs))
        keep = set(ranked(candidates, alive)[: max(1, len(alive) // eta)])
        for i in alive:
            if i not in keep and not candidates[i].stopped:
                pruned[i] = candidates[i].epochs_trained
        alive = [i for i in alive if i in keep]
    for i in alive:
        candidates[i].advance(candidates[i].max_epochs)
    return SweepPlan("asha", tuple(used), pruned, grace_epochs=min_epochs)
