"""Seeds share features: `tlbench run` of the linear probe with 1 seed vs 4 seeds, each with a
cold cache, on fashion-mnist (train_size 1000: each seed draws its own 1000 images from the pool)
and digits (no cap: every seed splits the same images). Reports the command's wall time, the
cells' seconds, and the features computed against the distinct images the seeds' splits hold:
"no image's features computed twice" holds when the two are equal. The 1-seed and 4-seed runs
alternate (``--repeats``); medians are compared.

    .venv/bin/python benchmarks/bench_seeds.py [--datasets fashion-mnist digits] [--repeats 2]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common
import numpy as np

DATASETS = {"fashion-mnist": {"train_size": 1000, "test_size": 2000}, "digits": {}}


def suite_text(dataset: str, seeds: list[int], px: int) -> str:
    options = "\n".join(f"{k} = {v}" for k, v in DATASETS[dataset].items())
    return f"""name = "seeds"
seeds = {seeds}
[[models]]
name = "efficientnet_lite0.in1k"
id = "lite0-imagenet"
input_size = {px}
[[datasets]]
name = "{dataset}"
{options}
[[strategies]]
name = "linear-probe"
"""


def run(dataset: str, seeds: list[int], px: int, work: Path) -> dict:
    where = Path(tempfile.mkdtemp(prefix=f"seeds-{len(seeds)}-", dir=work))
    suite = where / "suite.toml"
    suite.write_text(suite_text(dataset, seeds, px))
    command = [sys.executable, "-m", "tlbench", "run", str(suite), "--out", str(where / "run")]
    command += ["--cache-dir", str(where / "cache"), "-q"]  # a cold cache for every run
    start = time.perf_counter()
    done = subprocess.run(command, cwd=common.ROOT)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} exited with {done.returncode}")
    from tlbench.results import read_records

    records = read_records(where / "run" / "cells.jsonl")
    return {
        "wall_s": wall,
        "cells_s": sum(r["cost"]["wall_s"] for r in records),
        "cell_s": [r["cost"]["wall_s"] for r in records],
        "features_computed": sum(r["cost"].get("features_computed", 0) for r in records),
        "features_reused": sum(r["cost"].get("features_reused", 0) for r in records),
    }


def distinct_images(dataset: str, seeds: list[int]) -> int:
    """Images the seeds' train, val and test splits hold, counted once."""
    from tlbench.cache import Cache
    from tlbench.components import BuildContext
    from tlbench.datasetlib import local
    from tlbench.splits import make_splits

    factory = {"digits": local.digits, "fashion-mnist": local.fashion_mnist}[dataset]
    target = factory(None, {}, BuildContext(cache=Cache(enabled=False), device="cpu"))
    rows: dict[str, set] = {"train": set(), "test": set()}
    for seed in seeds:
        splits = make_splits(target, DATASETS[dataset], seed)
        rows["train"].update(np.concatenate([splits.train, splits.val]).tolist())
        rows[splits.test_from].update(splits.test.tolist())
    return sum(len(r) for r in rows.values())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--seeds", type=int, default=4, help="the many-seed run's seed count")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--px", type=int, default=64)
    args = parser.parse_args()
    start_stamp = common.stamp()
    work = Path(tempfile.mkdtemp(prefix="tlbench-seeds-"))
    many = list(range(args.seeds))
    rows, results = [], {}
    for dataset in args.datasets:
        one, several = [], []
        for r in range(args.repeats):
            for n in (1, args.seeds) if r % 2 == 0 else (args.seeds, 1):
                out = run(dataset, [0] if n == 1 else many, args.px, work)
                (one if n == 1 else several).append(out)
        expected = {n: distinct_images(dataset, [0] if n == 1 else many) for n in (1, args.seeds)}
        for n, runs in ((1, one), (args.seeds, several)):
            rows.append(
                [
                    dataset,
                    n,
                    common.median([x["wall_s"] for x in runs]),
                    common.median([x["cells_s"] for x in runs]),
                    runs[0]["features_computed"],
                    expected[n],
                    "yes" if all(x["features_computed"] == expected[n] for x in runs) else "no",
                ]
            )
        ratio = common.median([x["wall_s"] for x in several]) / common.median(
            [x["wall_s"] for x in one]
        )
        cells = common.median([x["cells_s"] for x in several]) / common.median(
            [x["cells_s"] for x in one]
        )
        rows.append([dataset, f"{args.seeds} / 1", ratio, cells, "", "", ""])
        results[dataset] = {"one": one, "several": several, "distinct": expected, "ratio": ratio}
    common.print_table(
        f"Linear probe, lite0 ImageNet at {args.px} px, cold cache, median of {args.repeats}",
        [
            "dataset",
            "seeds",
            "command s",
            "cells s",
            "features computed",
            "distinct images",
            "each once",
        ],
        rows,
    )
    common.log_result("seeds", args, results, start_stamp=start_stamp)


if __name__ == "__main__":
    main()
