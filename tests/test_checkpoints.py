"""Checkpoints inside a cell: a fine-tuning cell killed mid-training resumes every candidate from
its last finished epoch (checkpoints under the run directory) and ends with the record an
uninterrupted run gives on CPU; the checkpoints are gone once the cell is done. Real digits at
32 px, the head of efficientnet-lite0 on cached features, a few epochs."""

from __future__ import annotations

import pytest
import torch

from tlbench.cache import Cache
from tlbench.components import Cell, CellContext
from tlbench.specs import resolve_options

# Two candidates, a cut after 2 epochs, the winner to 4, then the refit on train+val.
OPTIONS = {"k": 0, "lr": [1e-3, 3e-2], "epochs": 4, "grace_epochs": 2, "batch_size": 32}


class Killed(Exception):
    """Stands for the worker being killed."""


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return Cache(tmp_path_factory.mktemp("checkpoints"))


def _run(lite0, digits_data, cache, run_dir, given=OPTIONS):
    from tlbench.builtin.strategies import SPECS

    spec = next(s for s in SPECS if s.name == "partial-unfreeze")
    options = resolve_options(spec.options, given)
    cell = Cell(
        "t", lite0.name, "digits", spec.name, 0, lite0.name, "digits", spec.name, {}, {}, options
    )
    ctx = CellContext(
        cell=cell,
        source=lite0,
        data=digits_data,
        device=torch.device("cpu"),
        cache=cache,
        seed=0,
        log=lambda m: None,
        run_dir=run_dir,
    )
    return spec.load_factory()(options).run(ctx)


def _comparable(result):
    hparams = dict(result.hparams)
    hparams["tuning"] = {k: v for k, v in hparams["tuning"].items() if k != "train_s"}
    return result.metrics, hparams


def test_a_killed_cell_resumes_from_its_checkpoints_with_the_uninterrupted_record(
    lite0, digits_data, cache, tmp_path, monkeypatch
):
    import tlbench.engine.training as training

    uninterrupted = _run(lite0, digits_data, cache, None)

    evaluations, real_evaluate = [], training.evaluate

    def evaluate(*args, **kwargs):
        evaluations.append(1)
        if len(evaluations) == 5:  # 2 + 2 epochs up to the cut, then the winner's third
            raise Killed
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(training, "evaluate", evaluate)
    run_dir = tmp_path / "run"
    with pytest.raises(Killed):
        _run(lite0, digits_data, cache, run_dir)
    saved = sorted(p.name for p in (run_dir / "checkpoints").rglob("*.pt"))
    assert saved == ["search-0.pt", "search-1.pt"]

    evaluations.clear()
    resumed = _run(lite0, digits_data, cache, run_dir)
    assert _comparable(resumed) == _comparable(uninterrupted)
    # Only the winner's epochs 3 and 4 were trained (and validated) again.
    assert len(evaluations) == 2
    assert not (run_dir / "checkpoints").exists(), "checkpoints are removed once the cell is done"


@pytest.mark.parametrize("refit", [True, False])
def test_a_cell_killed_after_training_resumes_without_training_again(
    lite0, digits_data, cache, tmp_path, monkeypatch, refit
):
    import tlbench.engine.training as training

    options = OPTIONS | {"refit": refit}
    uninterrupted = _run(lite0, digits_data, cache, None, options)

    real_convergence, evaluations, real_evaluate = training.convergence, [], training.evaluate

    def killed_after_testing(*args, **kwargs):
        raise Killed

    # The record is written after the test predictions: a kill between the two.
    monkeypatch.setattr(training, "convergence", killed_after_testing)
    run_dir = tmp_path / "run"
    with pytest.raises(Killed):
        _run(lite0, digits_data, cache, run_dir, options)
    saved = sorted(p.name for p in (run_dir / "checkpoints").rglob("*.pt"))
    assert saved == sorted(["search-0.pt", "search-1.pt"] + (["refit.pt"] if refit else []))

    monkeypatch.setattr(training, "convergence", real_convergence)
    monkeypatch.setattr(
        training, "evaluate", lambda *a, **k: evaluations.append(1) or real_evaluate(*a, **k)
    )
    resumed = _run(lite0, digits_data, cache, run_dir, options)
    assert _comparable(resumed) == _comparable(uninterrupted)
    assert evaluations == [], "every epoch came from a checkpoint"
    assert not (run_dir / "checkpoints").exists()
