"""Protocol grid: `tlbench run` vs the hand-written loop, both running the full protocol (each
strategy's default sweep, the refit on train+val, several seeds).

Cells: {efficientnet_lite0.in1k, scratch:tf_efficientnet_lite0} x {digits, fashion-mnist
(train_size 1000, test_size 2000)} x {linear-probe, partial-unfreeze, full-finetune} x seeds
{0, 1, 2}, at 64 px. tlbench runs a generated suite with no strategy options (the defaults:
successive halving over the default sweep, refit), cold cache, one run directory; the other side
is benchmarks/bench_naive_quickstart.py (every configuration trained to its end, features
re-extracted per cell and seed). Both run as subprocesses, one (model, dataset) chunk at a time,
alternating which side goes first, so both see the same machine load.

Prints the wall time of each side and the ratio, seconds per strategy, and each cell's test
top-1 (mean and seed-to-seed standard deviation) with the configurations each side selected.

    .venv/bin/python benchmarks/bench_protocol_grid.py                       # the measurement
    .venv/bin/python benchmarks/bench_protocol_grid.py --models lite0-imagenet \
        --datasets digits --strategies linear-probe full-finetune --seeds 0 1 --epochs 1 --px 32
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common

MODELS = {
    "lite0-imagenet": "efficientnet_lite0.in1k",
    "lite0-scratch": "scratch:tf_efficientnet_lite0",
}
DATASETS = {"digits": {}, "fashion-mnist": {"train_size": 1000, "test_size": 2000}}
STRATEGIES = ("linear-probe", "partial-unfreeze", "full-finetune")
NAIVE = Path(__file__).resolve().parent / "bench_naive_quickstart.py"


def suite_text(args) -> str:
    lines = [
        'name = "protocol-grid"',
        'description = "benchmarks/bench_protocol_grid.py: default sweeps and refits, several seeds."',
        f"seeds = {list(args.seeds)}",
    ]
    for model_id in args.models:
        lines += ["[[models]]", f'name = "{MODELS[model_id]}"', f'id = "{model_id}"']
        lines.append(f"input_size = {args.px}")
    for dataset in args.datasets:
        lines += ["[[datasets]]", f'name = "{dataset}"']
        lines += [f"{k} = {v}" for k, v in DATASETS[dataset].items()]
    for strategy in args.strategies:
        lines += ["[[strategies]]", f'name = "{strategy}"']
        if args.epochs is not None and strategy != "linear-probe":
            lines.append(f"epochs = {args.epochs}")
    return "\n".join(lines) + "\n"


def run_tlbench(args, suite: Path, run_dir: Path, cache: Path, model: str, dataset: str) -> float:
    command = [
        sys.executable,
        "-m",
        "tlbench",
        "run",
        str(suite),
        "--out",
        str(run_dir),
        "--cache-dir",
        str(cache),
        "--model",
        model,
        "--dataset",
        dataset,
        "-q",
    ]
    return timed(command, ok=(0, 1))  # 1: a cell failed; its record says why


def run_naive(args, model: str, dataset: str, out: Path) -> float:
    command = [
        sys.executable,
        str(NAIVE),
        "--models",
        model,
        "--datasets",
        dataset,
        "--strategies",
        *args.strategies,
        "--seeds",
        *map(str, args.seeds),
        "--px",
        str(args.px),
        "--json",
        str(out),
    ]
    if args.epochs is not None:
        command += ["--epochs", str(args.epochs)]
    return timed(command)


def timed(command: list[str], ok: tuple[int, ...] = (0,)) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, cwd=common.ROOT)
    if done.returncode not in ok:
        raise SystemExit(f"{' '.join(command)} exited with {done.returncode}")
    return time.perf_counter() - start


def tlbench_cells(run_dir: Path) -> list[dict]:
    from tlbench.results import read_records

    rows = []
    for record in read_records(run_dir / "cells.jsonl"):
        hp = record.get("hparams", {})
        rows.append(
            {
                "model": record["model"],
                "dataset": record["dataset"],
                "strategy": record["strategy"],
                "seed": record["seed"],
                "status": record["status"],
                "top1": record.get("metrics", {}).get("top1"),
                "chosen": {"l2": hp["l2"]}
                if "l2" in hp
                else {"lr": hp.get("lr"), "epochs": hp.get("epochs")},
                "seconds": record.get("cost", {}).get("wall_s"),
                "features_computed": record.get("cost", {}).get("features_computed"),
                "epochs_trained": hp.get("sweep_schedule", {}).get("epochs_trained"),
            }
        )
    return rows


def spread(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None]
    if not values:
        return float("nan"), float("nan")
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--px", type=int, default=64)
    parser.add_argument(
        "--epochs", type=int, default=None, help="override every fine-tuning strategy's epochs"
    )
    parser.add_argument("--workdir", type=Path, default=None, help="default: a fresh temp dir")
    args = parser.parse_args()
    start_stamp = common.stamp()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="tlbench-protocol-"))
    work.mkdir(parents=True, exist_ok=True)
    suite = work / "protocol-grid.toml"
    suite.write_text(suite_text(args))
    run_dir, cache = work / "tlbench-run", work / "cache"  # cold: nothing cached before
    walls = {"tlbench": 0.0, "naive": 0.0}
    naive_rows = []
    chunks = [(m, d) for m in args.models for d in args.datasets]
    for i, (model, dataset) in enumerate(chunks):
        out = work / f"naive-{model}-{dataset}.json"
        sides = ["tlbench", "naive"] if i % 2 == 0 else ["naive", "tlbench"]
        for side in sides:
            if side == "tlbench":
                seconds = run_tlbench(args, suite, run_dir, cache, model, dataset)
            else:
                seconds = run_naive(args, model, dataset, out)
            walls[side] += seconds
            print(f"[{side}] {model} x {dataset}: {seconds:.1f} s", flush=True)
        naive_rows += json.loads(out.read_text())["cells"]
    ours = tlbench_cells(run_dir)
    report(args, walls, ours, naive_rows, start_stamp)


def report(args, walls, ours, naive_rows, start_stamp) -> None:
    ratio = walls["naive"] / walls["tlbench"]
    common.print_table(
        "Wall time (subprocesses, start-up included)",
        ["side", "seconds", "naive / tlbench"],
        [["tlbench", walls["tlbench"], ratio], ["hand-written", walls["naive"], 1.0]],
    )
    per_strategy = []
    for strategy in args.strategies:
        a = sum(r["seconds"] or 0 for r in ours if r["strategy"] == strategy)
        b = sum(r["seconds"] for r in naive_rows if r["strategy"] == strategy)
        per_strategy.append([strategy, a, b, b / a if a else float("nan")])
    common.print_table(
        "Cell seconds per strategy (sum over models, datasets, seeds)",
        ["strategy", "tlbench", "hand-written", "ratio"],
        per_strategy,
    )
    cells, within = [], 0
    for model in args.models:
        for dataset in args.datasets:
            for strategy in args.strategies:

                def pick(rows, m=model, d=dataset, s=strategy):
                    return sorted(
                        (r for r in rows if (r["model"], r["dataset"], r["strategy"]) == (m, d, s)),
                        key=lambda r: r["seed"],
                    )

                a, b = pick(ours), pick(naive_rows)
                mean_a, sd_a = spread([r["top1"] for r in a])
                mean_b, sd_b = spread([r["top1"] for r in b])
                ok = abs(mean_a - mean_b) <= max(sd_b, 1e-9)
                within += ok
                cells.append(
                    [
                        model,
                        dataset,
                        strategy,
                        f"{mean_a:.2f} ± {sd_a:.2f}",
                        f"{mean_b:.2f} ± {sd_b:.2f}",
                        f"{mean_a - mean_b:+.2f}",
                        "yes" if ok else "no",
                        "; ".join(json.dumps(r["chosen"]) for r in a),
                        "; ".join(json.dumps(r["chosen"]) for r in b),
                    ]
                )
    common.print_table(
        f"Test top-1 over seeds {list(args.seeds)} (mean ± sd); 'within' = |difference| <= the "
        "hand-written side's seed-to-seed sd",
        [
            "model",
            "dataset",
            "strategy",
            "tlbench",
            "hand-written",
            "difference",
            "within",
            "tlbench chose",
            "hand-written chose",
        ],
        cells,
    )
    computed = sum(r["features_computed"] or 0 for r in ours)
    print(f"features computed by tlbench's cells: {computed}")
    print(f"cells within the seed spread: {within} of {len(cells)}")
    common.log_result(
        "protocol_grid",
        args,
        {
            "wall_s": {k: round(v, 1) for k, v in walls.items()},
            "ratio": round(ratio, 3),
            "per_strategy": per_strategy,
            "cells": cells,
            "tlbench_cells": ours,
            "naive_cells": naive_rows,
            "features_computed": computed,
        },
        start_stamp=start_stamp,
    )


if __name__ == "__main__":
    main()
