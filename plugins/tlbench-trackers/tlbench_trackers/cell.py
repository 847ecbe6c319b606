"""What every tracker takes from a cell's record: one reading of the record for all three."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tlbench.api import Predictions, __version__

PARAM_LIMIT = 500  # characters of one parameter value (MLflow refuses more than 6000)


def label(record: dict) -> str:
    return f"{record.get('model')} | {record.get('dataset')} | {record.get('strategy')} | seed {record.get('seed')}"


def slug(record: dict) -> str:
    """A folder name for the cell: its label in safe characters and a config-hash prefix."""
    text = f"{record.get('model')}__{record.get('dataset')}__{record.get('strategy')}__seed{record.get('seed')}"
    return f"{re.sub(r'[^A-Za-z0-9._-]+', '_', text)}__{str(record.get('config_hash', ''))[:8]}"


def params(record: dict) -> dict[str, Any]:
    """The cell's options (``model.input_size``, ``strategy.lr``, ...) and the hyperparameters
    it chose (``hparams.l2``; the sweep itself goes to the curves)."""
    found: dict[str, Any] = {
        "model": record.get("model"),
        "dataset": record.get("dataset"),
        "strategy": record.get("strategy"),
        "seed": record.get("seed"),
    }
    for kind, options in (record.get("options") or {}).items():
        for key, value in (options or {}).items():
            found[f"{kind}.{key}"] = value
    for key, value in (record.get("hparams") or {}).items():
        if key != "sweep" and not key.endswith("_curve"):
            found[f"hparams.{key}"] = value
    return found


def param_text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text[:PARAM_LIMIT]


def metrics(record: dict) -> dict[str, float]:
    """The record's numeric metrics: top-1 and validation top-1, and any others it has."""
    found = {}
    for key, value in (record.get("metrics") or {}).items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            found[key] = float(value)
    return found


def curves(record: dict) -> Iterator[tuple[str, int, float]]:
    """(metric name, step, value) of every curve in the record: each sweep candidate's
    validation top-1 by epoch (``sweep/<i>/val_curve``), the sweep's validation top-1 by
    candidate (``sweep/val_top1``), and any ``*_curve`` list among the chosen hyperparameters."""
    hparams = record.get("hparams") or {}
    for i, candidate in enumerate(hparams.get("sweep") or []):
        if not isinstance(candidate, dict):
            continue
        if isinstance(candidate.get("val_top1"), int | float):
            yield "sweep/val_top1", i, float(candidate["val_top1"])
        for key, values in candidate.items():
            if key.endswith("_curve") and isinstance(values, list):
                yield from _points(f"sweep/{i}/{key}", values)
    for key, values in hparams.items():
        if key.endswith("_curve") and isinstance(values, list):
            yield from _points(key, values)


def _points(name: str, values: list) -> Iterator[tuple[str, int, float]]:
    for step, value in enumerate(values, start=1):  # step = epoch
        if isinstance(value, int | float) and not isinstance(value, bool):
            yield name, step, float(value)


def tags(record: dict) -> dict[str, str]:
    found = {
        "tlbench.suite": str(record.get("suite", "")),
        "tlbench.run_id": str(record.get("run_id", "")),
        "tlbench.config_hash": str(record.get("config_hash", "")),
        "tlbench.split_hash": str((record.get("split") or {}).get("hash", "")),
        "tlbench.status": str(record.get("status", "")),
        "tlbench.version": str(record.get("tlbench_version") or __version__),
    }
    for kind, version in (record.get("versions") or {}).items():
        found[f"tlbench.versions.{kind}"] = str(version)
    return found


def confusion_csv(run_dir: Path, record: dict) -> str | None:
    """The confusion matrix of the cell's test predictions as CSV (rows: true class, columns:
    predicted), or None when the cell stored no predictions."""
    import numpy as np

    entry = record.get("predictions")
    if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
        return None
    path = run_dir / entry["file"]
    if Path(entry["file"]).is_absolute() or ".." in Path(entry["file"]).parts:
        return None
    predictions = Predictions.from_bytes(path.read_bytes(), str(path))
    classes = int((record.get("dataset_card") or {}).get("classes") or 0)
    size = max(classes, int(predictions.label.max()) + 1, int(predictions.pred.max()) + 1)
    matrix = np.zeros((size, size), dtype=np.int64)
    np.add.at(matrix, (predictions.label, predictions.pred), 1)
    header = "true\\pred," + ",".join(str(i) for i in range(size))
    rows = [f"{i}," + ",".join(str(int(n)) for n in row) for i, row in enumerate(matrix)]
    return "\n".join([header, *rows]) + "\n"


def artifacts(run_dir: Path, record: dict) -> dict[str, str]:
    """File name -> text: the record, the run's environment and the confusion matrix."""
    found = {"record.json": json.dumps(record, indent=2, sort_keys=True, default=str)}
    env = run_dir / "env.json"
    if env.is_file():
        found["env.json"] = env.read_text(encoding="utf-8")
    matrix = confusion_csv(run_dir, record)
    if matrix is not None:
        found["confusion_matrix.csv"] = matrix
    return found
