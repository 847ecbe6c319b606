"""The authoring kit for fine-tuning strategies: what the built-in strategies and third-party
ones build on (``tlbench.api`` re-exports it; docs/plugins/api.md documents it).

``FineTuneStrategy`` is a gradient-trained strategy: subclass it, say which parameters train
(``trainable``) and optionally how the model is set up (``setup``); the engine does the rest
(sweep on val, refit on train+val, test once). ``training_options`` are the options every such
strategy accepts. Nothing here imports torch until a cell runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from tlbench.errors import UserError
from tlbench.specs import PRECISIONS, Option

__all__ = [
    "FineTuneStrategy",
    "backbone_groups",
    "check_training_options",
    "head_names",
    "probe_model",
    "training_options",
]


def training_options(
    *,
    lr: list[float],
    epochs: int,
    weight_decay: float = 0.05,
    batch_size: int = 64,
    only: Iterable[str] | None = None,
    rename: Mapping[str, str] | None = None,
) -> tuple[Option, ...]:
    """The options every gradient-trained strategy accepts (a plugin may reuse them).

    ``lr`` and ``epochs`` are the strategy's fine-tuning recipe (a learning-rate grid of at least
    three values, option ``finetune_lr``, and an epoch budget that early stopping cuts short); a
    randomly initialised model trains under the from-scratch recipe instead (``scratch_lr``,
    ``scratch_epochs``, BatchNorm on batch statistics, augmentation), see docs/strategies.md.

    ``only`` narrows them to the named options (the engine's defaults hold for the others);
    ``rename`` exposes engine options under names of the strategy's own (``{"layer_decay":
    "decay"}``). Set the same mapping as the strategy's ``FineTuneStrategy.rename`` so the
    engine gets its names back and messages and records use the strategy's."""
    options = _training_options(lr, epochs, weight_decay, batch_size)
    known = [o.name for o in options]
    for what, names in (("only", only or ()), ("rename", rename or {})):
        unknown = sorted(set(names) - set(known))
        if unknown:
            raise ValueError(
                f"training_options({what}=...): unknown option(s) {unknown}; known: {known}"
            )
    if only is not None:
        options = tuple(o for o in options if o.name in set(only))
    if rename:
        options = tuple(replace(o, name=rename.get(o.name, o.name)) for o in options)
    return options


def _training_options(lr, epochs, weight_decay, batch_size) -> tuple[Option, ...]:
    return (
        Option(
            "recipe",
            str,
            default="auto",
            help="Training recipe: auto = from-scratch for a randomly initialised model (weights 'random'), fine-tune otherwise.",
            choices=("auto", "fine-tune", "from-scratch"),
        ),
        Option(
            "lr",
            float,
            default=None,
            help="Peak learning rate, a list is swept on val; given, it applies under either recipe (default: the recipe's own grid, finetune_lr or scratch_lr).",
            exclusive_minimum=0.0,
            sweep=True,
        ),
        Option(
            "finetune_lr",
            float,
            default=lr,
            help="The fine-tune recipe's learning rates (swept on val) when 'lr' is not given.",
            exclusive_minimum=0.0,
            sweep=True,
        ),
        Option(
            "scratch_lr",
            float,
            default=[1e-3, 3e-3, 1e-2],
            help="The from-scratch recipe's learning rates (swept on val) when 'lr' is not given.",
            exclusive_minimum=0.0,
            sweep=True,
        ),
        Option(
            "weight_decay",
            float,
            default=[weight_decay],
            help="Decoupled weight decay (biases and norms excluded); a list is swept.",
            minimum=0.0,
            sweep=True,
        ),
        Option(
            "epochs",
            int,
            default=epochs,
            help="Budget: maximum epochs per candidate under the fine-tune recipe (early stopping on val usually ends sooner); the refit uses the best epoch found on val.",
            minimum=1,
        ),
        Option(
            "steps",
            int,
            default=None,
            help="Budget in optimizer steps instead of epochs (rounded up to whole epochs of the training split at the starting batch size); replaces 'epochs' when given.",
            minimum=1,
        ),
        Option(
            "scratch_epochs",
            int,
            default=None,
            help="Budget under the from-scratch recipe (default: 3 x epochs, He et al. 2019).",
            minimum=1,
        ),
        Option(
            "sweep",
            str,
            default="asha",
            help="How a sweep spends epochs: asha = successive halving (every candidate trains the grace period, the better half on val continues, and so on); grid = every candidate to its end.",
            choices=("asha", "grid"),
        ),
        Option(
            "grace_epochs",
            int,
            default=None,
            help="Successive halving's grace period: epochs every candidate trains before the first cut (default: max(3, a quarter of the budget)).",
            minimum=1,
        ),
        Option(
            "batch_size",
            int,
            default=batch_size,
            help="Starting batch size; halved automatically on out-of-memory.",
            minimum=1,
        ),
        Option(
            "optimizer",
            str,
            default="adamw",
            help="Optimiser (timm's factory).",
            choices=("adamw", "sgd"),
        ),
        Option(
            "warmup_epochs",
            float,
            default=0.5,
            help="Linear warmup before the cosine decay, in epochs.",
            minimum=0.0,
        ),
        Option(
            "layer_decay",
            float,
            default=None,
            help="Layer-wise lr decay (BEiT/MAE use ~0.75); default off.",
            minimum=0.0,
            maximum=1.0,
        ),
        Option(
            "patience",
            int,
            default=3,
            help="Early stopping: epochs without val improvement before a candidate stops.",
            minimum=1,
        ),
        Option(
            "precision",
            str,
            default="auto",
            help="auto = bf16 autocast on GPUs with native bf16 (compute capability >= 8.0), fp16 with loss scaling on older GPUs, fp32 on CPU.",
            choices=PRECISIONS,
        ),
        Option(
            "augment",
            bool,
            default=None,
            help="Train-time augmentation (disables prefix caching); default: off under fine-tune, on under from-scratch.",
        ),
        Option(
            "label_smoothing",
            float,
            default=0.0,
            help="Cross-entropy label smoothing.",
            minimum=0.0,
            maximum=1.0,
        ),
        Option(
            "refit",
            bool,
            default=True,
            help="Refit the selected configuration on train+val before testing (VTAB protocol).",
        ),
        Option(
            "bn",
            str,
            default=None,
            help="BatchNorm statistics while training: frozen running statistics, or batch statistics (train; re-estimated after each epoch); default: frozen under fine-tune, train under from-scratch (which refuses frozen).",
            choices=("frozen", "train"),
        ),
    )


