"""Validation curves of trained cells, read from their records for the ``val_curves`` figure.

A trained strategy records every candidate of its sweep (``hparams.sweep``: the swept ``lr`` /
``weight_decay``, ``val_curve`` = validation top-1 after each epoch, ``best_epoch``,
``epochs_trained``, ``pruned_at_epoch``) and how the chosen one converged
(``hparams.convergence``). ``chosen_curves`` turns that into one row per cell; records without
curves (a linear probe's solver, a failed cell, a damaged field) give no row.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pandas as pd

from tlbench.report.records import still_improving

# The options a sweep varies (tlbench.engine.training.SWEEPABLE); the chosen candidate is the
# one whose values the record's hparams repeat.
SWEPT = ("lr", "weight_decay")
COLUMNS = [
    "model",
    "dataset",
    "strategy",
    "seed",
    "recipe",
    "lr",
    "curve",
    "best_epoch",
    "budget_epochs",
    "still_improving",
    "stopped",
    "others",
]


def chosen_curves(records: pd.DataFrame) -> pd.DataFrame:
    """One row per ``ok`` cell whose sweep recorded validation curves, in the records' order:
    the chosen candidate's ``curve`` (list of val top-1, epoch 1 first), its ``best_epoch``,
    the epoch ``budget_epochs`` (``hparams.convergence``, else ``hparams.epochs_max`` of records
    written before it; None when neither), ``still_improving``, ``stopped`` and ``others``: the
    other candidates as dicts (``label``, ``curve``, ``pruned_at_epoch``)."""
    rows = []
    for _, record in records.iterrows():
        hparams = record.get("hparams")
        if record.get("status") != "ok" or not isinstance(hparams, Mapping):
            continue
        candidates = _candidates(hparams.get("sweep"))
        if not candidates:
            continue
        chosen = _chosen(hparams, candidates)
        convergence = hparams.get("convergence")
        convergence = convergence if isinstance(convergence, Mapping) else {}
        budget = convergence.get("budget_epochs", hparams.get("epochs_max"))
        rows.append(
            {
                "model": record["model"],
                "dataset": record["dataset"],
                "strategy": record["strategy"],
                "seed": record["seed"],
                "recipe": hparams.get("recipe"),
                "lr": chosen.get("lr"),
                "curve": chosen["val_curve"],
                "best_epoch": _epoch(chosen.get("best_epoch"), chosen["val_curve"]),
                "budget_epochs": budget if _number(budget) and budget > 0 else None,
                "still_improving": still_improving(hparams),
                "stopped": convergence.get("stopped"),
                "others": [
                    {
                        "label": _label(c),
                        "curve": c["val_curve"],
                        "pruned_at_epoch": c.get("pruned_at_epoch"),
                    }
                    for c in candidates
                    if c is not chosen
                ],
            }
        )
    return pd.DataFrame(rows, columns=COLUMNS)


def _candidates(sweep: Any) -> list[Mapping]:
    """The sweep's candidates that have a usable curve (a diverged one has none)."""
    if not isinstance(sweep, list):
        return []  # older records kept the grid itself here: {"lr": [...]}
    return [
        c
        for c in sweep
        if isinstance(c, Mapping)
        and isinstance(c.get("val_curve"), list)
        and c["val_curve"]
        and all(_number(v) for v in c["val_curve"])
    ]


def _chosen(hparams: Mapping, candidates: list[Mapping]) -> Mapping:
    """The candidate whose swept values the record's hparams repeat; failing that, the one with
    the best validation score (the first of a tie, as the sweep chooses)."""
    for candidate in candidates:
        swept = [k for k in SWEPT if k in candidate]
        if swept and all(candidate[k] == hparams.get(k) for k in swept):
            return candidate
    return max(candidates, key=lambda c: max(c["val_curve"]))


def _epoch(value: Any, curve: list) -> int:
    if isinstance(value, int) and 1 <= value <= len(curve):
        return value
    return max(range(len(curve)), key=lambda i: curve[i]) + 1


def _label(candidate: Mapping) -> str:
    return ", ".join(f"{k} {candidate[k]:g}" for k in SWEPT if _number(candidate.get(k)))


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
