"""A faster weight gradient for depthwise convolutions on small CPU feature maps.

oneDNN's depthwise *weight-gradient* kernel is slow when the feature map is small: on the 2-core
development machine, a 64x1152x2x2 map with a 5x5 kernel (EfficientNet's last stages at 64 px
input) takes ~10 ms for the weight gradient against 0.4 ms for the forward pass. That gradient is
itself a depthwise convolution: fold batch and channels into one channel axis, use the output
gradient as the kernel, and sum the result over the batch. oneDNN's *forward* kernel computes it
~3x faster for the 5x5 kernels on maps from 2x2 up to 8x8 and for 3x3 kernels on 2x2 maps; elsewhere
oneDNN's own gradient is as fast or faster (``folded_is_faster``; `benchmarks/bench_depthwise.py`
prints both sides per layer). The rule is a fixed function of the layer's shape, not a timing
taken at run time, so results stay bit-for-bit reproducible.

Only the weight gradient changes; the forward pass and the input gradient are ATen's own. The
result equals ATen's up to float summation order. ``accelerate_depthwise`` installs it on the
depthwise convolutions of a model (plain ``nn.Conv2d`` and timm's ``Conv2dSame``); it is used only
on CPU, in fp32, while the layer's weight trains, and the module falls back to its own forward
everywhere else (frozen weights, CUDA, autocast, no grad).
"""

from __future__ import annotations

import os
import types

import torch
import torch.nn.functional as F
from timm.layers.conv2d_same import Conv2dSame
from timm.layers.padding import pad_same
from torch import nn

# Where the folded gradient beat ATen's on EfficientNet-Lite0's layers (torch 2.14 / oneDNN, 2-core
# Xeon; `benchmarks/bench_depthwise.py`): 5x5 kernels on output maps up to 8x8 (1.3-3.6x), 3x3
# kernels only on 2x2 maps (3.6x; on 4x4 maps ATen was 3-5x faster).
MAX_OUTPUT_PIXELS = 64
MAX_OUTPUT_PIXELS_SMALL_KERNEL = 4
# 1x1 output maps (lite0's last stage at 32 px input) are never folded: with two threads the folded
# form was 12-16x faster there, but with one thread (each worker of `--executor process` on 2
# cores) oneDNN's kernel for its 36k one-pixel groups took 155-239 ms against ATen's 13-19 ms, and
# a whole training step ran 6x slower (31 vs 191 img/s; 2-core AMD EPYC, AVX-512, batch 32). A
# fixed rule by shape keeps results reproducible, so the shape that depends on the thread count
# stays with ATen.
MIN_OUTPUT_PIXELS = 2
# TLBENCH_DEPTHWISE_GRAD=0 keeps ATen's own gradient everywhere: a user comparing numbers with
# another tool can rule this patch out (every record says whether it was on).
SWITCH = "TLBENCH_DEPTHWISE_GRAD"


def enabled() -> bool:
    return os.environ.get(SWITCH, "1").strip().lower() not in ("0", "false", "off", "no")


def folded_is_faster(kernel_size: int, output_pixels: int) -> bool:
    if output_pixels < MIN_OUTPUT_PIXELS:
        return False
    if kernel_size >= 5:
        return output_pixels <= MAX_OUTPUT_PIXELS
    return output_pixels <= MAX_OUTPUT_PIXELS_SMALL_KERNEL


class _DepthwiseConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding):
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding, ctx.has_bias = stride, padding, bias is not None
        return F.conv2d(x, weight, bias, stride, padding, 1, weight.shape[0])

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad_out,
                x,
                weight,
                None,
                ctx.stride,
                ctx.padding,
                (1, 1),
                False,
                (0, 0),
                weight.shape[0],
                (True, False, False),
            )[0]
        if ctx.needs_input_grad[1]:
            grad_w = depthwise_weight_grad(x, grad_out, weight.shape, ctx.stride, ctx.padding)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_out.sum((0, 2, 3))
        return grad_x, grad_w, grad_b, None, None


def depthwise_weight_grad(x, grad_out, weight_shape, stride, padding) -> torch.Tensor:
    """d(loss)/d(weight) of ``conv2d(x, weight, stride=stride, padding=padding, groups=C)``,
    computed as one depthwise convolution over the (batch x channel) axis."""
    n, c, h, w = x.shape
    kh, kw = weight_shape[-2:]
    oh, ow = grad_out.shape[-2:]
    # [1, N*C, H, W] with channels innermost, as oneDNN's depthwise forward wants it.
    folded = x.permute(2, 3, 0, 1).reshape(1, h, w, n * c).permute(0, 3, 1, 2)
    kernels = grad_out.contiguous().view(n * c, 1, oh, ow)
    # weight tap (i, j) meets input pixel (i + stride*y, j + stride*x): stride becomes dilation.
    out = F.conv2d(folded, kernels, None, 1, padding, stride, n * c)[..., :kh, :kw]
    return out.reshape(n, c, kh, kw).sum(0).unsqueeze(1)


def is_depthwise(module: nn.Module) -> bool:
    return (
        isinstance(module, nn.Conv2d)
        and module.groups > 1
        and module.groups == module.in_channels == module.out_channels
        and tuple(module.dilation) == (1, 1)
        and module.padding_mode == "zeros"
    )


def _supported(module: nn.Module) -> bool:
    """Plain ``nn.Conv2d`` with numeric padding, or timm's ``Conv2dSame`` (TF "same" padding,
    computed per input in its forward): the two whose padding we reproduce exactly."""
    if isinstance(module, Conv2dSame):
        return True
    return type(module) is nn.Conv2d and not isinstance(module.padding, str)


def _same_padding_input(module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, tuple]:
    """The input and explicit padding the module's own forward hands to ``conv2d``."""
    if isinstance(module, Conv2dSame):
        return pad_same(x, module.weight.shape[-2:], module.stride, module.dilation), (0, 0)
    return x, tuple(module.padding)


def _fast_forward(self, x):
    weight = self.weight
    usable = (
        weight.requires_grad
        and torch.is_grad_enabled()
        and x.device.type == "cpu"
        and x.dtype == weight.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
    )
    if usable:
        padded, padding = _same_padding_input(self, x)
        oh = (padded.shape[-2] + 2 * padding[0] - weight.shape[-2]) // self.stride[0] + 1
        ow = (padded.shape[-1] + 2 * padding[1] - weight.shape[-1]) // self.stride[1] + 1
        if folded_is_faster(min(weight.shape[-2:]), oh * ow):
            return _DepthwiseConv.apply(padded, weight, self.bias, tuple(self.stride), padding)
    return type(self).forward(self, x)


def accelerate_depthwise(model: nn.Module) -> int:
    """Route the depthwise convolutions of ``model`` through the faster weight gradient where it
    applies; returns how many layers were routed (0 when switched off, see ``SWITCH``).
    Idempotent."""
    if not enabled():
        return 0
    routed = 0
    for module in model.modules():
        if is_depthwise(module) and _supported(module):
            module.forward = types.MethodType(_fast_forward, module)
            routed += 1
    return routed
