"""Supervised training shared by every fine-tuning strategy: sweep on val, refit on trainval,
evaluate on test once.

A strategy declares a ``Recipe`` (which parameters train, an optional model set-up, whether a
frozen prefix may be cached); ``finetune`` does the rest: seeding, optimiser and schedule from
timm, bf16 autocast, early stopping, the sweep schedule (successive halving with a grace period
by default, ``tlbench.engine.sweeps``), divergence detection, out-of-memory retry, cost
accounting, and the training recipe (``fine-tune``, or ``from-scratch`` for a randomly
initialised network: ``recipe_options``). Every record states its convergence and tuning effort.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import itertools
import json
import logging
import os
import random
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tlbench.components import CellContext, StrategyResult
from tlbench.engine.depthwise import accelerate_depthwise
from tlbench.engine.features import (
    BASE_SPLITS,
    MAX_PREFIX_CACHE_BYTES,
    PrefixSplit,
    prefix_bytes,
    prefix_outputs,
    split_frozen_prefix,
)
from tlbench.engine.runtime import (
    CostMeter,
    accumulation_steps,
    autocast,
    backward,
    count_params,
    fitted_batch,
    grad_scaler,
    is_oom,
    memory_format,
    optimizer_step,
    remember_fitted,
    resolve_device,
    resolve_precision,
    seed_everything,
)
from tlbench.engine.sweeps import run_sweep
from tlbench.errors import Diverged, UserError

logger = logging.getLogger("tlbench.training")

# Swept by default when a strategy declares them as lists; see docs/strategies.md.
SWEEPABLE = ("lr", "weight_decay")
RECIPES = ("fine-tune", "from-scratch")
# The from-scratch recipe (He, Girshick & Dollar 2019; Kornblith et al. 2019): its own, higher
# learning rates, about 3x the fine-tuning budget, BatchNorm on batch statistics, augmentation.
SCRATCH_LR = (1e-3, 3e-3, 1e-2)
SCRATCH_EPOCHS_FACTOR = 3
_BN_TYPES = (nn.modules.batchnorm._BatchNorm,)
# Below this batch size BatchNorm batch statistics are too noisy to train with; use running ones.
SMALL_BATCH = 16
# On an accelerator the loss is looked at (a wait for the device) once per this many steps and
# at the end of each epoch, not after every step; on CPU after every step (nothing to wait for).
DIVERGENCE_CHECK_STEPS = 50


@dataclass(frozen=True)
class TrainConfig:
    """One training configuration (one point of a sweep)."""

    epochs: int = 15
    lr: float = 1e-3
    weight_decay: float = 0.05
    optimizer: str = "adamw"
    warmup_epochs: float = 0.5
    layer_decay: float | None = None
    batch_size: int = 64
    patience: int = 3
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
    epochs_trained: int = 0
    early_stopped: bool = False  # stopped by patience before its last epoch
    steps: int = 0  # optimizer steps taken (a resumed candidate continues the lr schedule there)
    optimizer: Any = None  # kept so a paused sweep candidate can be moved off the device
    scaler: Any = None  # the fp16 loss scaler, checkpointed with the optimizer


def training_recipe(ctx: CellContext, options: Mapping[str, Any]) -> str:
    """``fine-tune`` or ``from-scratch``: the ``recipe`` option, or with ``auto`` (the default)
    from the model: a randomly initialised network (``SourceModel.weights == "random"``) trains
    from scratch."""
    chosen = options.get("recipe") or "auto"
    if chosen != "auto":
        return chosen
    return "from-scratch" if getattr(ctx.source, "weights", None) == "random" else "fine-tune"


def recipe_options(ctx: CellContext, options: Mapping[str, Any]) -> tuple[str, dict]:
    """The training options with the recipe's defaults filled in. ``lr``, when given, applies
    under either recipe; otherwise it is ``finetune_lr`` or ``scratch_lr``. ``steps``, when
    given, sets the budget in optimizer steps (rounded up to whole epochs). From scratch the
    budget is ``scratch_epochs`` (default 3x the fine-tuning budget). ``bn`` and ``augment`` left unset
    (None) become frozen / off for fine-tuning and train / on from scratch."""
    recipe = training_recipe(ctx, options)
    resolved = dict(options)
    scratch = recipe == "from-scratch"
    if options.get("steps"):
        per_epoch = _steps(ctx, "train", options.get("batch_size") or TrainConfig.batch_size)
        resolved["epochs"] = -(-options["steps"] // per_epoch)
    if not options.get("lr"):
        grid = options.get("scratch_lr") if scratch else options.get("finetune_lr")
        resolved["lr"] = list(grid or (SCRATCH_LR if scratch else [TrainConfig.lr]))
    if scratch:
        epochs = resolved.get("epochs") or TrainConfig.epochs
        resolved["epochs"] = options.get("scratch_epochs") or SCRATCH_EPOCHS_FACTOR * epochs
    if resolved.get("bn") is None:
        resolved["bn"] = "train" if scratch else "frozen"
    if resolved.get("augment") is None:
        resolved["augment"] = scratch
    return recipe, resolved


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
        yield from self.data.batches(
            split,
            batch_size,
            augment=self.augment and shuffle,
            shuffle=shuffle,
            seed=seed,
            device=self.device,
            memory_format=memory_format(self.device),
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
        pin = self.device.type == "cuda"  # a copy from pageable memory would wait for the device
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            x, y = acts[idx], labels[idx]
            if pin:
                x, y = x.pin_memory(), y.pin_memory()
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.cut.forward_suffix(h)


def _feeder(
    model: nn.Module,
    ctx: CellContext,
    recipe: Recipe,
    cfg: TrainConfig,
    precision: str,
    meter: CostMeter,
    shared: dict | None = None,
):
    """Batches for training ``model``: images, or the frozen prefix's activations when the recipe
    allows it. ``shared`` holds the activations across the candidates and the refit of a cell
    (the prefix is frozen, so they are the same for all)."""
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
    shared = {} if shared is None else shared
    if cut.boundary not in shared:
        with meter.phase("features_s"):
            tensors, reuse = prefix_outputs(
                cut, ctx, BASE_SPLITS, precision=precision, batch_size=max(cfg.batch_size, 256)
            )
        tensors["trainval"] = tuple(
            torch.cat([a, b]) for a, b in zip(tensors["train"], tensors["val"], strict=True)
        )
        shared[cut.boundary] = tensors
        meter.extra.update(prefix_computed=reuse.computed, prefix_reused=reuse.reused)
    return _CachedFeeder(cut, shared[cut.boundary], device)


# ------------------------------------------------------------------------------ the loop


def freeze_bn_stats(cfg: TrainConfig) -> bool:
    """Whether BatchNorm layers use their running statistics while training (affine parameters
    still train). ``frozen`` (the fine-tune recipe's default) keeps the function being
    fine-tuned the same one the linear probe and evaluation see: with batch statistics, a few
    dozen steps leave running statistics that wreck eval-mode accuracy, and LP-FT's probed head
    meets features it was not fit on. ``train`` (the from-scratch recipe's, and the only one it
    accepts: a random network's running statistics are its initial mean 0 / variance 1, i.e. no
    normalisation) uses batch statistics, re-estimated after every epoch (``recalibrate_bn``),
    except below ``SMALL_BATCH`` images per batch."""
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
    """(logits, labels) of ``split`` in eval mode, on the CPU, in the split's order (gathered on
    the device and copied once: no wait for the device per batch)."""
    feeder_model = feeder.model if hasattr(feeder, "model") else feeder.cut.model
    feeder_model.eval()
    logits, labels = [], []
    for x, y in feeder.batches(split, batch_size, shuffle=False, seed=0):
        with autocast(device, precision):
            logits.append(feeder.forward(x).float())
        labels.append(y)
    return torch.cat(logits).cpu(), torch.cat(labels).cpu()


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


def lr_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    """The peak learning rate each trained parameter got, as the optimiser's groups set it
    (``layer_decay`` scales them layer by layer): one entry per distinct scale, input side
    first, with how many trainable parameters it covers."""
    scales: dict[float, int] = {}
    for group in _optimizer(model, cfg).param_groups:
        scale = round(float(group.get("lr_scale", 1.0)), 8)
        scales[scale] = scales.get(scale, 0) + sum(p.numel() for p in group["params"])
    return [
        {"lr_scale": scale, "lr": cfg.lr * scale, "params": count}
        for scale, count in sorted(scales.items())
        if count
    ]


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


def train_loop(model: nn.Module, feeder, cfg: TrainConfig, **options) -> TrainOutcome:
    """Train to the end: ``train_epochs`` run through (same arguments)."""
    outcome = None
    for after_epoch in train_epochs(model, feeder, cfg, **options):
        outcome = after_epoch
    return outcome


def train_epochs(
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
    resume: Mapping[str, Any] | None = None,
    micro_batch_size: int | None = None,
) -> Iterator[TrainOutcome]:
    """Train ``epochs`` epochs on ``split``, yielding the outcome after each epoch so that a sweep
    can pause a candidate and continue it later (the lr schedule spans all ``epochs`` either
    way); with ``val_split``, evaluate after every epoch and stop
    after ``cfg.patience`` epochs without improvement. ``penalty(model)`` is added to the loss
    (outside autocast, in float32). Raises ``Diverged`` on a non-finite loss (on an accelerator
    noticed within ``DIVERGENCE_CHECK_STEPS`` steps, naming the first such step). ``resume`` (a
    checkpoint ``_Checkpoints`` wrote after an epoch) continues from that epoch: weights,
    optimizer state (its learning rates included), step count and curve.

    ``micro_batch_size`` below ``cfg.batch_size`` splits every batch into micro-batches whose
    gradients accumulate into one optimiser step (each loss weighted by its share of the batch):
    the same steps and schedule as whole batches, in less memory (BatchNorm layers that use
    batch statistics see micro-batches). Evaluation and BatchNorm recalibration run at twice,
    and at, the micro-batch."""
    optimizer = _optimizer(model, cfg)
    scaler = grad_scaler(device, precision)  # enabled for fp16 on CUDA only
    scheduler = _scheduler(optimizer, cfg, epochs, steps_per_epoch)
    outcome = TrainOutcome(
        model,
        best_epoch=epochs,
        best_val=None,
        prefix_cache=feeder.prefix_cache,
        optimizer=optimizer,
    )
    step = start = 0
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        if resume.get("scaler") and scaler is not None:
            scaler.load_state_dict(resume["scaler"])
        step = start = outcome.steps = resume["steps"]
        start = outcome.epochs_trained = resume["epochs_trained"]
        outcome.best_epoch, outcome.best_val = resume["best_epoch"], resume["best_val"]
        outcome.history = list(resume["history"])
        outcome.best_state = resume["best_state"]
    outcome.scaler = scaler
    frozen_bn = freeze_bn_stats(cfg)
    micro = min(micro_batch_size or cfg.batch_size, cfg.batch_size)
    divergence = _DivergenceWatch(device, cfg.lr)
    for epoch in range(start, epochs):
        set_train_mode(model, frozen_bn)
        with meter.phase("train_s") if meter else contextlib.nullcontext():
            for x, y in feeder.batches(
                split, cfg.batch_size, shuffle=True, seed=seed * 1000 + epoch
            ):
                optimizer.zero_grad(set_to_none=True)
                parts = (
                    [(x, y)]
                    if len(y) <= micro
                    else list(zip(x.split(micro), y.split(micro), strict=True))
                )
                for i, (x_part, y_part) in enumerate(parts):
                    with autocast(device, precision):
                        loss = F.cross_entropy(
                            feeder.forward(x_part).float(),
                            y_part,
                            label_smoothing=cfg.label_smoothing,
                        )
                    if len(parts) > 1:  # each micro-batch's share of the batch's mean loss
                        loss = loss * (len(y_part) / len(y))
                    if penalty is not None and i == 0:
                        loss = loss + penalty(model)
                    divergence.note(loss, step)
                    backward(loss, scaler)
                optimizer_step(optimizer, scaler)
                step += 1
                outcome.steps = step
                scheduler.step_update(num_updates=step)
                if meter:
                    meter.train_images += len(y)
                if step % DIVERGENCE_CHECK_STEPS == 0:
                    divergence.check()
            divergence.check()
            if not frozen_bn:
                recalibrate_bn(model, feeder, split, micro, seed, device, precision)
        outcome.epochs_trained = epoch + 1
        if val_split is None:
            yield outcome
            continue
        with meter.phase("eval_s") if meter else contextlib.nullcontext():
            top1 = evaluate(feeder, val_split, micro * 2, device, precision)
        outcome.history.append(round(top1, 3))
        if outcome.best_val is None or top1 > outcome.best_val:
            outcome.best_val, outcome.best_epoch = top1, epoch + 1
            if not cfg.refit:
                outcome.best_state = copy.deepcopy(model.state_dict())
        elif epoch + 1 - outcome.best_epoch >= cfg.patience:
            outcome.early_stopped = epoch + 1 < epochs
            yield outcome
            return
        yield outcome


class _DivergenceWatch:
    """Non-finite losses, without waiting for the device after every step: on CPU (where the
    loss is already computed) ``note`` raises ``Diverged`` at once, before the step; elsewhere
    the first non-finite loss and its step are kept on the device and ``check`` (every
    ``DIVERGENCE_CHECK_STEPS`` steps and at the end of each epoch) raises naming that step."""

    def __init__(self, device: torch.device, lr: float, eager: bool | None = None):
        self.lr = lr
        self.eager = torch.device(device).type == "cpu" if eager is None else eager
        if not self.eager:
            self.step = torch.full((), -1, dtype=torch.int64, device=device)
            self.loss = torch.zeros((), dtype=torch.float32, device=device)

    def note(self, loss: torch.Tensor, step: int) -> None:
        if self.eager:
            if not torch.isfinite(loss):
                raise Diverged(
                    f"loss became {loss.item()} at step {step} (lr={self.lr})", step=step
                )
            return
        first = ~torch.isfinite(loss.detach()) & (self.step < 0)
        self.step = torch.where(first, step, self.step)
        self.loss = torch.where(first, loss.detach().float(), self.loss)

    def check(self) -> None:
        if self.eager:
            return
        step = int(self.step)  # the one wait for the device
        if step >= 0:
            raise Diverged(
                f"loss became {float(self.loss)} at step {step} (lr={self.lr})", step=step
            )


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


class _Candidate:
    """One configuration trained epoch by epoch (``advance``), so that a sweep schedule
    (``tlbench.engine.sweeps``) can pause it between epochs, continue it, or drop it.

    A paused candidate keeps its own RNG stream, so its epochs are the same whatever ran in
    between (a candidate continued by successive halving matches the same candidate of the
    exhaustive grid exactly); on CUDA it waits in host memory. Out of memory restarts it with
    half the micro-batch, accumulating gradients up to its batch size (the effective batch, the
    steps and the learning-rate schedule are the recipe's); the micro-batch that fits is
    remembered for the process per model, input size and strategy (``_fit_key``), so later
    candidates and cells start there. A non-finite loss stops it (``diverged``)."""

    def __init__(
        self,
        ctx,
        recipe,
        cfg,
        *,
        phase,
        split,
        epochs,
        val_split,
        precision,
        meter,
        shared,
        name: str = "",
        checkpoints: _Checkpoints | None = None,
    ):
        self.ctx, self.recipe, self.cfg, self.phase = ctx, recipe, cfg, phase
        self.split, self.val_split, self.precision, self.meter = split, val_split, precision, meter
        self.shared = shared
        self.device = resolve_device(ctx.device)
        self.max_epochs, self.epochs_trained, self.stopped = epochs, 0, False
        self.outcome: TrainOutcome | None = None
        self.diverged: Diverged | None = None
        self.micro_batch: int | None = None
        self.feeder = None
        self._run: Iterator[TrainOutcome] | None = None
        self._rng: tuple | None = None
        self._parked: dict | None = None
        self.name, self.checkpoints = name, checkpoints
        self._resume: dict | None = None
        saved = checkpoints.load(name) if checkpoints is not None else None
        if saved is not None:
            self._resume_from(saved)

    def _resume_from(self, saved: dict) -> None:
        """Take up where a killed run's last checkpoint left this candidate: its curve and
        epoch count now (so a sweep ranks it without training), its weights and optimizer when
        it trains again or its model is needed."""
        self._resume = saved
        self.micro_batch = saved.get("micro_batch_size") or saved["batch_size"]
        self.epochs_trained, self.stopped = saved["epochs_trained"], saved["stopped"]
        self._rng = _unpack_rng(saved["rng"])
        self.outcome = TrainOutcome(
            None,
            best_epoch=saved["best_epoch"],
            best_val=saved["best_val"],
            history=list(saved["history"]),
            best_state=saved["best_state"],
            epochs_trained=saved["epochs_trained"],
            early_stopped=saved["early_stopped"],
            steps=saved["steps"],
        )

    def materialise(self) -> None:
        """Rebuild the model (and feeder) of a candidate resumed from a checkpoint that stopped
        before the kill: its last weights, on its device."""
        if self._resume is None or self._run is not None:
            return
        with self._own_rng():
            self._start()
            saved, self._resume = self._resume, None
            self.outcome.model = self._run_model
            self.outcome.model.load_state_dict(saved["model"])
            self.outcome.feeder = self.feeder

    @property
    def score(self) -> float | None:
        if self.diverged is not None or self.outcome is None:
            return None
        return self.outcome.best_val

    def advance(self, epochs: int) -> None:
        while not self.stopped and self.epochs_trained < min(epochs, self.max_epochs):
            self._epoch()
        if self.stopped:
            self._run = None  # frees the optimizer; the outcome keeps model and curve
            if self.outcome is not None:
                self.outcome.optimizer = None
        elif self.device.type == "cuda":
            self._park()

    def release(self) -> None:
        """Drop the model and weights of a candidate that will not be used again."""
        self._run, self._parked = None, None
        if self.outcome is not None:
            self.outcome.model = self.outcome.feeder = self.outcome.best_state = None
            self.outcome.optimizer = None

    def _epoch(self) -> None:
        with self._own_rng():
            self._unpark()
            try:
                if self._run is None:
                    self._start()
                self.outcome = next(self._run)
                self.outcome.feeder = self.feeder
                self._resume = None
            except StopIteration:
                self.stopped = True
                return
            except Diverged as exc:
                self.diverged, self.stopped = exc, True
                return
            except Exception as exc:
                micro = self.micro_batch or self.cfg.batch_size
                if not is_oom(exc) or micro <= 1:
                    raise
                self._restart(micro // 2)
                return
        self._record_batch()
        self.epochs_trained = self.outcome.epochs_trained
        self.stopped = self.outcome.early_stopped or self.epochs_trained >= self.max_epochs
        if self.checkpoints is not None:
            self.checkpoints.save(self.name, self._checkpoint())

    def _checkpoint(self) -> dict:
        outcome = self.outcome
        scaler = outcome.scaler
        return {
            "batch_size": self.cfg.batch_size,
            "micro_batch_size": self.micro_batch,
            "epochs_trained": self.epochs_trained,
            "stopped": self.stopped,
            "steps": outcome.steps,
            "best_epoch": outcome.best_epoch,
            "best_val": outcome.best_val,
            "history": list(outcome.history),
            "early_stopped": outcome.early_stopped,
            "best_state": outcome.best_state,
            "model": outcome.model.state_dict(),
            "optimizer": outcome.optimizer.state_dict() if outcome.optimizer else None,
            "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
            "rng": _pack_rng(_rng_state()),  # this candidate's stream, after the epoch
        }

    def _fit_key(self) -> tuple:
        """What the micro-batch that fits depends on: the weights, the input size, the device,
        the precision and the strategy with its fixed options (what trains; swept values do not
        change memory)."""
        cell = self.ctx.cell
        fixed = {k: v for k, v in cell.strategy_options.items() if not isinstance(v, list)}
        fixed.pop("batch_size", None)
        return (
            "train",
            self.ctx.source.fingerprint,
            tuple(self.ctx.data.input_size),
            str(self.device),
            self.precision,
            cell.strategy_ref,
            json.dumps(fixed, sort_keys=True, default=str),
        )

    def _record_batch(self) -> None:
        """The recorded batch is the recipe's; a micro-batch, when used, is recorded beside it."""
        self.meter.batch_size = batch = self.cfg.batch_size
        micro = self.micro_batch or batch
        if micro < batch:
            self.meter.extra.update(
                micro_batch_size=micro, accumulation_steps=accumulation_steps(batch, micro)
            )

    def _start(self) -> None:
        cfg = self.cfg
        self.micro_batch = self.micro_batch or fitted_batch(self._fit_key(), cfg.batch_size)
        model = _build(self.ctx, self.recipe, self.phase, self.device)
        feeder = _feeder(model, self.ctx, self.recipe, cfg, self.precision, self.meter, self.shared)
        seed_everything(self.ctx.seed)
        self._run = train_epochs(
            model,
            feeder,
            cfg,
            split=self.split,
            epochs=self.max_epochs,
            steps_per_epoch=_steps(self.ctx, self.split, cfg.batch_size),
            seed=self.ctx.seed,
            device=self.device,
            precision=self.precision,
            meter=self.meter,
            val_split=self.val_split,
            penalty=self.recipe.penalty,
            resume=self._resume,
            micro_batch_size=self.micro_batch,
        )
        self.feeder, self._run_model = feeder, model
        if self._resume is not None:
            _set_rng_state(_unpack_rng(self._resume["rng"]))

    def _restart(self, micro_batch: int) -> None:
        """Start over with ``micro_batch`` after running out of memory (a step cut short leaves
        no consistent state to continue from)."""
        self._run, self.outcome, self.epochs_trained, self._rng = None, None, 0, None
        self._resume = None
        logger.info(
            "%s: out of memory at micro-batch %d; restarting %s at %d (batch %d accumulated)",
            cell_label(self.ctx),
            self.micro_batch,
            self.name or "the candidate",
            max(1, micro_batch),
            self.cfg.batch_size,
        )
        self.micro_batch = max(1, micro_batch)
        remember_fitted(self._fit_key(), self.micro_batch)
        self._record_batch()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    @contextlib.contextmanager
    def _own_rng(self) -> Iterator[None]:
        outside = _rng_state()
        if self._rng is not None:
            _set_rng_state(self._rng)
        try:
            yield
        finally:
            self._rng = _rng_state()
            _set_rng_state(outside)

    def _park(self) -> None:
        if self.outcome is None or self.outcome.model is None or self._parked is not None:
            return
        self._parked = _move_training_state(self.outcome, torch.device("cpu"))

    def _unpark(self) -> None:
        if self._parked is not None:
            _move_training_state(self.outcome, self.device, self._parked)
            self._parked = None


def _rng_state() -> tuple:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    return random.getstate(), np.random.get_state(), torch.get_rng_state(), cuda


def _set_rng_state(state: tuple) -> None:
    python, numpy_state, cpu, cuda = state
    random.setstate(python)
    np.random.set_state(numpy_state)
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)


