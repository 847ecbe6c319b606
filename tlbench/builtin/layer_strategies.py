"""Which layers to share and which to fine-tune: the layer-transfer study (Yosinski et al. 2014),
surgical fine-tuning (Lee et al. 2023), L2-SP (Li et al. 2018), and ``reinit-top:``, a source
model with its top layer groups re-initialised (a graded family for ranking studies).

Registered through the public hooks; layer groups, selections and re-initialisation come from
``tlbench.builtin.layer_choice``; protocols and defaults are in docs/strategies.md.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tlbench.api import (
    FineTuneStrategy,
    ModelSpec,
    Option,
    SourceModel,
    StrategySpec,
    UserError,
    head_names,
    hookimpl,
    training_options,
)
from tlbench.builtin.layer_choice import (
    GroupStrategy,
    LayerGroup,
    model_groups,
    reinitialise,
    select,
    unit_option,
)

_FACTORY = "tlbench.builtin.layer_strategies:"


# ------------------------------------------------------------------------------ layer transfer


@dataclass
class LayerTransfer(GroupStrategy):
    """Keep the source's first ``keep`` layer groups, re-initialise the rest with timm's init
    from the cell's seed, then train the re-initialised groups and the head (``frozen``: AnB in
    Yosinski et al. 2014) or everything (``finetune``: AnB+)."""

    def __post_init__(self):
        # The frozen prefix is exactly the source's first groups, so its cached activations
        # (keyed by the source's fingerprint and the cut) stay valid.
        self.cache_prefix = self.options["mode"] == "frozen"

    def choose(self, ctx, model, groups):
        keep, unit = self.options["keep"], self.options["unit"]
        if keep > len(groups):
            raise UserError(
                f"{ctx.cell.label}: strategy option 'keep' = {keep} but {ctx.source.arch} has only {len(groups)} layer groups with unit = {unit!r} (keep 0..{len(groups)})"
            )
        return groups if self.options["mode"] == "finetune" else groups[keep:]

    def setup(self, model, ctx, phase: str):
        reset = self.groups(model)[self.options["keep"] :]
        reinitialise(model, reset, arch=ctx.source.arch, in_chans=ctx.data.in_chans, seed=ctx.seed)
        return model

    def check(self, ctx) -> None:
        super().check(ctx)
        # Re-initialised groups carry BatchNorm at its initial statistics (mean 0, variance 1):
        # frozen, they would not normalise at all, so they train on batch statistics unless the
        # suite says otherwise (kept groups frozen in AnB mode stay in eval mode regardless).
        if self.options.get("bn") is None and self.options["keep"] < len(self.layout):
            self.options["bn"] = "train"

    def run(self, ctx):
        result = super().run(ctx)
        keep = self.options["keep"]
        result.hparams.update(
            keep=keep,
            mode=self.options["mode"],
            kept_groups=[g.name for g in self.layout[:keep]],
            reinitialised_groups=[g.name for g in self.layout[keep:]],
        )
        return result


# ------------------------------------------------------------------------------ surgical


@dataclass
class Surgical(GroupStrategy):
    """Lee et al. 2023: tune one block (the first, a middle or the last, or any selection) and
    the head; everything else stays the source's, frozen."""

    cache_prefix: bool = True

    def choose(self, ctx, model, groups):
        return select(groups, self.options["block"], f"{ctx.cell.label}: strategy option 'block'")


# ------------------------------------------------------------------------------ L2-SP


