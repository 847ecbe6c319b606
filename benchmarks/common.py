"""Shared set-up for the benchmarks: real data and weights through tlbench's own modules
(dataset factories, ``tlbench.data.prepare``, model factories), and a CellContext to run in.
"""

from __future__ import annotations

import os
import sys
import time
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