def check_training_options(
    ctx, options: Mapping[str, Any], names: Mapping[str, str] | None = None
) -> None:
    """Raise ``UserError`` naming the cell when a training option is out of its range.
    ``options`` use the engine's names; ``names`` maps them to those the user wrote (a
    strategy's ``rename``), for the message."""
    said = dict(names or {})
    for name in ("lr", "finetune_lr", "scratch_lr", "weight_decay"):
        for value in options.get(name) or ():
            if not value >= 0 or (name != "weight_decay" and value == 0):
                raise UserError(
                    f"{ctx.cell.label}: strategy option {said.get(name, name)!r} must be {'>= 0' if name == 'weight_decay' else '> 0'}, got {value!r}"
                )
    if options.get("bn") == "frozen":
        from tlbench.engine.training import training_recipe

        if training_recipe(ctx, options) == "from-scratch":
            raise UserError(
                f"{ctx.cell.label}: strategy option 'bn' = 'frozen' under the from-scratch recipe would train {ctx.source.name} with BatchNorm frozen at its initial statistics; drop 'bn' (from-scratch uses 'train') or set recipe = 'fine-tune'"
            )
    for name in ("epochs", "steps", "scratch_epochs", "grace_epochs", "batch_size", "patience"):
        if name in options and options[name] is not None and options[name] < 1:
            raise UserError(
                f"{ctx.cell.label}: strategy option {said.get(name, name)!r} must be >= 1, got {options[name]!r}"
            )


# ------------------------------------------------------------------------------ what trains


def head_names(model) -> list[str]:
    """Parameter names of the classifier timm's ``get_classifier()`` returns."""
    classifier = model.get_classifier()
    ids = {id(p) for p in classifier.parameters()}
    return [n for n, p in model.named_parameters() if id(p) in ids]


def backbone_groups(model) -> list[list[str]]:
    """Ordered layer groups (timm ``group_matcher``, input side first), classifier excluded."""
    from tlbench.weights import layer_groups

    head = set(head_names(model))
    groups = [[n for n in group if n not in head] for group in layer_groups(model)]
    return [g for g in groups if g]


@dataclass
class FineTuneStrategy:
    """A gradient-trained strategy: its resolved ``options`` (from ``training_options`` plus its
    own), which parameters train (``trainable``), an optional model set-up (``setup``, called
    with ``phase`` "search" or "refit"), and whether the frozen prefix's activations may be cached
    (``cache_prefix``: only when nothing before the first trainable layer changes).

    ``options`` is the dict of resolved suite options the strategy factory receives (the
    factory can be the class itself: ``factory=MyStrategy``). ``rename`` maps engine option
    names to the names the strategy exposes (give ``training_options`` the same mapping);
    ``run`` hands the engine its own names and records the hyperparameters under the
    strategy's."""

    options: dict
    cache_prefix: bool = False
    rename: ClassVar[Mapping[str, str]] = {}

    def engine_options(self) -> dict:
        """``options`` under the engine's names (undoing ``rename``)."""
        engine_name = {exposed: name for name, exposed in self.rename.items()}
        return {engine_name.get(k, k): v for k, v in dict(self.options).items()}

    def trainable(self, model) -> Iterable[str]:
        return [n for n, _ in model.named_parameters()]

    def setup(self, model, ctx, phase: str):
        return model

    def check(self, ctx) -> None:
        """Raise ``UserError`` naming the cell if the options cannot work for this cell's model.
        Cheap; the runner may call it before any work, and ``run`` calls it first."""
        options = self.engine_options()
        check_training_options(ctx, options, self.rename)
        if options.get("layer_decay") is not None and not hasattr(
            probe_model(ctx), "group_matcher"
        ):
            name = self.rename.get("layer_decay", "layer_decay")
            raise UserError(
                f"{ctx.cell.label}: strategy option {name!r} needs a timm model with group_matcher; {ctx.source.arch} has none"
            )

    def run(self, ctx):
        from tlbench.engine import Recipe, finetune

        self.check(ctx)
        recipe = Recipe(trainable=self.trainable, setup=self.setup, cache_prefix=self.cache_prefix)
        result = finetune(ctx, recipe, self.engine_options())
        if self.rename:  # records name what the user set
            result.hparams = {self.rename.get(k, k): v for k, v in result.hparams.items()}
        return result


def probe_model(ctx):
    """A model to inspect (groups, module names) without training it."""
    return ctx.source.build(
        num_classes=ctx.data.num_classes, in_chans=ctx.data.in_chans, seed=ctx.seed
    )
