"""Adapters that give a module which is not a timm model what the built-in strategies use.

The built-in strategies ask a model for what every timm model has (docs/plugins/reference.md,
"The model contract"): ``get_classifier()`` and ``reset_classifier(n)`` to find, fill and replace
the head, ``forward_features``/``forward_head`` to cache a frozen prefix, ``num_features``, and
``group_matcher`` for layer groups. ``FeatureModel`` wraps a plain ``torch.nn.Module`` that maps
images to feature vectors into such a model. Public through ``tlbench.api.FeatureModel``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from tlbench.contracts import ContractError
from tlbench.weights import seeded

__all__ = ["FeatureModel"]


class FeatureShapeError(ContractError, ValueError):
    """The wrapped module's output is not ``(N, num_features)``: the model's fault, whichever
    strategy ran it (a ``ValueError`` too, as it always was)."""


class FeatureModel(nn.Module):
    """``body`` (images ``(N, C, H, W)`` -> features ``(N, num_features)``) with a linear head
    for ``num_classes`` classes, shaped like a timm model.

    ``num_classes=0`` leaves no head: the model returns the features (what linear probing and
    the estimators extract). ``seed`` initialises the head under ``torch.manual_seed(seed)``
    without touching the caller's random state. Layer groups, input side first, are the body's
    top-level children that hold parameters, then the head: give an ``nn.Sequential`` of stages
    to let ``partial-unfreeze`` train the last ``k`` of them.
    """

    def __init__(
        self, body: nn.Module, num_features: int, num_classes: int = 0, *, seed: int | None = None
    ):
        super().__init__()
        if not isinstance(body, nn.Module):
            raise TypeError(f"FeatureModel wraps a torch.nn.Module, got {type(body).__name__}")
        if not isinstance(num_features, int) or num_features < 1:
            raise ValueError(f"num_features must be a positive integer, got {num_features!r}")
        self.body = body
        self.num_features = num_features
        self.reset_classifier(num_classes, seed=seed)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.num_features:
            raise FeatureShapeError(
                f"FeatureModel: the wrapped module returned shape {tuple(x.shape)}; expected "
                f"(N, {self.num_features}) (end it with pooling and flattening, or fix num_features)",
                kind="model",
                sep=": ",
            )
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, *, seed: int | None = None) -> None:
        """A fresh head for ``num_classes`` classes (an identity for 0)."""
        self.num_classes = num_classes
        if not num_classes:
            self.head = nn.Identity()
            return
        if seed is None:
            self.head = nn.Linear(self.num_features, num_classes)
            return
        with seeded(seed):
            self.head = nn.Linear(self.num_features, num_classes)

    def group_matcher(self, coarse: bool = False) -> Callable[[str], int]:
        """timm's layer-group protocol: parameter name -> group ordinal (the body's top-level
        children in order, then the head)."""
        children = [name for name, child in self.body.named_children()]
        order = {name: i for i, name in enumerate(children)}

        def ordinal(param_name: str) -> int:
            part, _, rest = param_name.partition(".")
            if part == "body":
                return order.get(rest.partition(".")[0], 0)
            return len(children)  # the head, last

        return ordinal
