"""Trivial baselines as source models: what every transfer claim must beat.

    pixels            the image itself, flattened: a linear probe on raw pixels
    random-features   a fixed random ReLU projection of the pixels (Rahimi & Recht 2007)

Both go through the same preprocessing, splits, strategies and statistics as any source model,
so "ImageNet pretraining helps" is measured against the best of them, not only against a
randomly initialised network. A target where a trivial baseline is as good as every source is too
easy to measure transfer on, and the report says so (docs/reports.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from tlbench.api import BuildContext, SourceModel

# Preprocessing of the baselines: no ImageNet statistics (there are no weights to match), the
# image as it is at the chosen resolution (no centre crop).
DEFAULT_SIZE = 32


def _data_config(options: Mapping[str, Any]) -> dict:
    size = options.get("input_size") or DEFAULT_SIZE
    return {
        "input_size": (3, size, size),
        "interpolation": "bilinear",
        "mean": (0.5, 0.5, 0.5),
        "std": (0.5, 0.5, 0.5),
        "crop_pct": 1.0,
        "crop_mode": "center",
    }


class FlatFeatures(nn.Module):
    """A timm-like module over flattened pixels: ``features`` (a fixed, untrained map from the
    flattened image, identity for raw pixels) then a linear classifier. It offers what the
    built-in strategies use: ``forward_features``, ``forward_head``, ``get_classifier``,
    ``reset_classifier`` and ``num_features``."""

    def __init__(self, features: nn.Module, num_features: int, num_classes: int):
        super().__init__()
        self.features = features
        self.num_features = num_features
        self.classifier: nn.Module = nn.Identity()
        self.reset_classifier(num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x.flatten(1))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int) -> None:
        self.classifier = (
            nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()
        )


class RandomReLU(nn.Module):
    """relu(W x + b) with W ~ N(0, 1/d) and b ~ U(-1, 1), fixed (no parameter trains)."""

    def __init__(self, inputs: int, dim: int, seed: int):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("weight", torch.randn(dim, inputs, generator=generator) / inputs**0.5)
        self.register_buffer("bias", 2 * torch.rand(dim, generator=generator) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x @ self.weight.T + self.bias)


def _pixels_count(config: dict, in_chans: int) -> int:
    _, height, width = config["input_size"]
    return in_chans * height * width


def _head_init(model: nn.Module, num_classes: int, seed: int) -> nn.Module:
    if num_classes:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model.reset_classifier(num_classes)
    return model.eval()


def pixels_model(argument: str | None, options: Mapping[str, Any], context: BuildContext):
    config = _data_config(options)

    def build(num_classes: int, in_chans: int = 3, seed: int = 0) -> nn.Module:
        dim = _pixels_count(config, in_chans)
        return _head_init(FlatFeatures(nn.Identity(), dim, num_classes), num_classes, seed)

    size = config["input_size"][1]
    card = {
        "architecture": "flattened pixels",
        "trivial_baseline": True,
        "weights_source": "none: the image itself",
        "num_features": _pixels_count(config, 3),
        "total_params": 0,
        "backbone_params": 0,
        "data_config": {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()},
    }
    return SourceModel(
        name="pixels",
        arch="pixels",
        weights="none",
        fingerprint=f"pixels:v1:{size}",
        data_config=config,
        build=build,
        card=card,
    )


def random_features_model(argument: str | None, options: Mapping[str, Any], context: BuildContext):
    config = _data_config(options)
    dim, projection_seed = options["dim"], context.seed

    def build(num_classes: int, in_chans: int = 3, seed: int = 0) -> nn.Module:
        features = RandomReLU(_pixels_count(config, in_chans), dim, projection_seed)
        return _head_init(FlatFeatures(features, dim, num_classes), num_classes, seed)

    card = {
        "architecture": f"random ReLU projection of the pixels to {dim} features",
        "trivial_baseline": True,
        "weights_source": f"random, seed {projection_seed} (never trained)",
        "num_features": dim,
        "total_params": 0,
        "backbone_params": 0,
        "projection_seed": projection_seed,
        "data_config": {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()},
    }
    return SourceModel(
        name="random-features",
        arch="random-features",
        weights="random",
        fingerprint=f"random-features:v1:{config['input_size'][1]}:{dim}:seed{projection_seed}",
        data_config=config,
        build=build,
        card=card,
    )