@dataclass
class L2SP(FineTuneStrategy):
    """Li, Grandvalet, Davoine 2018: fine-tune everything with alpha/2 ||w - w_source||^2 on
    the shared weights and beta/2 ||w_head||^2 on the new head added to the loss, in place of
    weight decay towards zero."""

    anchors: list = field(default_factory=list)  # [parameter, its source value]
    head: list = field(default_factory=list)

    def setup(self, model, ctx, phase: str):
        new = set(head_names(model))
        params = list(model.named_parameters())
        self.anchors = [[p, p.detach().clone()] for n, p in params if n not in new]
        self.head = [p for n, p in params if n in new]
        return model

    def penalty(self, model):
        shared = 0.0
        for pair in self.anchors:
            param, anchor = pair
            if anchor.device != param.device:  # the engine moves the model after setup
                pair[1] = anchor = anchor.to(param.device)
            shared = shared + ((param - anchor) ** 2).sum()
        new = sum((p**2).sum() for p in self.head)
        return self.options["alpha"] / 2 * shared + self.options["beta"] / 2 * new

    def run(self, ctx):
        from tlbench.engine import Recipe, finetune

        self.check(ctx)
        recipe = Recipe(trainable=self.trainable, setup=self.setup, penalty=self.penalty)
        result = finetune(ctx, recipe, self.options)
        result.hparams.update(alpha=self.options["alpha"], beta=self.options["beta"])
        return result


# ------------------------------------------------------------------------------ reinit-top models


def reinit_top_model(argument: str, options: Mapping[str, Any], context) -> SourceModel:
    """``argument`` (any registered model without required options) with its top ``k`` layer
    groups re-initialised by timm's own init from the run seed; its source head is kept."""
    base = _base_model(argument, options, context)
    k, unit = options["k"], options["unit"]
    groups = model_groups(base.build(0, in_chans=3), unit)
    if k > len(groups):
        raise UserError(
            f"model 'reinit-top:{argument}': option 'k' = {k} but {base.arch} has only {len(groups)} layer groups with unit = {unit!r}"
        )
    reset = groups[len(groups) - k :] if k else []
    seed = context.seed

    def reset_top(model, in_chans: int):
        reinitialise(
            model,
            _same(model_groups(model, unit), reset),
            arch=base.arch,
            in_chans=in_chans,
            seed=seed,
        )
        return model.eval()

    def build(num_classes: int, in_chans: int = 3, seed: int = 0):
        return reset_top(base.build(num_classes, in_chans=in_chans, seed=seed), in_chans)

    def build_with_source_head(in_chans: int = 3):
        return reset_top(base.build_with_source_head(in_chans=in_chans), in_chans)

    what = f"top {k} {unit} groups re-initialised (seed {seed})"
    card = {
        **base.card,
        "weights_source": f"{base.card.get('weights_source', base.weights)}, {what}",
        "reinit_top": {"base": argument, "k": k, "unit": unit, "seed": seed},
        "reinitialised_groups": [g.name for g in reset],
    }
    return SourceModel(
        name=f"reinit-top:{argument}",
        arch=base.arch,
        weights=f"{base.weights}, {what}",
        fingerprint=f"{base.fingerprint}|reinit-top:{unit}:{k}:seed{seed}",
        data_config=base.data_config,
        build=build,
        card=card,
        source_classes=base.source_classes,
        build_with_source_head=build_with_source_head if base.build_with_source_head else None,
    )


def _same(groups: list[LayerGroup], wanted: list[LayerGroup]) -> list[LayerGroup]:
    names = {g.name for g in wanted}
    return [g for g in groups if g.name in names]


def _base_model(argument: str, options: Mapping[str, Any], context) -> SourceModel:
    if not argument:
        raise UserError("model 'reinit-top' needs a base model: reinit-top:<model>")
    if context.registry is None:
        raise UserError(
            f"model 'reinit-top:{argument}' needs the registry (BuildContext.registry) to build its base model"
        )
    registered, base_argument = context.registry.lookup("model", argument)
    required = [o.name for o in registered.spec.options if o.required]
    if required:
        raise UserError(
            f"model 'reinit-top:{argument}': the base model needs option {required[0]!r}, which reinit-top cannot pass on; use a model without required options"
        )
    # The base gets its own defaults, and the resolution and channel handling of this entry.
    base_options = {o.name: o.default for o in registered.options}
    base_options.update({k: options[k] for k in ("input_size", "input_adaptation") if k in options})
    return registered.spec.load_factory()(base_argument, base_options, context)


# ------------------------------------------------------------------------------ registration


