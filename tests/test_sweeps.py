"""Sweep schedules: successive halving picks on validation only, cuts nobody before its grace
period, prunes the worse half at each rung, records what it pruned and when, does not depend on the order candidates are listed in,
and leaves a continued candidate exactly as the exhaustive grid trains it. The scheduler is
checked on scripted candidates; the engine on real digits with efficientnet-lite0 at 32 px."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import pytest
import torch

from tlbench.cache import Cache
from tlbench.components import Cell, CellContext
from tlbench.engine.sweeps import grace_period, run_sweep, rungs, successive_halving
from tlbench.specs import resolve_options


class Scripted:
    """A candidate whose val curve is given; ``None`` in the curve means it diverges there."""

    def __init__(self, curve, patience=99):
        self.curve, self.patience = curve, patience
        self.max_epochs, self.epochs_trained, self.stopped = len(curve), 0, False
        self.history: list[float] = []
        self.diverged = False

    @property
    def score(self):
        return None if self.diverged or not self.history else max(self.history)

    def advance(self, epochs):
        while not self.stopped and self.epochs_trained < min(epochs, self.max_epochs):
            value = self.curve[self.epochs_trained]
            self.epochs_trained += 1
            if value is None:
                self.diverged = self.stopped = True
                return
            self.history.append(value)
            best = self.history.index(max(self.history)) + 1
            if self.epochs_trained - best >= self.patience:
                self.stopped = True
            if self.epochs_trained == self.max_epochs:
                self.stopped = True


def test_rungs_double_from_the_grace_period_below_the_budget():
    assert rungs(3, 1) == (1, 2)
    assert rungs(5, 1) == (1, 2, 4)
    assert rungs(1, 1) == ()  # one epoch: nothing to compare early, the grid it is
    assert rungs(15) == (3, 6, 12)  # the default grace period is 3 epochs


def test_the_grace_period_is_three_epochs_or_a_quarter_of_the_budget_never_above_it():
    assert grace_period(8) == 3
    assert grace_period(15) == 4
    assert grace_period(45) == 12
    assert grace_period(2) == 2
    assert grace_period(15, grace_epochs=5) == 5
    assert grace_period(4, grace_epochs=9) == 4


def test_the_grace_period_keeps_a_slow_starter_whose_curve_crosses_the_leaders():
    # The higher learning rate starts worse and ends better: cut after one epoch it would go.
    def curves():
        return Scripted([80, 85, 86, 87, 88, 89]), Scripted([70, 75, 90, 95, 96, 97])

    steady, slow = curves()
    plan = run_sweep([steady, slow], "asha")
    assert plan.grace_epochs == 3 and plan.rungs == (3,)
    assert plan.pruned_at == {0: 3} and slow.epochs_trained == 6
    steady, slow = curves()
    assert run_sweep([steady, slow], "asha", grace_epochs=1).pruned_at == {1: 1}


def test_no_candidate_is_cut_before_the_grace_period():
    candidates = [Scripted([90, 10, 10, 10, 10, 10, 10, 10]), Scripted([10, 20, 30, 40] * 2)]
    plan = run_sweep(candidates, "asha", grace_epochs=4)
    assert plan.rungs == (4,) and min(plan.pruned_at.values()) >= 4
    assert all(c.epochs_trained >= 4 for c in candidates)


def test_the_worse_half_is_pruned_at_the_first_rung_and_the_best_trains_to_its_end():
    good, bad = Scripted([80, 85, 90]), Scripted([70, 95, 96])
    plan = run_sweep([good, bad], "asha", grace_epochs=1)
    assert plan.pruned_at == {1: 1}  # chosen on what val said after one epoch, not on the future
    assert (good.epochs_trained, bad.epochs_trained) == (3, 1)
    assert plan.describe([good, bad]) | {"eta": None} == {
        "schedule": "asha",
        "eta": None,
        "grace_epochs": 1,
        "rungs": [1],
        "pruned": 1,
        "epochs_trained": 4,
        "epochs_exhaustive": 6,
    }


def test_grid_trains_every_candidate_to_its_end():
    candidates = [Scripted([80, 85, 90]), Scripted([70, 95, 96])]
    plan = run_sweep(candidates, "grid")
    assert plan.pruned_at == {} and [c.epochs_trained for c in candidates] == [3, 3]


def test_one_candidate_is_trained_as_it_would_be_without_a_sweep():
    only = Scripted([50, 60, 70, 80])
    plan = run_sweep([only], "asha")
    assert plan.pruned_at == {} and only.epochs_trained == 4


def test_four_candidates_halve_twice_then_the_last_one_finishes():
    curves = [
        [10, 20, 30, 40, 50],
        [40, 41, 42, 43, 44],
        [30, 60, 61, 62, 63],
        [20, 21, 22, 23, 24],
    ]
    candidates = [Scripted(c) for c in curves]
    plan = successive_halving(candidates, min_epochs=1)
    # epoch 1: 40 and 30 go on; epoch 2: 60 beats 41; the winner trains to 5.
    assert plan.pruned_at == {0: 1, 3: 1, 1: 2}
    assert [c.epochs_trained for c in candidates] == [1, 2, 5, 1]
    assert plan.rungs == (1, 2)


def test_the_outcome_does_not_depend_on_the_order_candidates_are_listed_in():
    curves = [
        [10, 20, 30, 40, 50],
        [40, 41, 42, 43, 44],
        [30, 60, 61, 62, 63],
        [20, 21, 22, 23, 24],
    ]
    outcomes = set()
    for order in itertools.permutations(range(4)):
        candidates = [Scripted(curves[i]) for i in order]
        plan = successive_halving(candidates, min_epochs=1)
        outcomes.add(
            (
                frozenset((order[i], at) for i, at in plan.pruned_at.items()),
                tuple(sorted((order[i], c.epochs_trained) for i, c in enumerate(candidates))),
            )
        )
    assert len(outcomes) == 1


def test_ties_go_to_the_candidate_listed_first():
    first, second = Scripted([50, 60]), Scripted([50, 90])
    plan = run_sweep([first, second], "asha", grace_epochs=1)
    assert plan.pruned_at == {1: 1}


def test_diverged_candidates_rank_last_and_are_not_counted_as_pruned():
    diverging, steady = Scripted([None, 1, 1]), Scripted([30, 31, 32])
    plan = run_sweep([diverging, steady], "asha")
    assert plan.pruned_at == {} and diverging.diverged and steady.epochs_trained == 3


def test_a_candidate_early_stopped_before_a_rung_competes_with_its_best_score_unpruned():
    stopping = Scripted([50, 40, 40, 40, 40], patience=1)
    candidates = [stopping, Scripted([45, 70, 71, 72, 73]), Scripted([10] * 5), Scripted([20] * 5)]
    plan = successive_halving(candidates, min_epochs=1)
    assert plan.pruned_at == {2: 1, 3: 1}
    assert stopping.stopped and stopping.epochs_trained == 2
    assert candidates[1].epochs_trained == 5


def test_an_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match="asha"):
        run_sweep([Scripted([1])], "bayes")


# ------------------------------------------------------------------------------ the engine

PX = 32
# grace_epochs = 1: the pruning machinery at a test's cost (the default grace period is 3 epochs).
QUICK = {
    "k": 1,
    "epochs": 2,
    "lr": [3e-3, 3e-2],
    "batch_size": 32,
    "refit": False,
    "grace_epochs": 1,
}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return Cache(tmp_path_factory.mktemp("sweeps"))


@pytest.fixture
def run(lite0, digits_data, cache):
    """run(strategy, **options) through the registered spec, on digits at 32 px."""
    from tlbench.builtin.strategies import SPECS

    specs = {spec.name: spec for spec in SPECS}

    def _run(strategy, seed=0, **given):
        spec = specs[strategy]
        options = resolve_options(spec.options, given)
        cell = Cell(
            "t",
            lite0.name,
            "digits",
            strategy,
            seed,
            lite0.name,
            "digits",
            strategy,
            {},
            {},
            options,
        )
        ctx = CellContext(
            cell=cell,
            source=lite0,
            data=digits_data,
            device=torch.device("cpu"),
            cache=cache,
            seed=seed,
            log=lambda m: None,
        )
        return spec.load_factory()(options).run(ctx)

    return _run


@pytest.mark.slow
def test_a_sweep_record_shows_what_was_pruned_and_when(run):
    result = run("partial-unfreeze", **QUICK)
    sweep = result.hparams["sweep"]
    assert [row["lr"] for row in sweep] == [3e-3, 3e-2]
    pruned = [row for row in sweep if row["pruned_at_epoch"] is not None]
    kept = [row for row in sweep if row["pruned_at_epoch"] is None]
    assert len(pruned) == 1 and pruned[0]["pruned_at_epoch"] == 1
    assert pruned[0]["epochs_trained"] == 1 and len(pruned[0]["val_curve"]) == 1
    assert kept[0]["epochs_trained"] == 2 and len(kept[0]["val_curve"]) == 2
    assert kept[0]["val_curve"][0] >= pruned[0]["val_curve"][0]  # chosen on val after epoch 1
    assert result.hparams["lr"] == kept[0]["lr"]
    assert result.hparams["sweep_schedule"]["epochs_trained"] == 3
    assert result.hparams["sweep_schedule"]["epochs_exhaustive"] == 4


@pytest.mark.slow
def test_a_continued_candidate_trains_exactly_as_in_the_exhaustive_grid(run):
    halving = run("partial-unfreeze", **QUICK)
    grid = run("partial-unfreeze", **(QUICK | {"sweep": "grid"}))
    assert all(row["pruned_at_epoch"] is None for row in grid.hparams["sweep"])
    assert grid.hparams["sweep_schedule"]["epochs_trained"] == 4
    for ours, theirs in zip(halving.hparams["sweep"], grid.hparams["sweep"], strict=True):
        # Every epoch a candidate trained is the grid's epoch, bit for bit, pruned or not.
        assert ours["val_curve"] == theirs["val_curve"][: ours["epochs_trained"]]
    if halving.hparams["lr"] == grid.hparams["lr"]:
        assert halving.metrics == grid.metrics


@pytest.mark.slow
def test_same_seed_same_choices(run):
    first, again = run("partial-unfreeze", **QUICK), run("partial-unfreeze", **QUICK)
    for result in (first, again):
        del result.hparams["tuning"]["train_s"]  # wall time
    assert first.hparams == again.hparams and first.metrics == again.metrics


@pytest.mark.slow
def test_one_configuration_trains_the_same_under_either_schedule(run):
    single = QUICK | {"lr": [3e-3], "refit": True}
    halving, grid = (
        run("partial-unfreeze", **single),
        run("partial-unfreeze", **single | {"sweep": "grid"}),
    )
    assert halving.metrics == grid.metrics
    assert halving.hparams["sweep"] == grid.hparams["sweep"]


def test_sweep_is_a_training_option_every_fine_tuning_strategy_accepts():
    from tlbench.builtin.strategies import SPECS

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins" / "tlbench-peft"))
    import tlbench_peft

    registered = []
    tlbench_peft.register_strategies(register=registered.append)
    trained = [s for s in (*SPECS, *registered) if any(o.name == "lr" for o in s.options)]
    assert {"partial-unfreeze", "full-finetune", "lp-ft", "bitfit", "lora"} <= {
        s.name for s in trained
    }
    for spec in trained:
        option = next(o for o in spec.options if o.name == "sweep")
        assert option.default == "asha" and set(option.choices) == {"asha", "grid"}
