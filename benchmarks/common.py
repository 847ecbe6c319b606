"""Shared set-up for the benchmarks: real data and weights, a PreparedData and a CellContext.

Uses ``tlbench.data.prepare`` and the built-in dataset/model factories when they are importable;
otherwise a minimal in-memory loader with the same interface (noted in the output).
"""

from __future__ import annotations

import gzip
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tlbench.cache import Cache  # noqa: E402
from tlbench.components import BuildContext, Cell, CellContext  # noqa: E402

FASHION = Path("/usr/share/datasets/fashion-mnist")


class ArrayData:
    """PreparedData-like view of uint8 grayscale images: resized once, replicated to 3 channels,
    normalised with the model's mean/std; deterministic splits."""

    in_chans = 3

    def __init__(self, name, images, labels, splits, px, mean=(0.5,) * 3, std=(0.5,) * 3):
        self.name, self.px = name, px
        self.num_classes = int(labels.max()) + 1
        self.input_size = (3, px, px)
        self._x, self._y = {}, {}
        for split, idx in splits.items():
            x = torch.tensor(images[idx], dtype=torch.float32)[:, None] / 255.0
            x = F.interpolate(x, size=(px, px), mode="bilinear", align_corners=False, antialias=True).repeat(1, 3, 1, 1)
            m, s = torch.tensor(mean)[None, :, None, None], torch.tensor(std)[None, :, None, None]
            self._x[split] = ((x - m) / s).contiguous()
            self._y[split] = torch.tensor(labels[idx], dtype=torch.long)
        self._x["trainval"] = torch.cat([self._x["train"], self._x["val"]])
        self._y["trainval"] = torch.cat([self._y["train"], self._y["val"]])
        self._sizes = {k: len(v) for k, v in self._y.items()}

    def fingerprint(self, split):
        return f"{self.name}:{self._sizes}:{self.px}:{split}"

    def size(self, split):
        return self._sizes[split]

    def labels(self, split):
        return self._y[split]

    def batches(self, split, batch_size, *, augment=False, shuffle=False, seed=0, device=None):
        x, y = self._x[split], self._y[split]
        g = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(y), generator=g) if shuffle else torch.arange(len(y))
        for i in range(0, len(y), batch_size):
            idx = order[i : i + batch_size]
            xb = x[idx]
            if augment:
                xb = torch.roll(xb, shifts=torch.randint(-2, 3, (2,), generator=g).tolist(), dims=(2, 3))
            yield xb.to(device or "cpu"), y[idx].to(device or "cpu")


def _idx(path):
    with gzip.open(path) as fh:
        data = fh.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def _split(labels, n_train, n_val, seed=0):
    order = np.random.RandomState(seed).permutation(len(labels))
    return order[:n_train], order[n_train : n_train + n_val]


def fashion(px, n_train=800, n_val=200, n_test=10000):
    xtr, ytr = _idx(FASHION / "train-images-idx3-ubyte.gz"), _idx(FASHION / "train-labels-idx1-ubyte.gz")
    xte, yte = _idx(FASHION / "t10k-images-idx3-ubyte.gz"), _idx(FASHION / "t10k-labels-idx1-ubyte.gz")
    tr, va = _split(ytr, n_train, n_val)
    images = np.concatenate([xtr, xte[:n_test]])
    labels = np.concatenate([ytr, yte[:n_test]])
    test = np.arange(len(ytr), len(ytr) + min(n_test, len(yte)))
    return ArrayData("fashion-mnist", images, labels, {"train": tr, "val": va, "test": test}, px)


def digits(px):
    from sklearn.datasets import load_digits

    d = load_digits()
    images = (d.images * 255 / 16).astype(np.uint8)
    order = np.random.RandomState(0).permutation(len(d.target))
    n = len(order)
    tr, va, te = order[: int(0.6 * n)], order[int(0.6 * n) : int(0.8 * n)], order[int(0.8 * n) :]
    return ArrayData("digits", images, d.target, {"train": tr, "val": va, "test": te}, px)


def source(name, px, cache):
    """``efficientnet_lite0.in1k`` (packaged ImageNet weights) or ``scratch:<arch>``."""
    from tlbench.weights import PACKAGED, packaged_model, scratch_model

    context = BuildContext(cache=cache, device="cpu")
    if name.startswith("scratch:"):
        return scratch_model(name.split(":", 1)[1], {"input_size": px}, context)
    return packaged_model(PACKAGED[name], None, {"input_size": px}, context)


def context(source_model, data, strategy, options, cache, seed=0):
    cell = Cell("bench", source_model.name, data.name, strategy, seed, source_model.name, data.name, strategy, {}, {}, options)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return CellContext(cell=cell, source=source_model, data=data, device=device, cache=cache, seed=seed, log=lambda m: None)


def fresh_cache(tag):
    root = Path(os.environ.get("TLBENCH_CACHE", "/tmp/tlbench-bench-cache")) / f"{tag}-{time.time_ns()}"
    return Cache(root)


class timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
