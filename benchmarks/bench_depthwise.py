"""Depthwise weight gradient: tlbench.engine.depthwise (one folded depthwise convolution) vs
ATen's oneDNN kernel, per layer shape of EfficientNet-Lite0, and one training step of the whole
network and of the partial-unfreeze suffix with and without it. Interleaved rounds; medians.

    .venv/bin/python benchmarks/bench_depthwise.py [--px 64] [--batch 64]
"""

from __future__ import annotations

import argparse
import statistics
import time

import timm
import torch
import torch.nn.functional as F

from tlbench.engine.depthwise import (
    _same_padding_input,
    accelerate_depthwise,
    depthwise_weight_grad,
    is_depthwise,
)


def _median_ms(fn, rounds: int = 7) -> float:
    fn()
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def layer_shapes(model, px: int, batch: int):
    """(input shape, conv) for every depthwise layer, recorded from one forward pass."""
    seen = []
    hooks = [
        m.register_forward_pre_hook(lambda m, i: seen.append((tuple(i[0].shape), m)))
        for m in model.modules()
        if is_depthwise(m)
    ]
    with torch.no_grad():
        model(torch.randn(batch, 3, px, px))
    for hook in hooks:
        hook.remove()
    return seen


def layer_times(conv, shape) -> tuple[float, float]:
    """Median ms of ATen's depthwise weight gradient and of the folded one for ``conv``."""
    x = torch.randn(shape).contiguous(memory_format=torch.channels_last)
    x, padding = _same_padding_input(conv, x)
    weight = conv.weight.detach()
    grad = torch.randn_like(F.conv2d(x, weight, None, conv.stride, padding, 1, weight.shape[0]))
    args = (tuple(conv.stride), padding, (1, 1), False, (0, 0), weight.shape[0])
    aten = _median_ms(
        lambda: torch.ops.aten.convolution_backward(
            grad, x, weight, None, *args, (False, True, False)
        )
    )
    folded = _median_ms(lambda: depthwise_weight_grad(x, grad, weight.shape, conv.stride, padding))
    return aten, folded


def per_layer(model, px, batch):
    print(f"{'input':>22} {'k':>3} {'s':>2} {'aten ms':>8} {'folded ms':>9} {'ratio':>6}")
    for shape, conv in layer_shapes(model, px, batch):
        aten, folded = layer_times(conv, shape)
        k, stride = conv.weight.shape[-1], conv.stride[0]
        print(
            f"{str(shape):>22} {k:>3} {stride:>2} {aten:8.2f} {folded:9.2f} {aten / folded:5.2f}x"
        )


def training_steps(px: int, batch: int, rounds: int):
    """Images/s of a full fine-tuning step and of a suffix-only step (last two stages + head,
    the partial-unfreeze k=2 case), plain vs accelerated, interleaved."""
    torch.manual_seed(0)
    base = timm.create_model("tf_efficientnet_lite0", num_classes=10)
    x = torch.randn(batch, 3, px, px).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    with torch.no_grad():
        h = base.blocks[:5](base.bn1(base.conv_stem(x))).contiguous(
            memory_format=torch.channels_last
        )

    def make(accelerated: bool, suffix: bool):
        model = timm.create_model("tf_efficientnet_lite0", num_classes=10)
        model.load_state_dict(base.state_dict())
        model.eval().to(memory_format=torch.channels_last)  # frozen BN statistics, as tlbench
        if accelerated:
            accelerate_depthwise(model)
        if suffix:
            tail = torch.nn.Sequential(*model.blocks[5:], model.conv_head, model.bn2)
            forward, inputs = (lambda: model.forward_head(tail(h))), tail.parameters()
            params = list(inputs) + list(model.classifier.parameters())
        else:
            forward, params = (lambda: model(x)), list(model.parameters())
        opt = torch.optim.AdamW(params, lr=1e-3)

        def step():
            loss = F.cross_entropy(forward(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return step

    for suffix in (False, True):
        steps = {name: make(name == "accelerated", suffix) for name in ("aten", "accelerated")}
        rates = {name: [] for name in steps}
        for _ in range(rounds):
            for name, step in steps.items():
                step()
                start = time.perf_counter()
                for _ in range(5):
                    step()
                rates[name].append(5 * batch / (time.perf_counter() - start))
        plain, fast = (statistics.median(rates[n]) for n in ("aten", "accelerated"))
        label = "suffix (last 2 stages + head)" if suffix else "whole network"
        print(f"{label}: aten {plain:.0f} img/s, accelerated {fast:.0f} img/s: {fast / plain:.2f}x")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--px", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    per_layer(timm.create_model("tf_efficientnet_lite0"), args.px, args.batch)
    training_steps(args.px, args.batch, args.rounds)


if __name__ == "__main__":
    main()
