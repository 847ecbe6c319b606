"""Every benchmark of docs/benchmarks.md, one after another (``make bench``). Each prints its
table and appends its JSON line to results/benchmarks/bench.jsonl (``$TLBENCH_BENCH_LOG``).

    .venv/bin/python benchmarks/run_all.py                  # the measurements (about an hour on 2 CPU cores)
    .venv/bin/python benchmarks/run_all.py --quick          # every script on a tiny configuration
    .venv/bin/python benchmarks/run_all.py --only seeds linear_probe
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# name -> (script, arguments of the measurement, arguments of the quick check)
BENCHMARKS = {
    "protocol_grid": (
        "bench_protocol_grid.py",
        [],
        [
            "--models",
            "lite0-imagenet",
            "--datasets",
            "digits",
            "--strategies",
            "linear-probe",
            "partial-unfreeze",
            "--seeds",
            "0",
            "1",
            "--epochs",
            "1",
            "--px",
            "32",
        ],
    ),
    "harness_overhead": (
        "bench_overhead.py",
        [],
        ["--px", "32", "--images", "256", "--rounds", "1", "--dataset", "digits"],
    ),
    "feature_extraction": (
        "bench_features.py",
        [],
        ["--px", "32", "--images", "512", "--repeats", "1", "--dataset", "digits"],
    ),
    "linear_probe": (
        "bench_linear_probe.py",
        [],
        ["--px", "32", "--repeats", "1", "--dataset", "digits", "--train-size", "400"],
    ),
    "linear_probe_digits": ("bench_linear_probe.py", ["--dataset", "digits"], None),
    "seeds": ("bench_seeds.py", [], ["--datasets", "digits", "--repeats", "1", "--px", "32"]),
    "scale": ("bench_scale.py", [], ["--quick"]),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny configurations: a smoke check")
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS))
    args = parser.parse_args()
    failed = []
    for name in args.only or BENCHMARKS:
        script, full, quick = BENCHMARKS[name]
        if args.quick and quick is None:
            continue
        command = [sys.executable, str(HERE / script), *(quick if args.quick else full)]
        print(f"\n## {name}: {' '.join(command[1:])}", flush=True)
        start = time.perf_counter()
        if subprocess.run(command).returncode != 0:
            failed.append(name)
        print(f"({name}: {time.perf_counter() - start:.0f} s)", flush=True)
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
