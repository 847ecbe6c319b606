"""Feature-extraction throughput: tlbench.engine.extract_features (real prepared images, uint8
normalised on the device, features copied back to the host) vs timm's own inference benchmark
loop (timm's benchmark.py ``InferenceBenchmarkRunner``: one random input batch already on the
device in channels-last, ``model(x)`` under no_grad and autocast, nothing else), same model,
resolution, batch and precision. Reports images/s per batch size and the ratio; the two sides
alternate, medians are compared.

    .venv/bin/python benchmarks/bench_features.py [--px 64] [--batches 64 256] [--repeats 3]
"""

from __future__ import annotations

import argparse

import common
import torch

from tlbench.engine import extract_features
from tlbench.engine.runtime import autocast, memory_format, resolve_precision


def timm_benchmark(model, batch, input_size, device, precision, steps) -> float:
    """timm benchmark.py's inference loop (warm-up, then timed steps on one example batch)."""
    example = torch.randn((batch, *input_size), device=device).contiguous(
        memory_format=memory_format(device)
    )
    with torch.no_grad():
        for _ in range(3):
            with autocast(device, precision):
                model(example)
        with common.timer() as t:
            for _ in range(steps):
                with autocast(device, precision):
                    model(example)
    return batch * steps / t.seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--px", type=int, default=64)
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=3200)
    parser.add_argument("--model", default="efficientnet_lite0.in1k")
    parser.add_argument("--dataset", default="fashion-mnist", choices=("fashion-mnist", "digits"))
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    args = parser.parse_args()
    start_stamp = common.stamp()
    device = torch.device(args.device) if args.device else common.device()
    precision = resolve_precision(args.precision, device)
    store = common.cache("throughput")
    src = common.source(args.model, args.px, store)
    data = common.prepared(args.dataset, src, args.px, store, train_size=round(args.images / 0.8))
    model = src.build(num_classes=0, in_chans=data.in_chans, seed=0)
    model = model.eval().to(device, memory_format=memory_format(device))
    n = data.size("train")
    data.stored("train")  # preprocessing happens once per run, outside the timed loop
    rows, results = [], {}
    for batch in args.batches:
        steps = max(3, n // batch)
        extract_features(model, data, "train", device=device, precision=precision, batch_size=batch)
        ours, theirs = [], []
        for r in range(args.repeats):
            for side in ("ours", "timm") if r % 2 == 0 else ("timm", "ours"):
                if side == "ours":
                    with common.timer() as t:
                        extract_features(
                            model,
                            data,
                            "train",
                            device=device,
                            precision=precision,
                            batch_size=batch,
                        )
                    ours.append(n / t.seconds)
                else:
                    theirs.append(
                        timm_benchmark(model, batch, data.input_size, device, precision, steps)
                    )
        a, b = common.median(ours), common.median(theirs)
        rows.append([batch, a, b, a / b])
        results[batch] = {"tlbench_img_s": ours, "timm_img_s": theirs, "ratio": a / b}
    common.print_table(
        f"Feature extraction, {args.model} at {args.px} px, {n} images, {device} {precision}, "
        f"median of {args.repeats}",
        ["batch", "tlbench img/s", "timm benchmark img/s", "ratio"],
        rows,
    )
    common.log_result("feature_extraction", args, results, start_stamp=start_stamp)


if __name__ == "__main__":
    main()
