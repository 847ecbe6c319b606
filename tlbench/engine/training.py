"""Supervised training shared by every fine-tuning strategy: sweep on val, refit on trainval,
evaluate on test once.

A strategy declares a ``Recipe`` (which parameters train, an optional model set-up, whether a
frozen prefix may be cached); ``finetune`` does the rest: seeding, optimiser and schedule from
timm, bf16 autocast, early stopping, divergence detection, out-of-memory retry, cost accounting.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tlbench.components import CellContext, StrategyResult
from tlbench.engine.depthwise import accelerate_depthwise
from tlbench.engine.features import (
    MAX_PREFIX_CACHE_BYTES,
    PrefixSplit,
    prefix_activations,
    prefix_bytes,
    split_frozen_prefix,
)
from tlbench.engine.runtime import (
    CostMeter,
    autocast,
    count_params,
    memory_format,
    resolve_device,
    resolve_precision,
    seed_everything,
    with_oom_retry,
)
from tlbench.errors import Diverged, UserError

# Swept by default when a strategy declares them as lists; see docs/strategies.md.
SWEEPABLE = ("lr", "weight_decay")
_BN_TYPES = (nn.modules.batchnorm._BatchNorm,)
# Below this batch size BatchNorm batch statistics are too noisy to train with; use running ones.
SMALL_BATCH = 16


@dataclass(frozen=True)
class TrainConfig:
    """One training configuration (one point of a sweep)."""

    epochs: int = 3
    lr: float = 1e-3
    weight_decay: float = 0.05
    optimizer: str = "adamw"
    warmup_epochs: float = 0.5
    layer_decay: float | None = None
    batch_size: int = 64
    patience: int = 2
    precision: str = "auto"
    augment: bool = False
    label_smoothing: float = 0.0
    refit: bool = True
    bn: str = "frozen"  # "frozen" | "train": see freeze_bn_stats

    @classmethod
    def sweep(cls, options: Mapping[str, Any]) -> list[TrainConfig]:
        """Every combination of the list-valued options (the sweep), other options fixed."""
        known = {f.name for f in fields(cls)}
        fixed = {
            k: v
            for k, v in options.items()
            if k in known and not isinstance(v, list) and v is not None
        }
        axes = {k: v for k, v in options.items() if k in known and isinstance(v, list)}
        return [
            cls(**fixed, **dict(zip(axes, combo, strict=True)))
            for combo in itertools.product(*axes.values())
        ]


@dataclass(frozen=True)
class Recipe:
    """What a strategy declares; the engine does the rest.

    ``trainable(model)`` returns the names of the parameters to train (all others are frozen).
    ``setup(model, ctx, phase)`` may replace or modify the freshly built model before training
    (``phase`` is ``"search"`` or ``"refit"``); it runs before ``trainable``.
    ``cache_prefix`` allows caching the frozen prefix's activations when nothing augments them.
    ``penalty(model)``, when given, returns a scalar tensor added to every training step's loss
    (L2-SP pulls the weights towards the source's instead of decaying them towards zero).
    """

    trainable: Callable[[nn.Module], Iterable[str]]
    setup: Callable[[nn.Module, CellContext, str], nn.Module] | None = None
    cache_prefix: bool = False
    penalty: Callable[[nn.Module], torch.Tensor] | None = None


@dataclass
class TrainOutcome:
    model: nn.Module
    best_epoch: int
    best_val: float | None
    history: list[float] = field(default_factory=list)
    best_state: dict | None = None
    prefix_cache: bool = False
    feeder: Any = None


def cell_label(ctx: CellContext) -> str:
    """``ctx.cell.label``: kept so strategies can name their cell from the context alone."""
    return ctx.cell.label


# ------------------------------------------------------------------------------ feeding batches


class _ImageFeeder:
    """Whole model on images from ``PreparedData``."""

    prefix_cache = False

    def __init__(self, model: nn.Module, data, device: torch.device, augment: bool):
        self.model, self.data, self.device, self.augment = model, data, device, augment

    def batches(
        self, split: str, batch_size: int, *, shuffle: bool, seed: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y in self.data.batches(
            split,
            batch_size,
            augment=self.augment and shuffle,
            shuffle=shuffle,
            seed=seed,
            device=self.device,
        ):
            yield (
                x.to(self.device, non_blocking=True).contiguous(
                    memory_format=memory_format(self.device)
                ),
                y.to(self.device),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class _CachedFeeder:
    """Only the trainable suffix, on cached activations of the frozen prefix."""

    prefix_cache = True

    def __init__(
        self,
        cut: PrefixSplit,
        tensors: dict[str, tuple[torch.Tensor, torch.Tensor]],
        device: torch.device,
    ):
        self.cut, self.tensors, self.device = cut, tensors, device

    def batches(
        self, split: str, batch_size: int, *, shuffle: bool, seed: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        acts, labels = self.tensors[split]
        order = (
            torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
            if shuffle
            else torch.arange(len(labels))
        )
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            yield acts[idx].to(self.device, non_blocking=True), labels[idx].to(self.device)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.cut.forward_suffix(h)


def _feeder(
    model: nn.Module,
    ctx: CellContext,
    recipe: Recipe,
    cfg: TrainConfig,
    splits: tuple[str, ...],
    precision: str,
    meter: CostMeter,
):
    device = resolve_device(ctx.device)
    if not recipe.cache_prefix or cfg.augment:
        meter.extra.setdefault("prefix_cache", False)
        return _ImageFeeder(model, ctx.data, device, cfg.augment)
    sample = torch.randn(2, *ctx.data.input_size, device=device)
    cut = split_frozen_prefix(model, sample)
    total = sum(ctx.data.size(s) for s in ("train", "val", "test"))
    if cut is None or prefix_bytes(cut, sample, total) > MAX_PREFIX_CACHE_BYTES:
        meter.extra["prefix_cache"] = False
        return _ImageFeeder(model, ctx.data, device, cfg.augment)
    meter.extra.update(prefix_cache=True, prefix_boundary=cut.boundary)
    tensors = {}
    with meter.phase("features_s"):
        for split in ("train", "val", "test"):
            tensors[split] = prefix_activations(
                cut, ctx, split, precision=precision, batch_size=max(cfg.batch_size, 256)
            )
    tensors["trainval"] = tuple(
        torch.cat([a, b]) for a, b in zip(tensors["train"], tensors["val"], strict=True)
    )
    return _CachedFeeder(cut, tensors, device)


# ------------------------------------------------------------------------------ the loop


def freeze_bn_stats(cfg: TrainConfig) -> bool:
    """Whether BatchNorm layers use their running statistics while training (affine parameters
    still train). ``frozen`` (the default) keeps the function being fine-tuned the same one the
    linear probe and evaluation see: with batch statistics, a few dozen steps leave running
    statistics that wreck eval-mode accuracy, and LP-FT's probed head meets features it was not
    fit on. Measured on the quickstart's from-scratch lite0: full-finetune 72 -> 98% (digits),
    LP-FT 16 -> 94%. ``train`` uses batch statistics (re-estimated after every epoch, see
    ``recalibrate_bn``), except below ``SMALL_BATCH`` images per batch."""
    return cfg.bn == "frozen" or cfg.batch_size < SMALL_BATCH


def set_train_mode(model: nn.Module, frozen_bn: bool) -> None:
    """Train mode, except modules whose parameters are all frozen (their BatchNorm statistics and
    dropout stay fixed, which also keeps cached prefix activations valid) and, with
    ``frozen_bn``, every BatchNorm."""
    model.train()
    for module in model.modules():
        params = list(module.parameters(recurse=True))
        if params and not any(p.requires_grad for p in params):
            module.eval()
        elif frozen_bn and isinstance(module, _BN_TYPES):
            module.eval()


@torch.no_grad()
def recalibrate_bn(
    model: nn.Module, feeder, split: str, batch_size: int, seed: int, device, precision: str
) -> None:
    """Precise BatchNorm (Wu & Johnson 2021): re-estimate running statistics as the plain average
    of batch statistics over the training split, with the weights as they are now.

    Why: models trained with batch statistics are evaluated with running ones, and after a few
    hundred steps the exponential average has not caught up (timm's tf_* models use momentum
    0.01), so a from-scratch model can train well and evaluate near chance."""
    layers = [
        m
        for m in model.modules()
        if isinstance(m, _BN_TYPES) and m.training and m.track_running_stats
    ]
    if not layers:
        return
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    with torch.no_grad():
        for x, _ in feeder.batches(split, batch_size, shuffle=True, seed=seed):
            with autocast(device, precision):
                feeder.forward(x)
    for m, momentum in zip(layers, momenta, strict=True):
        m.momentum = momentum


@torch.no_grad()
def predict(
    feeder, split: str, batch_size: int, device: torch.device, precision: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, labels) of ``split`` in eval mode, on the CPU, in the split's order."""
    feeder_model = feeder.model if hasattr(feeder, "model") else feeder.cut.model
    feeder_model.eval()
    logits, labels = [], []
    for x, y in feeder.batches(split, batch_size, shuffle=False, seed=0):
        with autocast(device, precision):
            logits.append(feeder.forward(x).float().cpu())
        labels.append(y.cpu())
    return torch.cat(logits), torch.cat(labels)


def evaluate(feeder, split: str, batch_size: int, device: torch.device, precision: str) -> float:
    """Top-1 accuracy in percent."""
    logits, labels = predict(feeder, split, batch_size, device, precision)
    return top1_of(logits, labels)


def top1_of(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return 100.0 * (logits.argmax(1) == labels).sum().item() / max(len(labels), 1)


def cell_predictions(ctx: CellContext, logits: torch.Tensor, labels: torch.Tensor):
    """The cell's per-example test predictions, keyed by the test split's hash."""
    from tlbench.predictions import Predictions

    split_hash = ctx.data.split_record.get("hashes", {}).get("test", "")
    return Predictions.from_logits(logits, labels, ctx.data.indices("test"), split_hash)


def _optimizer(model: nn.Module, cfg: TrainConfig):
    from timm.optim import create_optimizer_v2

    kwargs = {"momentum": 0.9} if cfg.optimizer == "sgd" else {}
    return create_optimizer_v2(
        model,
        opt=cfg.optimizer,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        layer_decay=cfg.layer_decay,
        **kwargs,
    )


def _scheduler(optimizer, cfg: TrainConfig, epochs: int, steps_per_epoch: int):
    from timm.scheduler import CosineLRScheduler

    total = max(epochs * steps_per_epoch, 1)
    warmup = min(int(cfg.warmup_epochs * steps_per_epoch), total - 1)
    return CosineLRScheduler(
        optimizer,
        t_initial=total,
        lr_min=cfg.lr * 1e-2,
        warmup_t=warmup,
        warmup_lr_init=cfg.lr * 1e-2,
        t_in_epochs=False,
    )


def train_loop(
    model: nn.Module,
    feeder,
    cfg: TrainConfig,
    *,
    split: str,
    epochs: int,
    steps_per_epoch: int,
    seed: int,
    device: torch.device,
    precision: str,
    meter: CostMeter | None = None,
    val_split: str | None = None,
    penalty: Callable[[nn.Module], torch.Tensor] | None = None,
) -> TrainOutcome:
    """Train ``epochs`` epochs on ``split``; with ``val_split``, evaluate after every epoch and stop
    after ``cfg.patience`` epochs without improvement. ``penalty(model)`` is added to the loss
    (outside autocast, in float32). Raises ``Diverged`` on a non-finite loss."""
    optimizer = _optimizer(model, cfg)
    scheduler = _scheduler(optimizer, cfg, epochs, steps_per_epoch)
    outcome = TrainOutcome(
        model, best_epoch=epochs, best_val=None, prefix_cache=feeder.prefix_cache
    )
    step = 0
    frozen_bn = freeze_bn_stats(cfg)
    for epoch in range(epochs):
        set_train_mode(model, frozen_bn)
        with meter.phase("train_s") if meter else contextlib.nullcontext():
            for x, y in feeder.batches(
                split, cfg.batch_size, shuffle=True, seed=seed * 1000 + epoch
            ):
                with autocast(device, precision):
                    loss = F.cross_entropy(
                        feeder.forward(x).float(), y, label_smoothing=cfg.label_smoothing
                    )
                if penalty is not None:
                    loss = loss + penalty(model)
                if not torch.isfinite(loss):
                    raise Diverged(
                        f"loss became {loss.item()} at step {step} (lr={cfg.lr})", step=step
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                scheduler.step_update(num_updates=step)
                if meter:
                    meter.train_images += len(y)
            if not frozen_bn:
                recalibrate_bn(model, feeder, split, cfg.batch_size, seed, device, precision)
        if val_split is None:
            continue
        with meter.phase("eval_s") if meter else contextlib.nullcontext():
            top1 = evaluate(feeder, val_split, cfg.batch_size * 2, device, precision)
        outcome.history.append(round(top1, 3))
        if outcome.best_val is None or top1 > outcome.best_val:
            outcome.best_val, outcome.best_epoch = top1, epoch + 1
            if not cfg.refit:
                outcome.best_state = copy.deepcopy(model.state_dict())
        elif epoch + 1 - outcome.best_epoch >= cfg.patience:
            break
    return outcome


# ------------------------------------------------------------------------------ cells


def _build(ctx: CellContext, recipe: Recipe, phase: str, device: torch.device) -> nn.Module:
    seed_everything(ctx.seed)
    model = ctx.source.build(
        num_classes=ctx.data.num_classes, in_chans=ctx.data.in_chans, seed=ctx.seed
    )
    if recipe.setup is not None:
        model = recipe.setup(model, ctx, phase)
    names = set(recipe.trainable(model))
    if not names:
        raise UserError(
            f"{cell_label(ctx)}: strategy {ctx.cell.strategy!r} leaves no trainable parameter in {ctx.source.arch}"
        )
    for name, param in model.named_parameters():
        param.requires_grad_(name in names)
    model = model.to(device, memory_format=memory_format(device))
    if device.type == "cpu":
        accelerate_depthwise(model)
    return model


def _steps(ctx: CellContext, split: str, batch_size: int) -> int:
    n = (
        ctx.data.size("train") + ctx.data.size("val")
        if split == "trainval"
        else ctx.data.size(split)
    )
    return -(-n // batch_size)


def _train_candidate(
    ctx, recipe, cfg, phase, split, epochs, val_split, precision, meter
) -> TrainOutcome:
    device = resolve_device(ctx.device)

    def attempt(batch_size: int) -> TrainOutcome:
        run_cfg = replace(cfg, batch_size=batch_size)
        model = _build(ctx, recipe, phase, device)
        feeder = _feeder(model, ctx, recipe, run_cfg, (split,), precision, meter)
        seed_everything(ctx.seed)
        return train_loop(
            model,
            feeder,
            run_cfg,
            split=split,
            epochs=epochs,
            steps_per_epoch=_steps(ctx, split, batch_size),
            seed=ctx.seed,
            device=device,
            precision=precision,
            meter=meter,
            val_split=val_split,
            penalty=recipe.penalty,
        ), feeder

    (outcome, feeder), meter.batch_size = with_oom_retry(
        attempt, meter.batch_size or cfg.batch_size
    )
    outcome.feeder = feeder
    return outcome


def _candidate_record(
    cfg: TrainConfig, swept: Iterable[str], outcome: TrainOutcome | None, diverged: Diverged | None
) -> dict:
    record = {k: getattr(cfg, k) for k in swept}
    if diverged is not None:
        record.update(val_top1=None, diverged_at_step=diverged.step)
    else:
        record.update(
            val_top1=round(outcome.best_val, 3),
            best_epoch=outcome.best_epoch,
            val_curve=outcome.history,
        )
    return record


def finetune(ctx: CellContext, recipe: Recipe, options: Mapping[str, Any]) -> StrategyResult:
    """Sweep the list-valued options on val (early stopping per candidate), refit the best on
    trainval for its best epoch count (``refit=True``, the VTAB protocol) or keep its best-epoch
    weights, and evaluate on test once."""
    device = resolve_device(ctx.device)
    configs = TrainConfig.sweep(options)
    swept = [k for k, v in options.items() if isinstance(v, list) and k in SWEEPABLE]
    precision = resolve_precision(configs[0].precision, device)
    meter = CostMeter(device, precision)
    candidates = []
    first_divergence: Diverged | None = None
    for cfg in configs:
        try:
            outcome = _train_candidate(
                ctx, recipe, cfg, "search", "train", cfg.epochs, "val", precision, meter
            )
            candidates.append((cfg, outcome, _candidate_record(cfg, swept, outcome, None)))
        except Diverged as exc:
            ctx.log(
                f"{cell_label(ctx)}: candidate {[getattr(cfg, k) for k in swept]} diverged at step {exc.step}"
            )
            candidates.append((cfg, None, _candidate_record(cfg, swept, None, exc)))
            first_divergence = first_divergence or exc
    finished = [c for c in candidates if c[1] is not None]
    if not finished:
        raise Diverged(
            f"{cell_label(ctx)}: every candidate diverged ({first_divergence})",
            step=first_divergence.step,
        )
    best_cfg, best, _ = max(finished, key=lambda c: c[1].best_val)  # first wins ties: max is stable
    if best_cfg.refit:
        final = _train_candidate(
            ctx, recipe, best_cfg, "refit", "trainval", best.best_epoch, None, precision, meter
        )
    else:
        final = best
        final.model.load_state_dict(best.best_state)
    with meter.phase("eval_s"):
        logits, labels = predict(
            final.feeder, "test", (meter.batch_size or best_cfg.batch_size) * 2, device, precision
        )
    top1 = top1_of(logits, labels)
    chosen = asdict(best_cfg) | {
        "epochs": best.best_epoch,
        "epochs_max": best_cfg.epochs,
        "precision": precision,
    }
    hparams = chosen | {"sweep": [c[2] for c in candidates]}
    trainable, total = count_params(final.model)
    return StrategyResult(
        metrics={"top1": round(top1, 3), "val_top1": round(best.best_val, 3)},
        hparams=hparams,
        cost=meter.as_dict(trainable=trainable, total=total),
        predictions=cell_predictions(ctx, logits, labels),
    )


def fit_model(
    model: nn.Module,
    data,
    *,
    split: str = "train",
    epochs: int,
    lr: float,
    device: str | torch.device | None = None,
    seed: int = 0,
    batch_size: int = 64,
    precision: str = "auto",
    augment: bool = False,
    weight_decay: float = 0.05,
) -> None:
    """Plain supervised training of all parameters of ``model`` on ``split`` (in place).

    Used to pretrain self-made source models; raises ``Diverged`` on a non-finite loss."""
    device = resolve_device(device)
    precision = resolve_precision(precision, device)
    cfg = TrainConfig(
        bn="train",
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        precision=precision,
        augment=augment,
        weight_decay=weight_decay,
    )
    for param in model.parameters():
        param.requires_grad_(True)
    model.to(device, memory_format=memory_format(device))
    seed_everything(seed)
    feeder = _ImageFeeder(model, data, device, augment)
    steps = -(-data.size(split) // batch_size)
    train_loop(
        model,
        feeder,
        cfg,
        split=split,
        epochs=epochs,
        steps_per_epoch=steps,
        seed=seed,
        device=device,
        precision=precision,
    )
    model.eval()
