"""Run directories -> one flat pandas DataFrame, one row per cell (the last record wins).

Columns: the record's scalar fields (``suite``, ``model``, ``dataset``, ``strategy``, ``seed``,
``status``, ...), its nested numbers flattened with dots (``metrics.top1``,
``cost.trainable_params``, ``cost.phases.train_s``, ``error.message``, ...), the nested
descriptions kept as dicts (``hparams``, ``model_card``, ``dataset_card``, ``split``,
``options``), plus ``run_dir`` and ``baseline`` (the model is trained from scratch).

A damaged record is never dropped in silence. One that names its cell but whose result cannot be
used (an ``ok`` record whose ``metrics.top1`` is not a number, an unknown status) stays in the
frame with status ``malformed`` and the reason as its error, so the tables count it next to the
failures and no mean includes it. One that cannot even be placed in the grid (a ``dataset`` that
is a list, a missing ``seed``) is left out. Each is one warning line naming file and line.
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from tlbench.errors import UserError
from tlbench.results import (
    CELLS_FILE,
    SCHEMA_VERSION,
    read_environment,
    read_numbered_records,
)
from tlbench.safeio import warn_once

CELL_KEY = ["model", "dataset", "strategy", "seed"]
GROUP_KEY = ["model", "dataset", "strategy"]
RECORDED_STATUSES = ("ok", "failed", "diverged", "skipped", "interrupted")
# ``malformed``: the record names its cell, but its result cannot be used (see the module doc).
STATUSES = (*RECORDED_STATUSES, "malformed")
IDENTITY = ("suite", "model", "dataset", "strategy")
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
        _flatten_record(record, f"{source}: record {number}")
        for number, record in enumerate(records, start=1)
    ]
    kept = [row for row in rows if row is not None]
    if not kept:
        raise UserError(f"{source}: no cell records")
    return _frame(kept)


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
    strategies = frame["strategy_ref"] if "strategy_ref" in frame else frame["strategy"]
    frame["role"] = [
        init_role(ref, card, strategy, trainable, total)
        for ref, card, strategy, trainable, total in zip(
            frame["model_ref"],
            frame["model_card"],
            strategies,
            frame["cost.trainable_params"],
            frame["cost.total_params"],
            strict=True,
        )
    ]
    frame["still_improving"] = [still_improving(h) for h in frame["hparams"]]
    frame = frame.drop_duplicates(subset=CELL_KEY, keep="last")
    return frame.reset_index(drop=True)


def load_env(run_dir: PathLike) -> dict:
    """The run's ``env.json`` (environment and suite text), or ``{}`` when it was not written."""
    return read_environment(Path(run_dir)) or {}


def is_baseline(model_ref: Any, model_card: Any) -> bool:
    """A randomly initialised model: ``scratch:`` reference or ``weights = "random"``."""
    if isinstance(model_ref, str) and model_ref.startswith("scratch:"):
        return True
    return isinstance(model_card, Mapping) and model_card.get("weights") == "random"


FROM_SCRATCH = "trained from scratch"
RANDOM_FEATURES = "random-init features"
# Strategies that train every parameter of the network, for records without parameter counts.
_TRAINS_ALL = ("full-finetune",)


def init_role(
    model_ref: Any, model_card: Any, strategy_ref: Any, trainable: Any = None, total: Any = None
) -> str:
    """What a cell on a randomly initialised model measures (the one place this is decided):
    ``FROM_SCRATCH`` when the strategy trains the whole network (every parameter trainable, or
    full fine-tuning when the record has no parameter counts), ``RANDOM_FEATURES`` when part of
    it stays at its random initialisation (linear probe, partial unfreezing, BitFit, ...), and
    ``""`` for a pretrained model. Gains "over scratch" are measured against ``FROM_SCRATCH``."""
    if not is_baseline(model_ref, model_card):
        return ""
    try:
        if trainable is not None and total is not None and float(total) > 0:
            if not (math.isnan(float(trainable)) or math.isnan(float(total))):
                return FROM_SCRATCH if float(trainable) >= float(total) else RANDOM_FEATURES
    except (TypeError, ValueError):
        pass
    return FROM_SCRATCH if strategy_ref in _TRAINS_ALL else RANDOM_FEATURES


