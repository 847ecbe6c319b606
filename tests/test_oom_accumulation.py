"""Out of memory in training keeps the recipe: the candidate restarts with the largest
micro-batch that fits (searched once per model and input size in a process) and accumulates
gradients up to the requested batch, so the effective batch, the number of optimiser steps and
the learning-rate schedule stay as they were. Simulated on CPU: the model's forward raises CUDA's
out-of-memory error for training batches above a size. The model has no BatchNorm (with
accumulation BatchNorm would see micro-batches) and computes in float64, so rounding cannot
hide a wrong gradient scale."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import torch
from torch import nn

from tlbench.components import Cell, CellContext, ImageSet, SourceModel, TargetData
from tlbench.data import prepare

FITS = 8  # the largest training batch the simulated GPU holds
_names = itertools.count()


class TinyNet(nn.Module):
    """conv, ReLU, pooling, linear head; float64; no BatchNorm."""

    def __init__(self, num_classes: int, in_chans: int, limit: int | None):
        super().__init__()
        self.conv = nn.Conv2d(in_chans, 6, 3, padding=1)
        self.head = nn.Linear(6, num_classes)
        self.limit = limit
        self.double()

    def forward(self, x):
        if self.limit is not None and torch.is_grad_enabled() and len(x) > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        h = torch.relu(self.conv(x.double()))
        return self.head(h.mean((2, 3)))


def tiny_source(limit: int | None) -> SourceModel:
    def build(num_classes, in_chans, seed):
        torch.manual_seed(seed)
        return TinyNet(num_classes, in_chans, limit)

    config = {
        "input_size": (3, 12, 12),
        "interpolation": "bilinear",
        "crop_pct": 1.0,
        "mean": (0.5, 0.5, 0.5),
        "std": (0.25, 0.25, 0.25),
        "crop_mode": "center",
    }
    # A fresh name per source: the fitted micro-batch is remembered per model for the process.
    name = f"tiny-{next(_names)}"
    return SourceModel(
        name=name, arch="tiny", weights="none", fingerprint=name, data_config=config, build=build
    )


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    labels = np.arange(120) % 3
    pixels = rng.integers(0, 256, (120, 12, 12, 3), dtype=np.uint8)
    pixels[..., 0] = np.clip(pixels[..., 0] // 2 + 60 * labels[:, None, None], 0, 255)
    return ImageSet(labels=labels.astype(np.int64), images=pixels)


def context(
    images, limit: int | None, options: dict, source: SourceModel | None = None, run_dir=None
) -> CellContext:
    target = TargetData("syn", ("a", "b", "c"), images, None, fingerprint="syn")
    source = source or tiny_source(limit)
    split = {"train_size": 64, "val_size": 24, "test_size": 32}
    data = prepare(target, source, split, {}, seed=0, cache=None)
    cell = Cell("t", source.name, "syn", "ft", 0, source.name, "syn", "ft", {}, split, options)
    return CellContext(
        cell=cell,
        source=source,
        data=data,
        device=torch.device("cpu"),
        cache=None,
        seed=0,
        log=lambda m: None,
        run_dir=run_dir,
    )


def run(images, limit: int | None, source=None, run_dir=None, **options):
    """The cell's result and the optimiser steps each candidate took."""
    import tlbench.engine.training as training
    from tlbench.engine.training import Recipe, finetune

    steps: list[int] = []
    real = training._optimizer

    def counting(model, cfg):
        optimizer = real(model, cfg)
        steps.append(0)
        slot = len(steps) - 1
        optimizer.register_step_post_hook(lambda *_: steps.__setitem__(slot, steps[slot] + 1))
        return optimizer

    given = {"epochs": 3, "batch_size": 32, "optimizer": "sgd", "lr": [0.5, 2.0], **options}
    training._optimizer = counting
    try:
        recipe = Recipe(trainable=lambda model: [n for n, _ in model.named_parameters()])
        result = finetune(context(images, limit, given, source, run_dir), recipe, given)
    finally:
        training._optimizer = real
    return result, steps


def comparable(result) -> tuple:
    hparams = dict(result.hparams)
    hparams["tuning"] = {k: v for k, v in hparams["tuning"].items() if k != "train_s"}
    return result.metrics, hparams


def test_out_of_memory_accumulates_micro_batches_and_keeps_the_recipe(images):
    plain, plain_steps = run(images, None)
    squeezed, squeezed_steps = run(images, FITS)
    assert squeezed.cost["batch_size"] == 32, "the recorded batch is the effective one"
    assert squeezed.cost["micro_batch_size"] == FITS
    assert squeezed.cost["accumulation_steps"] == 4
    assert "micro_batch_size" not in plain.cost and plain.cost["batch_size"] == 32
    # The failed first attempt (out of memory before its first step) took no step; every
    # candidate and the refit took as many optimiser steps as without the limit.
    assert [s for s in squeezed_steps if s] == [s for s in plain_steps if s]
    assert comparable(squeezed) == comparable(plain)


