"""Training that converges and says so: early stopping on val under a budget, convergence and
tuning diagnostics in every record, a learning-rate grid of at least three values, and the
from-scratch recipe (batch statistics, its own grid and budget, augmentation) for randomly
initialised networks. Real digits at 32 px; budgets of one or two epochs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from tlbench.cache import Cache
from tlbench.components import BuildContext, Cell, CellContext
from tlbench.errors import UserError
from tlbench.specs import resolve_options

CONVERGENCE_KEYS = {"best_epoch", "epochs_run", "budget_epochs", "stopped", "still_improving"}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return Cache(tmp_path_factory.mktemp("convergence"))


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """A randomly initialised network (SourceModel.weights == "random"), as scratch: builds it."""
    from tlbench.builtin.model_sources import scratch_model

    context = BuildContext(cache=Cache(tmp_path_factory.mktemp("scratch")), device="cpu")
    return scratch_model("test_resnet", {"input_size": 32}, context)


def _specs():
    from tlbench.builtin.layer_strategies import STRATEGIES
    from tlbench.builtin.strategies import SPECS

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins" / "tlbench-peft"))
    import tlbench_peft

    registered = []
    tlbench_peft.register_strategies(register=registered.append)
    return {spec.name: spec for spec in (*SPECS, *STRATEGIES, *registered)}


def _context(source, data, cache, strategy, options, seed=0):
    cell = Cell(
        "t", source.name, "digits", strategy, seed, source.name, "digits", strategy, {}, {}, options
    )
    return CellContext(
        cell=cell,
        source=source,
        data=data,
        device=torch.device("cpu"),
        cache=cache,
        seed=seed,
        log=lambda m: None,
    )


@pytest.fixture
def run(lite0, digits_data, cache):
    """run(strategy, source=lite0, **options) -> StrategyResult through the registered spec."""

    def _run(strategy, source=None, **given):
        spec = _specs()[strategy]
        options = resolve_options(spec.options, given)
        ctx = _context(source or lite0, digits_data, cache, strategy, options)
        return spec.load_factory()(options).run(ctx)

    return _run


def test_every_trained_strategy_sweeps_at_least_three_learning_rates_by_default():
    trained = [s for s in _specs().values() if any(o.name == "finetune_lr" for o in s.options)]
    assert {"full-finetune", "partial-unfreeze", "lp-ft", "bitfit", "lora", "surgical"} <= {
        s.name for s in trained
    }
    for spec in trained:
        defaults = {o.name: o.default for o in spec.options}
        assert len(defaults["finetune_lr"]) >= 3, spec.name
        assert len(defaults["scratch_lr"]) >= 3, spec.name
        assert min(defaults["scratch_lr"]) >= min(defaults["finetune_lr"]), spec.name
        assert defaults["patience"] >= 2 and defaults["epochs"] >= 10, spec.name


def test_early_stopping_ends_a_plateau_and_the_record_says_so(run):
    # A learning rate too small to move anything: val is flat from epoch 1, so patience (2)
    # stops the candidate at epoch 3 of its 8-epoch budget.
    result = run(
        "partial-unfreeze", k=0, lr=1e-12, epochs=8, patience=2, batch_size=32, refit=False
    )
    convergence = result.hparams["convergence"]
    assert set(convergence) == CONVERGENCE_KEYS
    assert convergence == {
        "best_epoch": 1,
        "epochs_run": 3,
        "budget_epochs": 8,
        "stopped": "early",
        "still_improving": False,
    }
    assert result.hparams["recipe"] == "fine-tune" and result.hparams["bn"] == "frozen"


def test_a_budget_that_runs_out_within_patience_of_the_best_epoch_is_still_improving(run):
    result = run("partial-unfreeze", k=0, lr=3e-3, epochs=2, patience=3, batch_size=32)
    convergence = result.hparams["convergence"]
    assert convergence["stopped"] == "budget" and convergence["epochs_run"] == 2
    assert convergence["budget_epochs"] == 2 and convergence["still_improving"] is True
    # The refit on train+val trains the chosen candidate's best epoch count.
    assert result.hparams["epochs"] == convergence["best_epoch"]


def test_records_state_the_tuning_effort_of_trained_strategies_and_of_the_linear_probe(run):
    tuned = run(
        "partial-unfreeze", k=0, lr=[1e-3, 3e-3, 1e-2], epochs=2, batch_size=32, refit=False
    )
    tuning = tuned.hparams["tuning"]
    assert set(tuning) == {"configurations", "epochs", "train_s", "schedule"}
    assert tuning["configurations"] == 3 and tuning["schedule"] == "asha"
    # The grace period (min(3, budget) = 2 epochs here) is the whole budget: nothing is cut.
    assert tuning["epochs"] == 6.0 and tuning["train_s"] > 0
    assert tuned.hparams["sweep_schedule"]["pruned"] == 0

    probe = run("linear-probe", l2=[1e-2, 1.0], refine_steps=0)
    assert probe.hparams["tuning"] | {"train_s": 0} == {
        "configurations": 2,
        "epochs": 0.0,
        "train_s": 0,
        "schedule": "solver",
    }
    assert "convergence" not in probe.hparams


def test_a_random_network_trains_from_scratch_with_batch_statistics(run, scratch):
    assert scratch.weights == "random" and scratch.card["weights"] == "random"
    result = run("full-finetune", source=scratch, lr=1e-3, epochs=1, batch_size=32)
    hparams = result.hparams
    assert hparams["recipe"] == "from-scratch" and hparams["bn"] == "train"
    assert hparams["augment"] is True
    assert hparams["convergence"]["budget_epochs"] == 3  # 3 x the fine-tuning budget
    assert set(hparams["convergence"]) == CONVERGENCE_KEYS


def test_the_from_scratch_recipe_moves_batchnorm_running_statistics(scratch, digits_data, cache):
    from tlbench.engine.training import (
        TrainConfig,
        _ImageFeeder,
        recipe_options,
        train_loop,
    )

    _, options = recipe_options(_context(scratch, digits_data, cache, "full-finetune", {}), {})
    assert options["bn"] == "train" and options["augment"] is True
    assert options["lr"] == [1e-3, 3e-3, 1e-2]
    model = scratch.build(num_classes=10, in_chans=3, seed=0)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(torch.all(m.running_mean == 0) for m in norms)
    cfg = TrainConfig(epochs=1, lr=1e-3, batch_size=32, bn=options["bn"])
    feeder = _ImageFeeder(model, digits_data, torch.device("cpu"), augment=False)
    train_loop(
        model,
        feeder,
        cfg,
        split="train",
        epochs=1,
        steps_per_epoch=7,
        seed=0,
        device=torch.device("cpu"),
        precision="fp32",
    )
    assert all(not torch.all(m.running_mean == 0) for m in norms)
    assert all(not torch.all(m.running_var == 1) for m in norms)


def test_the_recipe_follows_the_model_and_the_suite_can_override_it(scratch, lite0, digits_data):
    from tlbench.engine.training import recipe_options

    def resolved(source, **given):
        options = resolve_options(_specs()["full-finetune"].options, given)
        ctx = _context(source, digits_data, None, "full-finetune", options)
        return recipe_options(ctx, options)

    recipe, options = resolved(lite0)
    assert recipe == "fine-tune" and options["lr"] == [1e-4, 3e-4, 1e-3]
    assert options["bn"] == "frozen" and options["augment"] is False
    assert options["epochs"] == 15
    recipe, options = resolved(scratch, epochs=4)
    assert recipe == "from-scratch" and options["epochs"] == 12
    assert resolved(scratch, scratch_epochs=5)[1]["epochs"] == 5
    # A budget in steps: 100 training images at batch 64 are 2 steps an epoch, so 9 steps
    # round up to 5 epochs (15 from scratch).
    assert digits_data.size("train") == 100
    assert resolved(lite0, steps=9)[1]["epochs"] == 5
    assert resolved(scratch, steps=9)[1]["epochs"] == 15
    assert resolved(scratch, lr=[0.5])[1]["lr"] == [0.5]  # a given lr applies under either
    recipe, options = resolved(scratch, recipe="fine-tune")
    assert recipe == "fine-tune" and options["bn"] == "frozen"
    assert resolved(lite0, recipe="from-scratch")[1]["bn"] == "train"


def test_frozen_batchnorm_on_a_random_network_is_a_user_error_naming_the_cell(
    scratch, digits_data, cache
):
    spec = _specs()["full-finetune"]
    options = resolve_options(spec.options, {"bn": "frozen", "epochs": 1})
    ctx = _context(scratch, digits_data, cache, "full-finetune", options)
    with pytest.raises(UserError, match=r"cell .*full-finetune.*'bn' = 'frozen'.*from-scratch"):
        spec.load_factory()(options).check(ctx)