def _pack_rng(state: tuple) -> list:
    """An ``_rng_state`` that ``torch.load(weights_only=True)`` reads back (numpy's key array as
    a tensor)."""
    python, (kind, keys, pos, has_gauss, cached), cpu, cuda = state
    return [
        python,
        [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        cpu,
        cuda,
    ]


def _unpack_rng(packed: list) -> tuple:
    python, (kind, keys, pos, has_gauss, cached), cpu, cuda = packed
    numpy_state = (kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached)
    return python, numpy_state, cpu, cuda


class _Checkpoints:
    """Per-epoch training state of one cell's candidates and refit, under
    ``<run dir>/checkpoints/<cell digest>/<candidate>.pt``: a cell killed mid-training (a worker
    lost, a Slurm requeue) takes every candidate up at its last finished epoch and ends with the
    record an uninterrupted run gives on CPU. The digest covers everything the cell computes, so
    a changed suite never resumes a stale state; ``clear`` removes them once the cell is done.
    Without a run directory (library use, tests) nothing is written."""

    def __init__(self, ctx: CellContext):
        self.dir = None
        run_dir = getattr(ctx, "run_dir", None)
        if run_dir is None:
            return
        cell = ctx.cell
        identity = [
            cell.suite,
            list(cell.key),
            cell.model_ref,
            cell.dataset_ref,
            cell.strategy_ref,
            dict(cell.model_options),
            dict(cell.dataset_options),
            dict(cell.strategy_options),
            dict(cell.versions),
        ]
        digest = hashlib.sha256(
            json.dumps(identity, sort_keys=True, default=str).encode()
        ).hexdigest()[:20]
        self.dir = Path(run_dir) / "checkpoints" / digest

    def load(self, name: str) -> dict | None:
        if self.dir is None or not (self.dir / f"{name}.pt").is_file():
            return None
        try:
            return torch.load(self.dir / f"{name}.pt", map_location="cpu", weights_only=True)
        except Exception:  # a checkpoint cut short by the kill itself: start that one over
            return None

    def save(self, name: str, state: dict) -> None:
        if self.dir is None:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        partial = self.dir / f".{name}.pt.partial"
        torch.save(state, partial)
        os.replace(partial, self.dir / f"{name}.pt")

    def clear(self) -> None:
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            with contextlib.suppress(OSError):
                self.dir.parent.rmdir()  # only when no other cell's checkpoints remain


def _move_training_state(
    outcome: TrainOutcome, device: torch.device, came_from: dict | None = None
) -> dict:
    """Move a paused candidate's model, optimizer state and best weights to ``device`` and
    return where each optimizer tensor was. Given ``came_from`` (what the move to the host
    returned), optimizer tensors go back exactly where they were: AdamW keeps its step counters
    on the CPU unless it is capturable."""
    outcome.model.to(device, memory_format=memory_format(device))
    was = {}
    if outcome.optimizer is not None:
        for param, state in outcome.optimizer.state.items():
            for name, value in state.items():
                if torch.is_tensor(value):
                    was[(id(param), name)] = value.device
                    target = came_from[(id(param), name)] if came_from is not None else device
                    state[name] = value.to(target)
    if outcome.best_state is not None:
        outcome.best_state = {k: v.to(device) for k, v in outcome.best_state.items()}
    return was


def _candidate_record(candidate: _Candidate, swept: Iterable[str], pruned_at: int | None) -> dict:
    record = {k: getattr(candidate.cfg, k) for k in swept}
    outcome, diverged = candidate.outcome, candidate.diverged
    if diverged is not None:
        record.update(val_top1=None, diverged_at_step=diverged.step)
    else:
        record.update(
            val_top1=round(outcome.best_val, 3),
            best_epoch=outcome.best_epoch,
            val_curve=outcome.history,
        )
    record.update(epochs_trained=candidate.epochs_trained, pruned_at_epoch=pruned_at)
    return record


def convergence(candidate: _Candidate) -> dict:
    """Whether the chosen candidate's validation curve reached a plateau within its budget.

    ``stopped`` is ``early`` when patience ran out before the budget, else ``budget``;
    ``still_improving`` is true when the budget ran out while the best val epoch lay within the
    last ``patience`` epochs (``epochs_run - best_epoch < patience``): early stopping would not
    have fired yet, so more epochs might still have helped."""
    outcome, patience = candidate.outcome, candidate.cfg.patience
    stopped = "early" if outcome.early_stopped else "budget"
    return {
        "best_epoch": int(outcome.best_epoch),
        "epochs_run": int(candidate.epochs_trained),
        "budget_epochs": int(candidate.max_epochs),
        "stopped": stopped,
        "still_improving": stopped == "budget"
        and candidate.epochs_trained - outcome.best_epoch < patience,
    }


def finetune(ctx: CellContext, recipe: Recipe, options: Mapping[str, Any]) -> StrategyResult:
    """Sweep the list-valued options on val (``sweep``: successive halving by default, or every
    candidate to its end; early stopping per candidate either way), refit the best on trainval for
    its best epoch count (``refit=True``, the VTAB protocol) or keep its best-epoch weights, and
    evaluate on test once."""
    device = resolve_device(ctx.device)
    recipe_name, options = recipe_options(ctx, options)
    configs = TrainConfig.sweep(options)
    swept = [k for k, v in options.items() if isinstance(v, list) and k in SWEEPABLE]
    precision = resolve_precision(configs[0].precision, device)
    meter = CostMeter(device, precision)
    shared: dict = {}  # frozen-prefix activations, the same for every candidate and the refit
    checkpoints = _Checkpoints(ctx)

    def candidate(cfg, phase, split, epochs, val_split, name) -> _Candidate:
        return _Candidate(
            ctx,
            recipe,
            cfg,
            phase=phase,
            split=split,
            epochs=epochs,
            val_split=val_split,
            precision=precision,
            meter=meter,
            shared=shared,
            name=name,
            checkpoints=checkpoints,
        )

    candidates = [
        candidate(cfg, "search", "train", cfg.epochs, "val", f"search-{i}")
        for i, cfg in enumerate(configs)
    ]
    started = time.perf_counter()
    plan = run_sweep(candidates, options.get("sweep") or "asha", options.get("grace_epochs"))
    tuning = {
        "configurations": len(candidates),
        "epochs": float(sum(c.epochs_trained for c in candidates)),
        "train_s": round(time.perf_counter() - started, 3),
        "schedule": plan.schedule,
    }
    for c in candidates:
        if c.diverged is not None:
            ctx.log(
                f"{cell_label(ctx)}: candidate {[getattr(c.cfg, k) for k in swept]} diverged at step {c.diverged.step}"
            )
    records = [_candidate_record(c, swept, plan.pruned_at.get(i)) for i, c in enumerate(candidates)]
    finished = [c for c in candidates if c.diverged is None and c.outcome is not None]
    if not finished:
        first = next(c.diverged for c in candidates if c.diverged is not None)
        checkpoints.clear()
        raise Diverged(f"{cell_label(ctx)}: every candidate diverged ({first})", step=first.step)
    best_candidate = max(finished, key=lambda c: c.outcome.best_val)  # first wins ties
    best, best_cfg = best_candidate.outcome, best_candidate.cfg
    for c in candidates:
        if c is not best_candidate:
            c.release()
    if best_cfg.refit:
        refit = candidate(best_cfg, "refit", "trainval", best.best_epoch, None, "refit")
        refit.advance(refit.max_epochs)
        if refit.diverged is not None:
            checkpoints.clear()
            raise refit.diverged
        refit.materialise()  # resumed after it had finished: its weights from the checkpoint
        final = refit.outcome
        best_candidate.release()
    else:
        best_candidate.materialise()
        best_candidate._unpark()
        final = best = best_candidate.outcome
        final.model.load_state_dict(best.best_state)
    with meter.phase("eval_s"):
        eval_batch = meter.extra.get("micro_batch_size") or meter.batch_size or best_cfg.batch_size
        logits, labels = predict(final.feeder, "test", eval_batch * 2, device, precision)
    top1 = top1_of(logits, labels)
    chosen = asdict(best_cfg) | {
        "epochs": best.best_epoch,
        "epochs_max": best_cfg.epochs,
        "precision": precision,
    }
    hparams = chosen | {
        "recipe": recipe_name,
        "convergence": convergence(best_candidate),
        "tuning": tuning,
        "sweep": records,
        "sweep_schedule": plan.describe(candidates),
    }
    hparams["lr_groups"] = lr_groups(final.model, best_cfg)
    trainable, total = count_params(final.model)
    checkpoints.clear()
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
