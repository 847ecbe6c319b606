"""tlbench plugin: the ``lora`` strategy, through Hugging Face peft on timm models.

Registered through the ``tlbench`` entry-point group; the core never imports it. peft and torch
are imported only when a cell runs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tlbench.api import (
    FineTuneStrategy,
    Option,
    StrategySpec,
    UserError,
    check_training_options,
    hookimpl,
    training_options,
)

__version__ = "0.1.0"


def _supported(module) -> bool:
    from torch import nn

    # Depthwise/grouped convolutions have too few weights per output for a low-rank update.
    return isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1)


def _classifier_name(model) -> str:
    classifier = model.get_classifier()
    return next(name for name, module in model.named_modules() if module is classifier)


def target_modules(model, pattern: str) -> list[str]:
    """Names of the modules LoRA adapts: ``auto`` = every linear layer and 1x1 convolution
    outside the classifier (attention and MLP projections in ViTs, pointwise convs in
    EfficientNets); otherwise modules whose full name matches the regular expression."""
    head = _classifier_name(model)
    names = []
    for name, module in model.named_modules():
        if not name or name == head or name.startswith(head + ".") or not _supported(module):
            continue
        if pattern == "auto":
            if not (hasattr(module, "kernel_size") and tuple(module.kernel_size) != (1, 1)):
                names.append(name)
        elif re.fullmatch(pattern, name):
            names.append(name)
    return names


@dataclass
class LoRA(FineTuneStrategy):
    def check(self, ctx) -> None:
        check_training_options(ctx, self.options)
        if self.options.get("layer_decay") is not None:
            raise UserError(f"{ctx.cell.label}: strategy 'lora' does not support 'layer_decay'")
        try:
            re.compile(self.options["target_modules"])
        except re.error as exc:
            raise UserError(
                f"{ctx.cell.label}: strategy option 'target_modules' is not a valid regular expression: {exc}"
            ) from None
        model = ctx.source.build(
            num_classes=ctx.data.num_classes, in_chans=ctx.data.in_chans, seed=ctx.seed
        )
        if not target_modules(model, self.options["target_modules"]):
            raise UserError(
                f"{ctx.cell.label}: strategy option 'target_modules' = {self.options['target_modules']!r} matches no linear or "
                f"non-grouped convolution module of {ctx.source.arch} (e.g. {', '.join(n for n, _ in list(model.named_modules())[1:4])})"
            )

    def setup(self, model, ctx, phase: str):
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(
            r=self.options["r"],
            lora_alpha=self.options["alpha"],
            lora_dropout=self.options["dropout"],
            target_modules=target_modules(model, self.options["target_modules"]),
            modules_to_save=[_classifier_name(model)],
        )
        return get_peft_model(model, config)

    def trainable(self, model) -> list[str]:
        # peft has already frozen the base model and marked adapters and the head trainable.
        return [n for n, p in model.named_parameters() if p.requires_grad]


def make_lora(options: Mapping[str, Any]) -> LoRA:
    return LoRA(dict(options))


LORA_OPTIONS = (
    Option("r", int, default=8, help="Rank of the low-rank update.", minimum=1),
    Option(
        "alpha",
        float,
        default=16.0,
        help="LoRA scaling numerator (update scaled by alpha / r).",
        minimum=0.0,
    ),
    Option(
        "dropout",
        float,
        default=0.0,
        help="Dropout on the LoRA branch input.",
        minimum=0.0,
        maximum=1.0,
    ),
    Option(
        "target_modules",
        str,
        default="auto",
        help="'auto' (linear layers and 1x1 convs) or a regex over full module names.",
    ),
) + training_options(lr=[3e-4, 1e-3, 3e-3], epochs=15, weight_decay=0.0)


@hookimpl
def register_strategies(register):
    register(
        StrategySpec(
            "lora",
            factory="tlbench_peft:make_lora",
            description="Low-rank adapters (peft) on linear layers and 1x1 convs; the new head trains fully.",
            options=LORA_OPTIONS,
            tags=("parameter-efficient",),
            version="2",  # 2: converging recipe (3-lr grid, 15-epoch budget, patience 3, grace period)
            card={"paper": "Hu et al. 2021, LoRA", "library": "peft"},
        )
    )
