"""Frozen-backbone features and frozen-prefix activations, computed once and cached.

A cache entry is keyed by everything that changes its content: the weights fingerprint, the
data fingerprint of the split (content + indices + transform), input channels and size, compute
precision and, for prefix activations, the module the prefix ends before.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from tlbench.engine.runtime import (
    autocast,
    memory_format,
    resolve_device,
    resolve_precision,
    with_oom_retry,
)

# Splits the cached paths read; trainval is assembled from train + val (same images), which
# saves a pass over the data and keeps one cache entry per split.
BASE_SPLITS = ("train", "val", "test")
# Heads and pooling are not part of the feature stack a prefix/suffix split cuts through.
_HEAD_CHILDREN = {"global_pool", "classifier", "fc", "head", "head_drop", "fc_norm", "pre_logits"}
# Prefix activations above this size are recomputed instead of cached (they would not pay).
MAX_PREFIX_CACHE_BYTES = 3 * 2**30


Backbone = nn.Module | Callable[[], nn.Module]


@torch.no_grad()
def _run_frozen(
    module: Callable, data, split: str, device: torch.device, precision: str, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    chunks, labels = [], []
    for images, targets in data.batches(
        split, batch_size, augment=False, shuffle=False, seed=0, device=device
    ):
        images = images.to(device, non_blocking=True).contiguous(
            memory_format=memory_format(device)
        )
        with autocast(device, precision):
            out = module(images)
        chunks.append(out.float().cpu())
        labels.append(targets.cpu())
    return torch.cat(chunks), torch.cat(labels)


def extract_features(
    backbone: Backbone,
    data,
    split: str,
    *,
    device: str | torch.device | None = None,
    precision: str = "auto",
    batch_size: int = 256,
    cache=None,
    weights_fingerprint: str | None = None,
    params_out: list | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled penultimate features of ``split`` (float32, CPU) and their labels.

    ``backbone`` is a headless model (``source.build(num_classes=0, ...)``) or a zero-argument
    callable returning one, so a cache hit never builds the model. With ``cache`` and
    ``weights_fingerprint`` the result is cached (namespace ``features``).
    """
    device = resolve_device(device)
    precision = resolve_precision(precision, device)

    def compute() -> dict:
        model = backbone() if not isinstance(backbone, nn.Module) else backbone
        model = model.eval().to(device, memory_format=memory_format(device))
        (feats, labels), _ = with_oom_retry(
            lambda bs: _run_frozen(model, data, split, device, precision, bs), batch_size
        )
        return {
            "features": feats,
            "labels": labels,
            "params": sum(p.numel() for p in model.parameters()),
        }

    if cache is None or weights_fingerprint is None:
        out = compute()
    else:
        key = features_key(data, split, weights_fingerprint, precision)
        out = cache.get_or_compute("features", key, compute)
    if params_out is not None:
        params_out.append(out["params"])
    return out["features"], out["labels"]


def features_key(data, split: str, weights_fingerprint: str, precision: str) -> dict:
    return {
        "weights": weights_fingerprint,
        "data": data.fingerprint(split),
        "in_chans": data.in_chans,
        "input_size": list(data.input_size),
        "precision": precision,
    }