def make_layer_transfer(options: Mapping[str, Any]) -> LayerTransfer:
    return LayerTransfer(dict(options))


def make_surgical(options: Mapping[str, Any]) -> Surgical:
    return Surgical(dict(options))


def make_l2sp(options: Mapping[str, Any]) -> L2SP:
    return L2SP(dict(options))


def _sgd(options: tuple[Option, ...]) -> tuple[Option, ...]:
    """Li et al. train with SGD and momentum 0.9; the option keeps its choices."""
    return tuple(
        dataclasses.replace(o, default="sgd") if o.name == "optimizer" else o for o in options
    )


STRATEGIES = (
    StrategySpec(
        "layer-transfer",
        factory=_FACTORY + "make_layer_transfer",
        description="Yosinski et al. 2014: keep the source's first `keep` layer groups, re-initialise the rest; train them (frozen) or everything (finetune).",
        options=(
            Option(
                "keep",
                int,
                default=None,
                help="Layer groups kept from the source, input side first (0: train from scratch); a list gives one cell per value.",
                minimum=0,
                required=True,
                axis=True,
            ),
            Option(
                "mode",
                str,
                default="finetune",
                help="frozen: kept groups stay fixed (AnB); finetune: everything trains (AnB+); a list gives one cell per value.",
                choices=("frozen", "finetune"),
                axis=True,
            ),
            unit_option("stage"),
        )
        + training_options(lr=[3e-4, 1e-3, 3e-3], epochs=15),
        tags=("layers", "study"),
        # 2: converging recipe (15-epoch budget, patience 3, asha grace period), BatchNorm on
        # batch statistics (re-initialised groups would otherwise keep their initial statistics)
        version="2",
    ),
    StrategySpec(
        "surgical",
        factory=_FACTORY + "make_surgical",
        description="Lee et al. 2023: only one layer group (first, middle, last, or a selection) and the head train.",
        options=(
            Option(
                "block",
                str,
                default="first",
                help="Which group trains: first, middle, last, a position (-1), a slice (2:4) or a module name (blocks.3); a list gives one cell per value.",
                axis=True,
            ),
            unit_option("stage"),
        )
        + training_options(lr=[3e-4, 1e-3, 3e-3], epochs=15),
        tags=("layers", "partial", "cached"),
        version="2",  # 2: converging recipe (3-lr grid, 15-epoch budget, patience 3, grace period)
    ),
    StrategySpec(
        "l2-sp",
        factory=_FACTORY + "make_l2sp",
        description="Li et al. 2018: full fine-tuning regularised towards the source weights (alpha) and the head towards zero (beta), no weight decay.",
        options=(
            Option(
                "alpha",
                float,
                default=0.01,
                help="Strength of alpha/2 ||w - w_source||^2 on the shared weights.",
                minimum=0.0,
            ),
            Option(
                "beta",
                float,
                default=0.01,
                help="Strength of beta/2 ||w_head||^2 on the new head.",
                minimum=0.0,
            ),
        )
        + _sgd(training_options(lr=[1e-3, 3e-3, 1e-2], epochs=15, weight_decay=0.0)),
        tags=("full", "regularised"),
        version="2",  # 2: converging recipe (3-lr grid, 15-epoch budget, patience 3, grace period)
    ),
)


@hookimpl
def register_strategies(register):
    for spec in STRATEGIES:
        register(spec)


@hookimpl
def register_models(register):
    register(
        ModelSpec(
            name="reinit-top",
            factory=_FACTORY + "reinit_top_model",
            description="A registered model with its top k layer groups re-initialised (timm init, run seed): a graded family of sources",
            options=(
                Option(
                    "k",
                    int,
                    default=0,
                    help="Layer groups re-initialised, counted from the output side (the head is kept).",
                    minimum=0,
                ),
                unit_option("stage"),
            ),
            takes_argument=True,
            argument_help="a registered model without required options, e.g. efficientnet_lite0.in1k",
            tags=("pretrained", "offline", "graded"),
        )
    )
