"""Shared set-up for the benchmarks: real data and weights through tlbench's own modules
(dataset factories, ``tlbench.data.prepare``, model factories), a CellContext to run in, and
what every benchmark reports: one printed table and one JSON line (``log_result``) stamped with
the commit, the CPU and its instruction set, threads and the machine's load.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tlbench.cache import Cache  # noqa: E402
from tlbench.components import BuildContext, Cell, CellContext  # noqa: E402
from tlbench.specs import COMMON_OPTIONS, resolve_options  # noqa: E402


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cache(tag: str) -> Cache:
    """A cache under $TLBENCH_CACHE (default /tmp/tlbench-bench-cache)/<tag>."""
    return Cache(Path(os.environ.get("TLBENCH_CACHE", "/tmp/tlbench-bench-cache")) / tag)


def source(name: str, px: int, store: Cache):
    """``efficientnet_lite0.in1k`` (packaged ImageNet weights) or ``scratch:<arch>``."""
    from tlbench.builtin.model_sources import PACKAGED, packaged_model, scratch_model

    context = BuildContext(cache=store, device=str(device()))
    options = {"input_size": px, "input_adaptation": "replicate"}
    if name.startswith("scratch:"):
        return scratch_model(name.split(":", 1)[1], options, context)
    return packaged_model(PACKAGED[name], None, options, context)


def prepared(dataset: str, src, px: int, store: Cache, seed: int = 0, **dataset_options):
    """``digits`` or ``fashion-mnist`` prepared for ``src`` (e.g. ``train_size=1000``)."""
    from tlbench.data import prepare
    from tlbench.datasetlib import local

    loader = {"digits": local.digits, "fashion-mnist": local.fashion_mnist}[dataset]
    target = loader(None, {}, BuildContext(cache=store, device=str(device())))
    options = resolve_options(
        COMMON_OPTIONS["dataset"], {k: v for k, v in dataset_options.items() if v is not None}
    )
    return prepare(
        target, src, options, {"input_size": px, "input_adaptation": "replicate"}, seed, store
    )


def context(
    src, data, strategy: str, options: dict, store: Cache, seed: int = 0, dataset: str = "data"
) -> CellContext:
    cell = Cell(
        "bench", src.name, dataset, strategy, seed, src.name, dataset, strategy, {}, {}, options
    )
    return CellContext(
        cell=cell,
        source=src,
        data=data,
        device=device(),
        cache=store,
        seed=seed,
        log=lambda m: None,
    )


class timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.seconds = time.perf_counter() - self.start


# ------------------------------------------------------------------------------ reporting

# Where every benchmark appends its JSON line (an ignored folder; override with $TLBENCH_BENCH_LOG).
LOG = Path(os.environ.get("TLBENCH_BENCH_LOG", ROOT / "results" / "benchmarks" / "bench.jsonl"))


def stamp() -> dict:
    """What a timing depends on: commit, CPU model and instruction set, torch's kernel choice,
    threads, the GPU, and the load average when it was taken."""
    from tlbench.provenance import git_revision, hardware

    info = hardware()
    return {
        "commit": git_revision(),
        "cpu": info["cpu"].get("model"),
        "cpu_flags": info["cpu"].get("flags"),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cuda": info.get("cuda"),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence]) -> None:
    """A Markdown table, ready to paste into docs/benchmarks.md."""
    cells = [[_fmt(v) for v in row] for row in rows]
    print(f"\n{title}\n")
    print("| " + " | ".join(headers) + " |")
    print("|" + "|".join("---" for _ in headers) + "|")
    for row in cells:
        print("| " + " | ".join(row) + " |")
    print()


def _fmt(value) -> str:
    if isinstance(value, float):
        return (
            f"{value:.3g}"
            if abs(value) < 1
            else f"{value:.2f}"
            if abs(value) < 100
            else f"{value:.1f}"
        )
    return str(value)


def log_result(benchmark: str, args, results: dict, *, start_stamp: dict | None = None) -> dict:
    """Append one JSON line: the benchmark, its arguments, the environment at the start and the
    end (load average at both), and its results. Returns the line."""
    line = {
        "benchmark": benchmark,
        "argv": sys.argv[1:],
        "args": {k: v for k, v in vars(args).items()} if args is not None else {},
        "start": start_stamp,
        "end": stamp(),
        "results": results,
    }
    LOG.parent.mkdir(parents=True, exist_ok=True)
    with LOG.open("a") as fh:
        fh.write(json.dumps(line, default=str) + "\n")
    print(f"appended to {LOG}")
    return line


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else 0.5 * (ordered[mid - 1] + ordered[mid])
