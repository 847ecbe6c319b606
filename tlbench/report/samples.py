"""Synthetic run directories in the exact record schema, for tests and for trying the report
commands without training anything. Every number is derived from the cell's names and seed,
so the same call always writes the same run.

    write_sample_run(tmp / "run", failed=[("r18-imagenet", "cifar10", "linear-probe", 1)])
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from tlbench.results import SCHEMA_VERSION

CellKey = tuple[str, str, str, int]

MODELS = {
    # name: (model_ref, weights, total params, feature dim)
    "scratch-r18": ("scratch:resnet18", "random", 11_181_642, 512),
    "r18-imagenet": ("resnet18.a1_in1k", "pretrained", 11_181_642, 512),
    "lite0-imagenet": ("efficientnet_lite0.in1k", "pretrained", 3_384_842, 1280),
}
DATASETS = {"fashion-mnist": 10, "cifar10": 10}
STRATEGIES = ("linear-probe", "partial-unfreeze", "full-finetune")
# Plausible accuracies: pretrained beats scratch, fine-tuning beats probing.
_MODEL_BASE = {"scratch-r18": 62.0, "r18-imagenet": 84.0, "lite0-imagenet": 86.0}
_DATASET_SHIFT = {"fashion-mnist": 4.0, "cifar10": -3.0}
_STRATEGY_SHIFT = {"linear-probe": 0.0, "partial-unfreeze": 3.0, "full-finetune": 4.5}
_TRAINABLE_SHARE = {"partial-unfreeze": 0.3, "full-finetune": 1.0}


def sample_top1(model: str, dataset: str, strategy: str, seed: int) -> float:
    """A deterministic accuracy with seed-to-seed noise of about one point."""
    if model.startswith("scratch") and strategy == "linear-probe":
        base = 30.0  # random features are nearly useless to a linear probe
    else:
        base = _MODEL_BASE.get(model, 80.0) + _STRATEGY_SHIFT.get(strategy, 0.0)
    digest = hashlib.sha256(f"{model}/{dataset}/{strategy}/{seed}".encode()).digest()
    noise = (digest[0] / 255.0 - 0.5) * 2.0
    return round(min(99.9, base + _DATASET_SHIFT.get(dataset, 0.0) + noise), 2)


def write_sample_run(
    run_dir: Path,
    *,
    suite: str = "quickstart",
    models: Sequence[str] = tuple(MODELS),
    datasets: Sequence[str] = tuple(DATASETS),
    strategies: Sequence[str] = STRATEGIES,
    seeds: Sequence[int] = (0, 1, 2),
    top1: Callable[[str, str, str, int], float] = sample_top1,
    failed: Iterable[CellKey] = (),
    diverged: Iterable[CellKey] = (),
    retried: Iterable[CellKey] = (),
    torn_tail: bool = False,
    predictions: bool = False,
    flipped: Callable[[str, str, str, int], int] | None = None,
) -> Path:
    """Write ``cells.jsonl`` and ``env.json`` for the grid models x datasets x strategies x seeds.

    ``failed``/``diverged`` cells are recorded with that status; ``retried`` cells are recorded
    failed first and ok afterwards (the retry must win); ``torn_tail`` leaves a half-written
    last line, as a killed process would. ``predictions`` stores per-example predictions on
    1000 test items for every ok cell, consistent with its top-1 (every model finds the same
    items easiest); ``flipped(model, dataset, strategy, seed)`` swaps that many of a cell's
    right and wrong items (the same accuracy, other items: what another CPU's rounding does).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    failed, diverged, retried = set(failed), set(diverged), set(retried)
    run_id = "20261129-011500-" + hashlib.sha256(f"{suite}{run_dir.name}".encode()).hexdigest()[:4]
    lines = []
    for model in models:
        for dataset in datasets:
            for strategy in strategies:
                for seed in seeds:
                    key = (model, dataset, strategy, seed)
                    status = (
                        "failed"
                        if key in failed | retried
                        else "diverged"
                        if key in diverged
                        else "ok"
                    )
                    lines.append(_record(suite, run_id, key, status, top1))
                    if key in retried:
                        lines.append(_record(suite, run_id, key, "ok", top1))
                    if predictions and lines[-1]["status"] == "ok":
                        flips = flipped(*key) if flipped else 0
                        lines[-1]["predictions"] = _predictions(run_dir, lines[-1], flips)
    text = "".join(json.dumps(line, sort_keys=True) + "\n" for line in lines)
    if torn_tail:
        text += json.dumps(lines[-1], sort_keys=True)[:57]
    (run_dir / "cells.jsonl").write_text(text, encoding="utf-8")
    env = _environment(suite, models, datasets, strategies, seeds)
    (run_dir / "env.json").write_text(json.dumps(env, indent=2), encoding="utf-8")
    return run_dir


def _record(suite: str, run_id: str, key: CellKey, status: str, top1: Callable) -> dict:
    model, dataset, strategy, seed = key
    model_ref, weights, total, features = MODELS.get(model, (model, "pretrained", 5_000_000, 768))
    classes = DATASETS.get(dataset, 10)
    head = features * classes + classes
    trainable = (
        head if strategy == "linear-probe" else int(total * _TRAINABLE_SHARE.get(strategy, 1.0))
    )
    wall = round(5.0 + trainable / 200_000 + seed * 0.1, 2)
    record = {
        "schema": SCHEMA_VERSION,
        "suite": suite,
        "run_id": run_id,
        "config_hash": hashlib.sha256(
            f"{suite}/{model}/{dataset}/{strategy}/{seed}".encode()
        ).hexdigest(),
        "model": model,
        "dataset": dataset,
        "strategy": strategy,
        "seed": seed,
        "model_ref": model_ref,
        "dataset_ref": dataset,
        "strategy_ref": strategy,
        "status": status,
        "metrics": {},
        "hparams": {},
        "cost": {
            "trainable_params": trainable,
            "total_params": total,
            "wall_s": wall,
            "phases": {
                "features_s": round(wall * 0.6, 2),
                "train_s": round(wall * 0.3, 2),
                "eval_s": round(wall * 0.1, 2),
            },
            "peak_mem_mb": round(400.0 + total / 20_000, 1),
            "throughput_img_s": 1500.0,
            "device": "cpu",
            "precision": "fp32",
        },
        "model_card": {"arch": model_ref.removeprefix("scratch:"), "weights": weights},
        "dataset_card": {"name": dataset, "num_classes": classes},
        "split": {
            "protocol": "standard",
            "seed": seed,
            "sizes": {"train": 800, "val": 200, "test": TEST_ITEMS},
            "hashes": {"test": _test_hash(dataset)},
        },
        "options": {"model": {}, "dataset": {}, "strategy": {}},
        "error": None,
        "started_at": "2026-11-29T01:15:00+00:00",
        "finished_at": "2026-11-29T01:15:12+00:00",
        "tlbench_version": "0.1.0",
    }
    if status == "ok":
        record["metrics"] = {"top1": top1(*key), "val_top1": round(top1(*key) - 0.8, 2)}
        record["hparams"] = {"lr": 0.01, "sweep": {"lr": [0.001, 0.01, 0.1]}}
    elif status == "failed":
        record["error"] = {
            "type": "RuntimeError",
            "message": "CUDA out of memory while allocating the head",
            "traceback": 'Traceback (most recent call last):\n  File "engine.py", line 1\nRuntimeError: CUDA out of memory',
        }
    else:
        record["error"] = {"message": "loss became nan", "step": 12}
    return record


TEST_ITEMS = 1000


def _test_hash(dataset: str) -> str:
    return hashlib.sha256(f"test split of {dataset}".encode()).hexdigest()


def _predictions(run_dir: Path, record: dict, flips: int) -> dict:
    """Right on the ``top1``% easiest test items (one difficulty order per dataset), wrong on
    the rest; ``flips`` right and wrong items swapped, seeded by the cell."""
    import numpy as np

    from tlbench.predictions import Predictions, write_predictions

    classes = DATASETS.get(record["dataset"], 10)
    labels = np.arange(TEST_ITEMS) % classes
    order = np.random.default_rng(list(record["dataset"].encode())).permutation(TEST_ITEMS)
    correct = np.zeros(TEST_ITEMS, dtype=bool)
    correct[order[: round(record["metrics"]["top1"] * TEST_ITEMS / 100)]] = True
    if flips:
        rng = np.random.default_rng(list(f"{record['config_hash']}".encode()))
        right, wrong = np.flatnonzero(correct), np.flatnonzero(~correct)
        correct[rng.choice(right, flips, replace=False)] = False
        correct[rng.choice(wrong, flips, replace=False)] = True
    predicted = np.where(correct, labels, (labels + 1) % classes)
    preds = Predictions(
        index=np.arange(TEST_ITEMS),
        label=labels.astype(np.int16),
        pred=predicted.astype(np.int16),
        true_prob=np.where(correct, 0.9, 0.05).astype(np.float16),
        split_hash=_test_hash(record["dataset"]),
    )
    return write_predictions(run_dir, record["config_hash"], preds)


def _environment(suite: str, models, datasets, strategies, seeds) -> dict:
    def names(items):
        return ", ".join(f'"{item}"' for item in items)

    suite_text = (
        f'name = "{suite}"\nseeds = [{", ".join(map(str, seeds))}]\n'
        f"models = [{names(models)}]\ndatasets = [{names(datasets)}]\nstrategies = [{names(strategies)}]\n"
    )
    return {
        "schema": SCHEMA_VERSION,
        "created_at": "2026-11-29T01:15:00+00:00",
        "argv": ["tlbench", "run", f"suites/{suite}.toml"],
        "packages": {"tlbench": "0.1.0", "torch": "2.14.1", "timm": "1.0.20"},
        "plugins": [{"name": "tlbench.builtin.models", "version": "0.1.0"}],
        "git_revision": "0123456789abcdef",
        "hardware": {"platform": "Linux-x86_64", "cpu_count": 2, "python": "3.12.3"},
        "suite_path": f"suites/{suite}.toml",
        "suite": suite_text,
    }
