"""The folded depthwise weight gradient equals ATen's, and a routed model trains like the plain one."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.layers.conv2d_same import Conv2dSame

from tlbench.engine.depthwise import (
    MAX_OUTPUT_PIXELS,
    accelerate_depthwise,
    folded_is_faster,
    is_depthwise,
)


def _grads(conv: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    x = x.detach().clone().requires_grad_(True)
    out = conv(x)
    out.backward(torch.linspace(-1, 1, out.numel()).view_as(out))
    return [x.grad] + [p.grad for p in conv.parameters()]


@pytest.mark.parametrize(
    "make, size",
    [
        (lambda: torch.nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), 2),
        (lambda: torch.nn.Conv2d(16, 16, 5, padding=2, groups=16, bias=True), 8),
        (lambda: torch.nn.Conv2d(16, 16, 3, stride=2, padding=1, groups=16), 3),
        (lambda: Conv2dSame(16, 16, 5, stride=2, groups=16, bias=False), 7),
        (lambda: Conv2dSame(16, 16, 3, stride=2, groups=16, bias=False), 4),
    ],
)
def test_routed_depthwise_conv_gives_atens_output_and_gradients(make, size):
    torch.manual_seed(0)
    plain = make()
    routed = copy.deepcopy(plain)
    assert accelerate_depthwise(routed) == 1
    x = torch.randn(4, 16, size, size).contiguous(memory_format=torch.channels_last)
    assert type(routed(x.clone().requires_grad_()).grad_fn).__name__ == "_DepthwiseConvBackward"
    torch.testing.assert_close(routed(x), plain(x))
    got, want = _grads(routed, x), _grads(plain, x)
    assert all(g is not None for g in got + want)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


def test_only_depthwise_convolutions_are_routed():
    model = timm.create_model("tf_efficientnet_lite0", num_classes=10)
    depthwise = [m for m in model.modules() if is_depthwise(m)]
    assert len(depthwise) == 16  # one per inverted-residual / depthwise-separable block
    assert accelerate_depthwise(model) == len(depthwise)
    assert all("forward" not in vars(m) for m in model.modules() if not is_depthwise(m))


def test_the_folded_gradient_is_used_only_where_it_measured_faster():
    assert folded_is_faster(5, 64) and folded_is_faster(5, 4) and not folded_is_faster(5, 81)
    assert folded_is_faster(3, 4) and not folded_is_faster(3, 16)
    # One-pixel maps: 6x slower with one thread on AVX-512 oneDNN, so never folded.
    assert not folded_is_faster(5, 1) and not folded_is_faster(3, 1)


def test_large_maps_frozen_weights_and_no_grad_use_atens_own_path(monkeypatch):
    from tlbench.engine import depthwise

    calls = []
    monkeypatch.setattr(depthwise._DepthwiseConv, "apply", lambda *a: calls.append(a) or None)
    conv = torch.nn.Conv2d(8, 8, 5, padding=2, groups=8)
    accelerate_depthwise(conv)
    side = int(MAX_OUTPUT_PIXELS**0.5) + 1
    assert conv(torch.randn(2, 8, side, side)) is not None  # map too large
    with torch.no_grad():
        assert conv(torch.randn(2, 8, 4, 4)) is not None
    conv.weight.requires_grad_(False)
    assert conv(torch.randn(2, 8, 4, 4)) is not None
    assert calls == []
    conv.weight.requires_grad_(True)
    conv(torch.randn(2, 8, 4, 4))
    assert len(calls) == 1


def test_a_routed_network_takes_the_same_training_step(monkeypatch):
    # One step, compared right after the one backward: the routed gradient equals ATen's up to float
    # summation order. Several float32 steps would amplify the kernels' rounding, which differs
    # between AVX2 and AVX-512 oneDNN builds (issue 26), so the test takes exactly one.
    from tlbench.engine import depthwise

    routed_calls = []
    apply = depthwise._DepthwiseConv.apply
    monkeypatch.setattr(
        depthwise._DepthwiseConv, "apply", lambda *a: routed_calls.append(1) or apply(*a)
    )
    torch.manual_seed(0)
    plain = timm.create_model("tf_efficientnet_lite0", num_classes=5).eval()
    routed = copy.deepcopy(plain)
    accelerate_depthwise(routed)
    x = torch.randn(8, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    y = torch.arange(8) % 5
    for model in (plain, routed):
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert routed_calls, "no convolution took the routed path"
    for (name, p), q in zip(routed.named_parameters(), plain.parameters(), strict=True):
        scale = q.grad.abs().max().item()
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5 * scale, msg=name)
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7, msg=name)
