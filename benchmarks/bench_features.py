"""Feature-extraction throughput: tlbench.engine.extract_features (through PreparedData) vs a
timm benchmark.py-style loop (same model, resolution, batch, precision, preprocessed tensors
already in memory). Reports images/s and the ratio.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_features.py [--px 64] [--batch 256]
"""

from __future__ import annotations

import argparse

import common
import torch

from tlbench.engine import extract_features
from tlbench.engine.runtime import autocast, memory_format, resolve_precision


def timm_style(model, images, batch, device, precision):
    model = model.eval().to(device, memory_format=memory_format(device))
    with torch.no_grad(), common.timer() as t:
        for start in range(0, len(images), batch):
            x = (
                images[start : start + batch]
                .to(device)
                .contiguous(memory_format=memory_format(device))
            )
            with autocast(device, precision):
                model(x).float().cpu()
    return len(images) / t.seconds


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--px", type=int, default=64)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default="efficientnet_lite0.in1k")
    args = parser.parse_args()
    store = common.cache("throughput")
    src = common.source(args.model, args.px, store)
    data = common.prepared("fashion-mnist", src, args.px, store, train_size=4000)
    device = common.device()
    precision = resolve_precision("auto", device)
    model = src.build(num_classes=0, in_chans=data.in_chans, seed=0)
    images = torch.cat(
        [x for x, _ in data.batches("train", 1024)]
    )  # preprocessing outside the timed loop
    n = len(images)
    extract_features(
        model, data, "train", device=device, batch_size=args.batch
    )  # warm-up, decodes once
    ours, theirs = [], []
    for _ in range(args.repeats):  # interleaved so both see the same machine load
        with common.timer() as t:
            extract_features(
                model, data, "train", device=device, precision=precision, batch_size=args.batch
            )
        ours.append(n / t.seconds)
        theirs.append(timm_style(model, images, args.batch, device, precision))
    a, b = sorted(ours)[len(ours) // 2], sorted(theirs)[len(theirs) // 2]
    print(
        f"model={args.model} px={args.px} batch={args.batch} images={n} device={device} precision={precision}"
    )
    print(f"tlbench extract_features : {a:8.1f} img/s")
    print(f"timm-style loop          : {b:8.1f} img/s")
    print(f"ratio                    : {a / b:.2f}x")


if __name__ == "__main__":
    main()