def is_trivial(model_card: Any) -> bool:
    """A trivial baseline (raw pixels, random features): its card says ``trivial_baseline``."""
    return isinstance(model_card, Mapping) and bool(model_card.get("trivial_baseline"))


def reference_position(val_means: Sequence[float]) -> int | None:
    """Which of the candidate reference cells of one dataset (in suite order, each with a
    value) a gain is measured against: the best validation top-1, chosen without the test set,
    else the first; ``None`` without candidates. Report and site both choose with it the
    trained-from-scratch cell (``FROM_SCRATCH``) that gains "over scratch" compare with."""
    if not val_means:
        return None
    known = [(value, -at) for at, value in enumerate(val_means) if not math.isnan(value)]
    return -max(known)[1] if known else 0


def still_improving(hparams: Any) -> bool:
    """Validation was still improving when the training budget ran out
    (``hparams.convergence.still_improving``; records without it: False)."""
    convergence = hparams.get("convergence") if isinstance(hparams, Mapping) else None
    return isinstance(convergence, Mapping) and convergence.get("still_improving") is True


def tuning(hparams: Any) -> dict:
    """``hparams.tuning`` (configurations tried, epochs and seconds spent tuning, schedule), or
    what older records show of it: the sweep's length and the epochs its schedule trained."""
    if not isinstance(hparams, Mapping):
        return {}
    found = hparams.get("tuning")
    if isinstance(found, Mapping):
        return {k: found.get(k) for k in ("configurations", "epochs", "train_s", "schedule")}
    sweep, schedule = hparams.get("sweep"), hparams.get("sweep_schedule")
    older: dict[str, Any] = {}
    if isinstance(sweep, list) and sweep:
        older["configurations"] = len(sweep)
    if isinstance(schedule, Mapping):
        older["epochs"] = schedule.get("epochs_trained")
        older["schedule"] = schedule.get("schedule")
    return older


def set_options(options: Any) -> dict:
    """A component's options without those left unset: one configuration whether a record spells
    an unset option as null or, written before the option existed, leaves it out (records before
    0.3 have no ``extract_batch_size``)."""
    if not isinstance(options, Mapping):
        return {}
    return {name: value for name, value in options.items() if value is not None}


def _read_run(run_dir: Path) -> list[dict]:
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run directory")
    path = run_dir / CELLS_FILE
    numbered = read_numbered_records(path)
    flat = [_flatten_record(record, f"{path}:{number}") for number, record in numbered]
    rows = [{**row, "run_dir": str(run_dir)} for row in flat if row is not None]
    if not rows:
        left_out = f"; {len(numbered)} left out, see the warnings above" if numbered else ""
        raise UserError(
            f"{run_dir}: no results (expected {CELLS_FILE} with at least one cell record{left_out})"
        )
    # Parallel workers record cells in the order they finish; tables list them as the suite does.
    # The sort is stable, so a cell's retry still follows its failure (the last record wins).
    order = _suite_order(run_dir)
    return sorted(rows, key=order) if order else rows


