"""How a sweep spends its epochs: every candidate to the end (``grid``), or successive halving
(``asha``): all candidates train a short budget, the better half by validation top-1 continues,
and so on until one is left, which trains to its end (Jamieson & Talwalkar 2016; ASHA, Li et al.
2020, is the asynchronous form of the same rule).

The candidate list is small and known in advance (2-4 points), so the halving is synchronous:
every candidate reaches a rung before any is dropped, which makes the outcome independent of the
order the candidates are listed in. docs/strategies.md says why this is not Optuna's pruner.
Nothing here knows about models; a candidate is anything with the ``Candidate`` interface.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

SCHEDULES = ("asha", "grid")
ETA = 2  # keep the better 1/ETA at every rung
MIN_EPOCHS = 1  # the first rung: every candidate gets at least this many epochs


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

    def describe(self, candidates: Sequence[Candidate]) -> dict:
        trained = sum(c.epochs_trained for c in candidates)
        return {
            "schedule": self.schedule,
            "eta": ETA if self.schedule == "asha" else None,
            "rungs": list(self.rungs),
            "pruned": len(self.pruned_at),
            "epochs_trained": trained,
            "epochs_exhaustive": sum(c.max_epochs for c in candidates),
        }


def rungs(max_epochs: int, min_epochs: int = MIN_EPOCHS, eta: int = ETA) -> tuple[int, ...]:
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


def run_sweep(candidates: Sequence[Candidate], schedule: str) -> SweepPlan:
    """Train ``candidates`` under ``schedule`` (``asha`` or ``grid``)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"sweep schedule must be one of {SCHEDULES}, got {schedule!r}")
    if schedule == "grid" or len(candidates) < 2:
        for candidate in candidates:
            candidate.advance(candidate.max_epochs)
        return SweepPlan("grid" if len(candidates) > 1 else schedule, (), {})
    return successive_halving(candidates)


def successive_halving(
    candidates: Sequence[Candidate], *, eta: int = ETA, min_epochs: int = MIN_EPOCHS
) -> SweepPlan:
    """At each rung every live candidate trains up to the rung's budget; the best
    ``max(1, live // eta)`` by score go on. A candidate that stopped on its own (early stopping,
    divergence) still competes with its score but is not counted as pruned."""
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
    return SweepPlan("asha", tuple(used), pruned)