@dataclass(frozen=True)
class CellFeatures:
    splits: dict[str, tuple[torch.Tensor, torch.Tensor]]  # split -> (features, labels)
    backbone_params: int

    def __getitem__(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        return self.splits[split]


def cell_features(
    ctx, splits=BASE_SPLITS, *, precision: str = "auto", batch_size: int = 256
) -> CellFeatures:
    """Features of a cell's splits, building the backbone at most once and only on a cache miss.
    ``trainval`` may be requested; it is assembled from train and val."""
    built: list[nn.Module] = []

    def backbone() -> nn.Module:
        if not built:
            built.append(ctx.source.build(num_classes=0, in_chans=ctx.data.in_chans, seed=ctx.seed))
        return built[0]

    out, params = {}, []
    for split in dict.fromkeys(
        s for name in splits for s in (("train", "val") if name == "trainval" else (name,))
    ):
        out[split] = extract_features(
            backbone,
            ctx.data,
            split,
            device=ctx.device,
            precision=precision,
            batch_size=batch_size,
            cache=ctx.cache,
            weights_fingerprint=ctx.source.fingerprint,
            params_out=params,
        )
    if "trainval" in splits:
        out["trainval"] = tuple(
            torch.cat([a, b]) for a, b in zip(out["train"], out["val"], strict=True)
        )
    return CellFeatures({s: out[s] for s in splits}, params[0])


# ------------------------------------------------------------------------------ prefix / suffix


@dataclass
class PrefixSplit:
    """A model cut into a frozen ``prefix`` and the ``suffix`` that continues from its output.

    ``forward_suffix(h)`` equals ``model(x)`` when ``h = prefix(x)``; the cut was verified
    numerically on the model itself before being trusted.
    """

    model: nn.Module
    prefix: nn.Sequential
    suffix: nn.Sequential
    boundary: str  # qualified name of the first suffix module ("" when the whole stack is frozen)

    def forward_suffix(self, h: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.suffix(h))


def _flatten(name: str, module: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    # nn.Sequential's forward is plain chaining, so expanding it keeps the computation identical.
    if isinstance(module, nn.Sequential):
        for child_name, child in module.named_children():
            yield from _flatten(f"{name}.{child_name}", child)
    else:
        yield name, module


def feature_stack(model: nn.Module) -> list[tuple[str, nn.Module]]:
    classifier = model.get_classifier() if hasattr(model, "get_classifier") else None
    stack = []
    for name, child in model.named_children():
        if name in _HEAD_CHILDREN or child is classifier:
            continue
        stack.extend(_flatten(name, child))
    return stack


@torch.no_grad()
def _chain_matches(
    model: nn.Module, stack: list[tuple[str, nn.Module]], sample: torch.Tensor
) -> bool:
    """The registration order of children is only a guess at the forward order; check it."""
    was_training = model.training
    model.eval()
    try:
        expected = model.forward_features(sample)
        got = nn.Sequential(*(m for _, m in stack))(sample)
        return got.shape == expected.shape and torch.allclose(got, expected, rtol=1e-4, atol=1e-4)
    except Exception:
        return False
    finally:
        model.train(was_training)


def split_frozen_prefix(model: nn.Module, sample: torch.Tensor) -> PrefixSplit | None:
    """Cut ``model`` before its first module with a trainable parameter, or return ``None`` when
    the model's forward is not a plain chain of its children (then run it whole)."""
    if not (hasattr(model, "forward_features") and hasattr(model, "forward_head")):
        return None
    stack = feature_stack(model)
    if not stack or not _chain_matches(model, stack, sample):
        return None
    cut = next(
        (i for i, (_, m) in enumerate(stack) if any(p.requires_grad for p in m.parameters())),
        len(stack),
    )
    if cut == 0:
        return None
    modules = [m for _, m in stack]
    boundary = stack[cut][0] if cut < len(stack) else ""
    return PrefixSplit(
        model, nn.Sequential(*modules[:cut]), nn.Sequential(*modules[cut:]), boundary
    )


def prefix_activations(
    split_model: PrefixSplit,
    ctx,
    split: str,
    *,
    precision: str,
    batch_size: int = 256,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Outputs of the frozen prefix on ``split`` (no augmentation), cached in ``prefix`` namespace."""
    device = resolve_device(ctx.device)
    key = {
        **features_key(ctx.data, split, ctx.source.fingerprint, precision),
        "boundary": split_model.boundary,
        "arch": ctx.source.arch,
    }

    def compute() -> dict:
        prefix = split_model.prefix.eval().to(device)
        (acts, labels), _ = with_oom_retry(
            lambda bs: _run_frozen(prefix, ctx.data, split, device, precision, bs), batch_size
        )
        return {"features": acts, "labels": labels}

    out = ctx.cache.get_or_compute("prefix", key, compute)
    return out["features"], out["labels"]


def prefix_bytes(split_model: PrefixSplit, sample: torch.Tensor, num_images: int) -> int:
    with torch.no_grad():
        was_training = split_model.prefix.training
        out = split_model.prefix.eval()(sample[:1])
        split_model.prefix.train(was_training)
    return out[0].numel() * 4 * num_images