def _suite_order(run_dir: Path):
    """Sort key: the row's model, dataset and strategy by their place in the run's suite.toml,
    then its seed; ids the suite does not list sort after those it does. ``None`` when the run
    has no readable suite.toml (records stay in their recorded order)."""
    try:
        suite = tomllib.loads((run_dir / "suite.toml").read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None

    def places(section: str) -> dict[str, int]:
        entries = [e for e in suite.get(section) or [] if isinstance(e, Mapping)]
        return {str(e.get("id") or e.get("name")): i for i, e in reversed(list(enumerate(entries)))}

    models, datasets, strategies = places("models"), places("datasets"), places("strategies")
    last = math.inf

    def place(ids: dict[str, int], value) -> float:
        # An entry with axis options records one id per value, ``surgical[block=first]``
        # (tlbench.suite names them so): those cells take their entry's place.
        value = str(value)
        return ids.get(value, ids.get(value.split("[", 1)[0], last))

    def key(row: dict) -> tuple:
        seed = row.get("seed")
        return (
            place(models, row.get("model")),
            place(datasets, row.get("dataset")),
            place(strategies, row.get("strategy")),
            seed if isinstance(seed, int) else last,
        )

    return key


def _flatten_record(record: Any, where: str) -> dict | None:
    """The record as one row, or ``None`` (with a warning) when it cannot be placed."""
    schema = schema_problem(record)
    if schema:
        raise UserError(f"{where}: {schema}")
    problem = placement_problem(record)
    if problem:
        warn_once(left_out(where, problem), stacklevel=3)
        return None
    unusable = result_problem(record)
    if unusable:
        warn_once(counted_as_malformed(where, record, unusable), stacklevel=3)
        record = as_malformed(record, unusable)
    row = {key: value for key, value in record.items() if key not in FLATTENED}
    for key in FLATTENED:
        row.update(_flatten(key, record.get(key)))
    for key in KEPT_AS_DICTS:
        row.setdefault(key, {})
    row.setdefault("run_dir", "")
    return row


# -------------------------------------------------------------------- one record validator
# ``tlbench report`` and ``tlbench publish`` check records with these functions and warn in
# these words; publish adds only what a public page needs on top (tlbench.publish.validate).


def schema_problem(record: Any) -> str | None:
    """Why a record is of a schema this tlbench cannot read (``None`` when it can)."""
    schema = record.get("schema", SCHEMA_VERSION) if isinstance(record, Mapping) else None
    if schema != SCHEMA_VERSION and isinstance(record, Mapping):
        return f"has schema {_shown(schema)}; this tlbench reads schema {SCHEMA_VERSION}"
    return None


def placement_problem(record: Any) -> str | None:
    """Why a record cannot be placed in the (model, dataset, strategy, seed) grid: not an
    object, a missing field or an identity field of the wrong type; ``None`` when it can."""
    if not isinstance(record, Mapping):
        return "not a JSON object"
    missing = [key for key in REQUIRED if key not in record]
    if missing:
        return f"lacks {', '.join(missing)}, not a tlbench cell record"
    for key in IDENTITY:
        if not isinstance(record[key], str):
            return f"{key!r} is {_shown(record[key])}, expected a string"
    seed = record["seed"]
    if not isinstance(seed, int) or isinstance(seed, bool):
        return f"'seed' is {_shown(seed)}, expected an integer"
    return None


def result_problem(record: Mapping) -> str | None:
    """Why the result of a placeable record cannot be used (it is then ``as_malformed``)."""
    status = record["status"]
    if status not in RECORDED_STATUSES:
        return f"status {_shown(status)} is not one of {', '.join(RECORDED_STATUSES)}"
    metrics = record.get("metrics")
    if metrics is not None and not isinstance(metrics, Mapping):
        return f"'metrics' is {_shown(metrics)}, expected an object"
    if status == "ok":
        top1 = (metrics or {}).get("top1")
        if not _is_percentage(top1):
            return f"status 'ok' but metrics.top1 is {_shown(top1)}, expected a number in [0, 100]"
    return None


def as_malformed(record: Mapping, why: str) -> dict:
    """A placeable record whose result cannot be used, as both readers keep it: status
    ``malformed`` (counted next to the failures, in no mean), the recorded status in
    ``recorded_status`` and the reason as its error message."""
    error = record.get("error") if isinstance(record.get("error"), Mapping) else {}
    return {
        **record,
        "status": "malformed",
        "recorded_status": record["status"],
        "error": {**error, "message": f"malformed record: {why}"},
    }


def left_out(where: str, why: str, reader: str = "the report") -> str:
    """The warning for a record that is left out: ``FILE:LINE: why; left out of the report``."""
    return f"{where}: {why}; left out of {reader}"


def counted_as_malformed(where: str, record: Mapping, why: str) -> str:
    """The warning for a record counted as malformed (``as_malformed``), naming its cell."""
    cell = f"{record['model']} / {record['dataset']} / {record['strategy']} / seed {record['seed']}"
    return f"{where} ({cell}): {why}; counted as malformed, in no mean"


def _is_percentage(value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and 0 <= value <= 100
    )


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _flatten(prefix: str, value: Any) -> dict:
    if not isinstance(value, Mapping):
        return {} if value is None else {prefix: value}
    flat = {}
    for key, item in value.items():
        flat.update(_flatten(f"{prefix}.{key}", item))
    return flat
