"""Executor benchmark: wall time of one grid of independent cells under each executor.

    PYTHONPATH=tests python benchmarks/bench_executors.py [--seeds 6] [--work 6]

Uses the cheap real plugin of tests/test_runner.py (ridge probe on digits through the real
``tlbench.data.prepare``). Every seed is its own (model, dataset, seed) group, so the cells are
independent and an executor may spread them over its workers. Prints seconds and ratios to local.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from test_runner import request, tiny_host, tiny_suite  # noqa: E402

from tlbench.executors import ExecutorConfig  # noqa: E402
from tlbench.runner import run_suite  # noqa: E402


def timed(tmp: Path, suite: Path, name: str, executor: ExecutorConfig) -> float:
    started = time.perf_counter()
    outcome = run_suite(request(tmp, suite, out_dir=tmp / name, executor=executor), tiny_host())
    assert outcome.exit_code == 0, [r.get("error") for r in outcome.failed]
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=6)
    parser.add_argument("--work", type=int, default=6)
    parser.add_argument("--skip-ray", action="store_true")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tlbench-bench-"))
    suite = tiny_suite(tmp / "s.toml", seeds=tuple(range(args.seeds)), work=args.work)
    timed(
        tmp, suite, "warmup", ExecutorConfig()
    )  # imports, preprocessing cache: not what we compare
    results = {"local": timed(tmp, suite, "local", ExecutorConfig())}
    results["process-2"] = timed(tmp, suite, "process", ExecutorConfig("process", workers=2))
    if not args.skip_ray:
        results["ray-2"] = timed(tmp, suite, "ray", ExecutorConfig("ray", workers=2))
    cells = args.seeds * 2
    for name, seconds in results.items():
        print(
            f"{name:10s} {seconds:7.1f} s  {cells} cells  ratio to local {seconds / results['local']:.2f}"
        )


if __name__ == "__main__":
    main()
