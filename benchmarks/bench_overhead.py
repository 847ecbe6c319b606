"""Harness overhead: full fine-tuning images/s in tlbench's training loop vs a minimal bare loop
running the same kernels.

tlbench: the engine's own path (``PreparedData`` uint8 batches normalised on the device,
``train_epochs`` with timm's AdamW and cosine schedule, autocast context, the divergence check,
cost metering), one epoch per round. Bare: the same model, weights, batch size and optimiser on
preprocessed float tensors already in channels-last layout, nothing else: forward, cross-entropy,
backward, step. Both with frozen BatchNorm statistics and channels-last, and on CPU both with
tlbench's depthwise weight-gradient patch (``--no-depthwise``: both without). Rounds alternate
the two sides; the medians are compared.

    .venv/bin/python benchmarks/bench_overhead.py [--px 64] [--batch 64] [--rounds 5] [--images 1024]
"""

from __future__ import annotations

import argparse
import copy

import common
import torch
import torch.nn.functional as F

from tlbench.engine.depthwise import accelerate_depthwise
from tlbench.engine.runtime import CostMeter, autocast, memory_format, resolve_precision
from tlbench.engine.training import (
    TrainConfig,
    _ImageFeeder,
    set_train_mode,
    train_epochs,
)


def bare_epoch(model, optimizer, images, labels, batch, device, precision, seed) -> float:
    """One epoch of the minimal loop; returns seconds."""
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    with common.timer() as t:
        for start in range(0, len(order), batch):
            idx = order[start : start + batch]
            x, y = images[idx].to(device, non_blocking=True), labels[idx].to(device)
            with autocast(device, precision):
                loss = F.cross_entropy(model(x).float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return t.seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="efficientnet_lite0.in1k")
    parser.add_argument("--px", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--images", type=int, default=1024, help="training images per epoch")
    parser.add_argument("--dataset", default="fashion-mnist", choices=("fashion-mnist", "digits"))
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--no-depthwise", action="store_true")
    args = parser.parse_args()
    start_stamp = common.stamp()
    device = torch.device(args.device) if args.device else common.device()
    precision = resolve_precision(args.precision, device)
    store = common.cache("overhead")
    src = common.source(args.model, args.px, store)
    # train_size caps train+val; val takes 20% of it, so train holds about --images.
    data = common.prepared(args.dataset, src, args.px, store, train_size=round(args.images / 0.8))
    n = data.size("train")

    def build():
        torch.manual_seed(0)
        model = src.build(num_classes=data.num_classes, in_chans=data.in_chans, seed=0)
        model = model.to(device, memory_format=memory_format(device))
        if device.type == "cpu" and not args.no_depthwise:
            accelerate_depthwise(model)
        set_train_mode(model, frozen_bn=True)
        return model

    ours_model = build()
    bare_model = build()
    bare_model.load_state_dict(copy.deepcopy(ours_model.state_dict()))
    set_train_mode(bare_model, frozen_bn=True)
    cfg = TrainConfig(epochs=args.rounds + 1, lr=1e-3, batch_size=args.batch, precision=precision)
    meter = CostMeter(device, precision)
    epochs = train_epochs(
        ours_model,
        _ImageFeeder(ours_model, data, device, augment=False),
        cfg,
        split="train",
        epochs=args.rounds + 1,
        steps_per_epoch=-(-n // args.batch),
        seed=0,
        device=device,
        precision=precision,
        meter=meter,
    )
    from timm.optim import create_optimizer_v2

    optimizer = create_optimizer_v2(bare_model, opt="adamw", lr=1e-3, weight_decay=0.05)
    images = torch.cat([x for x, _ in data.batches("train", 512)]).contiguous(
        memory_format=memory_format(device)
    )
    labels = data.labels("train")
    ours, bare = [], []
    next(epochs)  # warm-up: first-touch allocations, oneDNN kernel selection
    bare_epoch(bare_model, optimizer, images, labels, args.batch, device, precision, 0)
    for r in range(args.rounds):
        sides = ("ours", "bare") if r % 2 == 0 else ("bare", "ours")
        for side in sides:
            if side == "ours":
                with common.timer() as t:
                    next(epochs)
                ours.append(n / t.seconds)
            else:
                seconds = bare_epoch(
                    bare_model, optimizer, images, labels, args.batch, device, precision, r + 1
                )
                bare.append(n / seconds)
    a, b = common.median(ours), common.median(bare)
    common.print_table(
        f"Full fine-tuning throughput, {args.model} at {args.px} px, batch {args.batch}, "
        f"{n} images/epoch, {device} {precision}, depthwise patch "
        f"{'off' if args.no_depthwise or device.type != 'cpu' else 'on'}, median of {args.rounds}",
        ["loop", "images/s", "rounds"],
        [
            ["tlbench train_epochs", a, ", ".join(f"{v:.0f}" for v in ours)],
            ["bare loop", b, ", ".join(f"{v:.0f}" for v in bare)],
            ["tlbench / bare", a / b, ""],
        ],
    )
    common.log_result(
        "harness_overhead",
        args,
        {"tlbench_img_s": ours, "bare_img_s": bare, "ratio": a / b, "device": str(device)},
        start_stamp=start_stamp,
    )


if __name__ == "__main__":
    main()
