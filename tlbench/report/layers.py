"""The layer-transfer study in a report: accuracy against the number of source layer groups kept
(Yosinski et al. 2014), frozen and fine-tuned, per (model, dataset), with the report's intervals
(test items and seeds) and the from-scratch and linear-probe references.

A layer-transfer entry expands into one strategy id per (keep, mode), for example
``layer-transfer[keep=3,mode=frozen]``; the part before ``[`` names the curve, so one suite may
hold several (say, stage and block granularity under two ids).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import pandas as pd

from tlbench.report.tables import INTERVAL_NOTE, MISSING, Table, cell_text, summarize

LAYER_STRATEGY = "layer-transfer"
REFERENCE_STRATEGY = "linear-probe"
MODES = ("frozen", "finetune")
MODE_LABELS = {"frozen": "frozen (AnB)", "finetune": "fine-tuned (AnB+)"}
CURVE_KEY = ["model", "dataset", "curve"]


def layer_curves(records: pd.DataFrame, metric: str = "top1") -> pd.DataFrame:
    """One row per (model, dataset, curve, mode, keep) with the seed summary of ``summarize``
    (``n``, ``mean``, ``ci95``, ``status``, ...) and ``kept``, the last source group kept.
    Empty when no record comes from the layer-transfer strategy."""
    cells = _layer_cells(records)
    if cells.empty:
        return pd.DataFrame(columns=[*CURVE_KEY, "mode", "keep", "n", "mean", "ci95"])
    axes = cells.drop_duplicates("strategy").set_index("strategy")
    summary = summarize(records, metric)
    curves = summary[summary["strategy"].isin(axes.index)].copy()
    for column in ("curve", "keep", "mode"):
        curves[column] = curves["strategy"].map(axes[column])
    kept = _kept_names(cells)
    curves["kept"] = [
        kept.get((row.model, row.dataset, row.curve), {}).get(row.keep, "")
        for row in curves.itertuples()
    ]
    return curves.sort_values([*CURVE_KEY, "mode", "keep"], kind="stable").reset_index(drop=True)


def with_shared_start(curve: pd.DataFrame) -> pd.DataFrame:
    """``curve`` with its n = 0 point copied to the mode that lacks it: keeping no group
    re-initialises everything in both modes, so suites run that cell once."""
    zero = curve[curve["keep"] == 0]
    missing = [m for m in MODES if m not in set(zero["mode"])]
    if zero.empty or not missing:
        return curve
    copies = [zero.iloc[[0]].assign(mode=mode) for mode in missing]
    return pd.concat([*copies, curve]).sort_values(["mode", "keep"], kind="stable")


def _layer_cells(records: pd.DataFrame) -> pd.DataFrame:
    if records.empty or "strategy_ref" not in records:
        return pd.DataFrame()
    cells = records[records["strategy_ref"] == LAYER_STRATEGY].copy()
    if cells.empty:
        return cells
    options = [_strategy_options(o) for o in cells["options"]]
    cells["keep"] = [o.get("keep") for o in options]
    cells["mode"] = [o.get("mode", "finetune") for o in options]
    cells["curve"] = cells["strategy"].map(lambda s: str(s).split("[", 1)[0])
    return cells[cells["keep"].notna()]


def _strategy_options(options) -> Mapping:
    return options.get("strategy", {}) if isinstance(options, Mapping) else {}


def _kept_names(cells: pd.DataFrame) -> dict:
    """(model, dataset, curve) -> {keep: name of the last kept group}, from finished records."""
    names: dict = {}
    for row in cells.itertuples():
        hparams = row.hparams if isinstance(row.hparams, Mapping) else {}
        kept = hparams.get("kept_groups")
        if isinstance(kept, list):
            names.setdefault((row.model, row.dataset, row.curve), {})[row.keep] = (
                kept[-1] if kept else "none"
            )
    return names


def references(records: pd.DataFrame, metric: str = "top1") -> pd.DataFrame:
    """Linear-probe results per (model, dataset): the frozen-features reference line."""
    if records.empty or "strategy_ref" not in records:
        return pd.DataFrame(columns=["model", "dataset", "n", "mean", "ci95"])
    probes = set(records.loc[records["strategy_ref"] == REFERENCE_STRATEGY, "strategy"])
    summary = summarize(records, metric)
    found = summary[summary["strategy"].isin(probes) & (summary["n"] > 0)]
    return found.drop_duplicates(["model", "dataset"]).reset_index(drop=True)


def scratch_reference(curve: pd.DataFrame) -> pd.Series | None:
    """keep = 0 re-initialises every group: training from scratch (the fine-tuned cell if both)."""
    zero = curve[(curve["keep"] == 0) & (curve["n"] > 0)]
    if zero.empty:
        return None
    finetuned = zero[zero["mode"] == "finetune"]
    return (finetuned if not finetuned.empty else zero).iloc[0]


# ---------------------------------------------------------------------------------------- table


def layer_table(records: pd.DataFrame, metric: str = "top1") -> Table | None:
    """One row per (model, dataset, curve, keep), frozen and fine-tuned side by side; ``None``
    when the records hold no layer-transfer cell. The best of each curve and mode is bold."""
    curves = layer_curves(records, metric)
    if curves.empty:
        return None
    rows, best_rows = [], []
    for (model, dataset, curve), part in curves.groupby(CURVE_KEY, sort=False):
        part = with_shared_start(part)
        for keep, at in part.groupby("keep", sort=True):
            row = {"model": model, "dataset": dataset, "curve": curve, "n kept": int(keep)}
            row["last group kept"] = next((k for k in at["kept"] if k), MISSING)
            flags = {column: False for column in row}
            for mode in MODES:
                found = at[at["mode"] == mode]
                column = MODE_LABELS[mode]
                row[column] = cell_text(found.iloc[0]) if not found.empty else MISSING
                best = part.loc[(part["mode"] == mode) & (part["n"] > 0), "mean"]
                flags[column] = (
                    not found.empty
                    and found.iloc[0]["n"] > 0
                    and math.isclose(found.iloc[0]["mean"], best.max())
                )
            rows.append(row)
            best_rows.append(flags)
    text = pd.DataFrame(rows)
    best = pd.DataFrame(best_rows, columns=text.columns)
    probes = references(records, metric)
    reference = "; ".join(
        f"{row['model']} / {row['dataset']} {cell_text(row)}" for _, row in probes.iterrows()
    )
    note = (
        f"{metric} (%), {INTERVAL_NOTE}. n kept = source layer groups kept "
        "(input side first), the rest re-initialised with timm's init; frozen: kept groups fixed, "
        "fine-tuned: everything trains. n = 0 trains from scratch (one cell starts both curves). "
        "Best of each curve in bold. "
        + (
            f"Linear probe (frozen features): {reference}."
            if reference
            else "No linear-probe cell."
        )
    )
    return Table(f"Layer transfer: {metric} by source layer groups kept", text, best, note)