def test_one_accumulated_step_equals_one_step_on_the_whole_batch(images):
    from tlbench.engine.training import TrainConfig, _ImageFeeder, train_loop

    def one_step(micro):
        ctx = context(images, None, {})
        model = ctx.source.build(3, 3, 0)
        cfg = TrainConfig(epochs=1, lr=0.1, optimizer="sgd", batch_size=64, warmup_epochs=0)
        feeder = _ImageFeeder(model, ctx.data, torch.device("cpu"), False)
        train_loop(
            model,
            feeder,
            cfg,
            split="train",
            epochs=1,
            steps_per_epoch=1,
            seed=0,
            device=torch.device("cpu"),
            precision="fp32",
            micro_batch_size=micro,
        )
        return [p.detach().clone() for p in model.parameters()]

    whole, accumulated, uneven = one_step(64), one_step(16), one_step(24)  # 24: 24 + 24 + 16
    before = [p.detach() for p in context(images, None, {}).source.build(3, 3, 0).parameters()]
    assert not any(torch.equal(a, b) for a, b in zip(whole, before, strict=True))
    for a, b, c in zip(whole, accumulated, uneven, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(a, c, rtol=1e-12, atol=1e-14)


def test_the_micro_batch_is_searched_once_per_model_and_input_size(images):
    import tlbench.engine.training as training

    source = tiny_source(FITS)
    tried: list[int] = []
    build = source.build

    def spying_build(num_classes, in_chans, seed):
        model = build(num_classes, in_chans, seed)
        forward = model.forward

        def spy(x):
            if torch.is_grad_enabled():
                tried.append(len(x))
            return forward(x)

        model.forward = spy
        return model

    source.build = spying_build
    ctx = dataclasses.replace(context(images, FITS, {}), source=source)
    options = {"epochs": 1, "batch_size": 32, "optimizer": "sgd", "lr": [0.5, 2.0]}
    recipe = training.Recipe(trainable=lambda model: [n for n, _ in model.named_parameters()])
    training.finetune(ctx, recipe, options)
    # 32 and 16 fail once; every later forward (the other candidate, the refit) starts at 8
    assert [t for t in tried if t > FITS] == [32, 16]


def test_on_an_accelerator_divergence_is_noticed_later_but_names_the_first_bad_step():
    from tlbench.engine.training import _DivergenceWatch
    from tlbench.errors import Diverged

    watch = _DivergenceWatch(torch.device("cpu"), lr=0.1, eager=False)  # as on a GPU
    for step, value in enumerate([1.0, 0.5, float("nan"), 2.0, float("inf")]):
        watch.note(torch.tensor(value), step)  # never waits for the device, never raises
    with pytest.raises(Diverged, match=r"loss became nan at step 2 \(lr=0.1\)") as raised:
        watch.check()
    assert raised.value.step == 2
    healthy = _DivergenceWatch(torch.device("cpu"), lr=0.1, eager=False)
    healthy.note(torch.tensor(1.0), 0)
    healthy.check()
    with pytest.raises(Diverged, match="at step 7"):
        _DivergenceWatch(torch.device("cpu"), lr=0.1).note(torch.tensor(float("inf")), 7)


def test_a_resumed_candidate_keeps_its_micro_batch_from_the_checkpoint(
    images, tmp_path, monkeypatch
):
    import tlbench.engine.runtime as runtime
    import tlbench.engine.training as training

    source = tiny_source(FITS)
    uninterrupted, _ = run(images, FITS, source=source)

    class Killed(Exception):
        pass

    evaluations, real_evaluate = [], training.evaluate

    def evaluate(*args, **kwargs):
        evaluations.append(1)
        if len(evaluations) == 3:
            raise Killed
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(training, "evaluate", evaluate)
    monkeypatch.setattr(runtime, "_FITTED", {})  # a new process: nothing fitted yet
    with pytest.raises(Killed):
        run(images, FITS, source=source, run_dir=tmp_path / "run")
    monkeypatch.setattr(training, "evaluate", real_evaluate)
    monkeypatch.setattr(runtime, "_FITTED", {})
    tried = []  # training forwards
    forward = TinyNet.forward

    def spy(self, x):
        if torch.is_grad_enabled():
            tried.append(len(x))
        return forward(self, x)

    monkeypatch.setattr(TinyNet, "forward", spy)
    resumed, _ = run(images, FITS, source=source, run_dir=tmp_path / "run")
    assert comparable(resumed) == comparable(uninterrupted)
    assert resumed.cost["micro_batch_size"] == FITS
    # the resumed search candidates start at their checkpointed micro-batch; only the refit,
    # which had no checkpoint, searches again
    assert [t for t in tried if t > FITS] == [32, 16]
