"""Run directories -> one flat pandas DataFrame, one row per cell (the last record wins).

Columns: the record's scalar fields (``suite``, ``model``, ``dataset``, ``strategy``, ``seed``,
``status``, ...), its nested numbers flattened with dots (``metrics.top1``,
``cost.trainable_params``, ``cost.phases.train_s``, ``error.message``, ...), the nested
descriptions kept as dicts (``hparams``, ``model_card``, ``dataset_card``, ``split``,
``options``), plus ``run_dir`` and ``baseline`` (the model is trained from scratch).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from tlbench.errors import UserError
from tlbench.results import CELLS_FILE, ENV_FILE, SCHEMA_VERSION, read_records

CELL_KEY = ["model", "dataset", "strategy", "seed"]
GROUP_KEY = ["model", "dataset", "strategy"]
STATUSES = ("ok", "failed", "diverged", "skipped", "interrupted")
REQUIRED = ("suite", "model", "dataset", "strategy", "seed", "status")
FLATTENED = ("metrics", "cost", "error")
KEPT_AS_DICTS = ("hparams", "model_card", "dataset_card", "split", "options")
# Columns the tables read; present (possibly all NaN) even when no record carries them.
NUMERIC_COLUMNS = (
    "metrics.top1",
    "cost.trainable_params",
    "cost.total_params",
    "cost.wall_s",
    "cost.peak_mem_mb",
)
TEXT_COLUMNS = ("model_ref", "error.message", "error.type")

PathLike = str | os.PathLike


def load_records(run_dirs: PathLike | Iterable[PathLike]) -> pd.DataFrame:
    """Read ``cells.jsonl`` of each run directory, in the order given.

    A truncated or garbled line is skipped with a warning naming the file and line. When one
    (model, dataset, strategy, seed) appears more than once (a failure, then its retry), the
    last record wins; across directories, a later directory wins.
    """
    dirs = [run_dirs] if isinstance(run_dirs, str | os.PathLike) else list(run_dirs)
    if not dirs:
        raise UserError(
            "no run directory given: expected at least one directory holding cells.jsonl"
        )
    return _frame([row for run_dir in dirs for row in _read_run(Path(run_dir))])


def records_frame(records: Iterable[Mapping], source: str = "<records>") -> pd.DataFrame:
    """The same frame as ``load_records``, from record dicts already in memory (the runner's)."""
    rows = [
        _flatten_record(record, source, number) for number, record in enumerate(records, start=1)
    ]
    rows = [row for row in rows if row is not None]
    if not rows:
        raise UserError(f"{source}: no cell records")
    return _frame(rows)


def _frame(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    for column in NUMERIC_COLUMNS:
        frame[column] = pd.to_numeric(frame.get(column), errors="coerce")
    for column in TEXT_COLUMNS:
        if column not in frame:
            frame[column] = None
    if "run_id" not in frame or frame["run_id"].isna().any():
        # Records written before run ids were recorded: the run directory's name is the id.
        names = frame["run_dir"].map(lambda d: Path(d).name if d else "")
        frame["run_id"] = frame["run_id"].fillna(names) if "run_id" in frame else names
    frame["baseline"] = [
        is_baseline(ref, card)
        for ref, card in zip(frame["model_ref"], frame["model_card"], strict=True)
    ]
    frame = frame.drop_duplicates(subset=CELL_KEY, keep="last")
    return frame.reset_index(drop=True)


def load_env(run_dir: PathLike) -> dict:
    """The run's ``env.json`` (environment and suite text), or ``{}`` when it was not written."""
    path = Path(run_dir) / ENV_FILE
    if not path.exists():
        return {}
    try:
        env = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(
            f"{path}: not valid JSON ({exc}); expected the run environment written by tlbench run"
        ) from None
    if not isinstance(env, dict):
        raise UserError(f"{path}: expected a JSON object, found {type(env).__name__}")
    return env


def is_baseline(model_ref: Any, model_card: Any) -> bool:
    """A from-scratch model: ``scratch:`` reference or randomly initialised weights."""
    if isinstance(model_ref, str) and model_ref.startswith("scratch:"):
        return True
    return isinstance(model_card, Mapping) and model_card.get("weights") == "random"


def _read_run(run_dir: Path) -> list[dict]:
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run directory")
    path = run_dir / CELLS_FILE
    rows = [
        _flatten_record(record, path, number)
        for number, record in enumerate(read_records(path), start=1)
    ]
    rows = [{**row, "run_dir": str(run_dir)} for row in rows if row is not None]
    if not rows:
        raise UserError(
            f"{run_dir}: no results (expected {CELLS_FILE} with at least one cell record)"
        )
    return rows


def _flatten_record(record: Any, path: Path | str, number: int) -> dict | None:
    if not isinstance(record, Mapping):
        warnings.warn(f"{path}: record {number} is not a JSON object; skipped", stacklevel=3)
        return None
    schema = record.get("schema", SCHEMA_VERSION)
    if schema != SCHEMA_VERSION:
        raise UserError(
            f"{path}: record {number} has schema {schema!r}; this tlbench reads schema {SCHEMA_VERSION}"
        )
    missing = [key for key in REQUIRED if key not in record]
    if missing:
        raise UserError(
            f"{path}: record {number} lacks {', '.join(missing)}; expected a tlbench cell record"
        )
    row = {key: value for key, value in record.items() if key not in FLATTENED}
    for key in FLATTENED:
        row.update(_flatten(key, record.get(key)))
    for key in KEPT_AS_DICTS:
        row.setdefault(key, {})
    row.setdefault("run_dir", "")
    return row


def _flatten(prefix: str, value: Any) -> dict:
    if not isinstance(value, Mapping):
        return {} if value is None else {prefix: value}
    flat = {}
    for key, item in value.items():
        flat.update(_flatten(f"{prefix}.{key}", item))
    return flat
