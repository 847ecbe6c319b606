"""Third-party failures cost exactly their own cells: a plugin that raises anywhere (a factory,
``check()``, ``run()``) or returns what the contract does not allow fails its cells with one line
naming the cell, the component and the plugin; the other cells run, nothing computed is lost,
and the exit code is 1. A ``UserError`` from ``check()`` still stops the run before training.

This module is also the small broken plugin the tests load (``--plugin test_isolation``), on top
of ``test_runner``'s cheap real one (digits, a fixed projection, a ridge probe).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import test_runner
from click.testing import CliRunner
from test_runner import Ridge

from tlbench import hookimpl
from tlbench.errors import UserError
from tlbench.specs import DatasetSpec, ModelSpec, Option, StrategySpec

PLUGIN = "test_isolation"
MISSING_WEIGHTS = "/nonexistent/tlbench-test/weights.pt"


# -- the broken plugin -------------------------------------------------------------------------


def broken_dataset(argument, options, context):
    raise ValueError("no images under /nowhere")


def missing_weights_model(argument, options, context):
    with open(MISSING_WEIGHTS, "rb"):  # the OSError a real loader meets
        pass


class CheckedRidge(Ridge):
    """The ridge probe with a ``check()``, so its cells are loaded in the check phase."""

    def check(self, ctx):
        if self.options["reject"]:
            raise UserError(f"{ctx.cell.label}: reject = true, so this cell cannot run")


def typo_strategy(options):
    return Ridge(options).fitt  # AttributeError: the typo a plugin author makes


class BadResult(Ridge):
    """Runs the real probe, then returns what ``returns`` says instead of a proper result."""

    def run(self, ctx):
        good = super().run(ctx)
        returns = self.options["returns"]
        if returns == "dict":
            return {"metrics": good.metrics, "hparams": good.hparams, "cost": good.cost}
        if returns == "no-top1":
            good.metrics = {"accuracy": good.metrics["top1"]}
        else:
            good.metrics = {"top1": json.loads(returns)}
        return good


RIDGE_OPTIONS = (
    Option("l2", float, default=[0.1, 10.0], minimum=0.0, sweep=True),
    Option("work", int, default=1, minimum=1),
    Option("fail_if_exists", str, default=""),
    Option("crash_if_exists", str, default=""),
    Option("touch", str, default=""),
)


@hookimpl
def register_models(register):
    register(ModelSpec("missing-weights", factory=missing_weights_model))


@hookimpl
def register_datasets(register):
    register(DatasetSpec("broken-data", factory=broken_dataset))


@hookimpl
def register_strategies(register):
    register(
        StrategySpec(
            "ridge-checked",
            factory=CheckedRidge,
            options=RIDGE_OPTIONS + (Option("reject", bool, default=False),),
        )
    )
    register(StrategySpec("typo", factory=typo_strategy, options=RIDGE_OPTIONS))
    register(
        StrategySpec(
            "bad-result",
            factory=BadResult,
            options=RIDGE_OPTIONS + (Option("returns", str, default="dict"),),
        )
    )


# -- helpers -----------------------------------------------------------------------------------


def suite(tmp_path: Path, models, datasets, strategies, seeds=(0,)) -> Path:
    """A suite file: every dataset capped at 300 training images; strategies are names or
    tables of options."""
    lines = [
        'name = "isolation"',
        f"seeds = {list(seeds)}",
        f"models = {json.dumps(models)}",
    ]
    for dataset in datasets:
        lines += ["[[datasets]]", f"name = {json.dumps(dataset)}", "train_size = 300"]
    for strategy in strategies:
        table = {"name": strategy} if isinstance(strategy, str) else strategy
        lines += ["[[strategies]]"] + [f"{k} = {json.dumps(v)}" for k, v in table.items()]
    path = tmp_path / "suite.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def run(tmp_path: Path, suite_path: Path, *extra):
    from tlbench.planning import RunRequest
    from tlbench.runner import run_suite
    from tlbench.testing import make_host

    host = make_host(test_runner, sys.modules[__name__], *extra)
    request = RunRequest(
        suite=suite_path,
        out_dir=tmp_path / "run",
        device="cpu",
        cache_dir=tmp_path / "cache",
        results_root=tmp_path / "results",
    )
    return run_suite(request, host=host), host


def by_cell(records) -> dict:
    return {(r["model"], r["dataset"], r["strategy"], r["seed"]): r for r in records}


def stored(outcome) -> dict:
    from tlbench.results import read_records

    return by_cell(read_records(outcome.run_dir / "cells.jsonl"))


def cli(*args: str, plugins_dir: Path | None = None):
    from tlbench.cli import cli as command

    extra = ["--plugins-dir", str(plugins_dir)] if plugins_dir else []
    return CliRunner().invoke(
        command, ["--plugin", "test_runner", "--plugin", PLUGIN, *extra, *args]
    )


# -- factories ---------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["ridge", "ridge-checked"], ids=["at-run", "at-check"])
def test_a_dataset_factory_that_raises_fails_only_its_cells(tmp_path, strategy):
    outcome, _ = run(
        tmp_path, suite(tmp_path, ["tiny-proj"], ["tiny-digits", "broken-data"], [strategy])
    )

    records = stored(outcome)
    healthy = records[("tiny-proj", "tiny-digits", strategy, 0)]
    broken = records[("tiny-proj", "broken-data", strategy, 0)]
    assert healthy["status"] == "ok" and healthy["metrics"]["top1"] > 60
    assert broken["status"] == "failed"
    assert broken["error"]["type"] == "ValueError"
    assert broken["error"]["message"] == (
        f"cell tiny-proj x broken-data x {strategy} (seed 0): dataset 'broken-data' "
        "(plugin 'test_isolation') raised ValueError in its factory: no images under /nowhere"
    )
    assert outcome.exit_code == 1 and outcome.ran == 2
    log = (outcome.run_dir / "run.log").read_text()
    assert f"traceback of cell tiny-proj x broken-data x {strategy} (seed 0)" in log
    assert "in broken_dataset" in log and "ValueError: no images under /nowhere" in log


def test_a_model_factory_that_cannot_find_its_weights_fails_only_its_cells(tmp_path):
    models = ["missing-weights", "tiny-proj"]
    outcome, _ = run(tmp_path, suite(tmp_path, models, ["tiny-digits"], ["ridge-checked"], (0, 1)))

    records = stored(outcome)
    assert {k[0]: r["status"] for k, r in records.items()} == {
        "missing-weights": "failed",
        "tiny-proj": "ok",
    }
    assert len(records) == 4 and outcome.exit_code == 1
    failed = records[("missing-weights", "tiny-digits", "ridge-checked", 1)]
    assert failed["error"]["type"] == "FileNotFoundError"
    assert failed["error"]["message"] == (
        "cell missing-weights x tiny-digits x ridge-checked (seed 1): model 'missing-weights' "
        "(plugin 'test_isolation') raised FileNotFoundError in its factory: "
        f"[Errno 2] No such file or directory: '{MISSING_WEIGHTS}'"
    )


def test_a_strategy_factory_with_a_typo_fails_its_cells_and_the_others_train(tmp_path):
    outcome, _ = run(tmp_path, suite(tmp_path, ["tiny-proj"], ["tiny-digits"], ["typo", "ridge"]))

    records = stored(outcome)
    assert records[("tiny-proj", "tiny-digits", "ridge", 0)]["status"] == "ok"
    typo = records[("tiny-proj", "tiny-digits", "typo", 0)]
    assert typo["status"] == "failed" and typo["error"]["type"] == "AttributeError"
    assert typo["error"]["message"] == (
        "cell tiny-proj x tiny-digits x typo (seed 0): strategy 'typo' (plugin 'test_isolation') "
        "raised AttributeError in its factory: 'Ridge' object has no attribute 'fitt'"
    )
    assert outcome.exit_code == 1


# -- results -----------------------------------------------------------------------------------


EXPECTED_TOP1 = (
    "expected metrics['top1'], the test top-1 accuracy in percent: a finite number in [0, 100]"
)


@pytest.mark.parametrize(
    ("returns", "problem"),
    [
        ("dict", "returned a dict from run(); expected a tlbench.api.StrategyResult"),
        ("no-top1", f"returned metrics without 'top1'; {EXPECTED_TOP1}"),
        ("150.0", f"returned metrics['top1'] = 150.0; {EXPECTED_TOP1}"),
        ('"96.5"', f"returned metrics['top1'] = '96.5'; {EXPECTED_TOP1}"),
        ("true", f"returned metrics['top1'] = True; {EXPECTED_TOP1}"),
        ("NaN", f"returned metrics['top1'] = nan; {EXPECTED_TOP1}"),
    ],
    ids=["dict", "no-top1", "above-100", "string", "bool", "nan"],
)
def test_a_result_that_breaks_the_contract_fails_its_cell_saying_what_was_expected(
    tmp_path, returns, problem
):
    strategies = ["ridge", {"name": "bad-result", "returns": returns}]
    outcome, _ = run(tmp_path, suite(tmp_path, ["tiny-proj"], ["tiny-digits"], strategies))

    records = stored(outcome)
    assert records[("tiny-proj", "tiny-digits", "ridge", 0)]["status"] == "ok"
    bad = records[("tiny-proj", "tiny-digits", "bad-result", 0)]
    assert bad["status"] == "failed" and bad["metrics"] == {}
    assert bad["error"]["type"] == "ContractError"
    assert bad["error"]["message"] == (
        "cell tiny-proj x tiny-digits x bad-result (seed 0): strategy 'bad-result' "
        f"(plugin 'test_isolation') {problem}"
    )
    assert outcome.exit_code == 1


def test_numpy_and_torch_scalars_in_a_result_are_stored_as_numbers():
    import numpy as np
    import torch

    from tlbench.cell import result_fields
    from tlbench.components import StrategyResult

    fields = result_fields(
        StrategyResult(
            metrics={"top1": np.float32(97.5), "val_top1": torch.tensor(96.0)},
            hparams={"l2": np.float64(0.1), "layers": (1, 2)},
            cost={"trainable_params": np.int64(650)},
        )
    )
    assert fields["metrics"] == {"top1": 97.5, "val_top1": 96.0}
    assert fields["hparams"] == {"l2": 0.1, "layers": [1, 2]}
    assert fields["cost"] == {"trainable_params": 650} and fields["status"] == "ok"
    assert not math.isnan(fields["metrics"]["top1"])


# -- check() -----------------------------------------------------------------------------------


def test_a_user_error_from_check_stops_the_run_before_training_naming_the_cells(tmp_path):
    ran = tmp_path / "a-cell-ran"
    strategies = [
        {"name": "ridge", "touch": str(ran)},
        {"name": "ridge-checked", "reject": True},
    ]
    path = suite(tmp_path, ["tiny-proj"], ["tiny-digits"], strategies, seeds=(0, 1))

    result = cli("run", str(path), "--out", str(tmp_path / "run"), "-q")

    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines() == [
        "error: cell tiny-proj x tiny-digits x ridge-checked (seed 0) (and 1 more cells): "
        "strategy 'ridge-checked' (plugin 'test_isolation'): reject = true, so this cell cannot run"
    ]
    assert not ran.exists() and not (tmp_path / "run" / "cells.jsonl").exists()


# -- the command line --------------------------------------------------------------------------


def test_the_command_line_reports_failed_cells_and_exits_1_with_every_record_kept(tmp_path):
    path = suite(tmp_path, ["tiny-proj"], ["tiny-digits", "broken-data"], ["ridge-checked"])

    result = cli("run", str(path), "--out", str(tmp_path / "run"), "--json")

    assert result.exit_code == 1
    records = by_cell(json.loads(result.stdout))  # stdout is JSON and nothing else
    assert records[("tiny-proj", "tiny-digits", "ridge-checked", 0)]["status"] == "ok"
    assert records[("tiny-proj", "broken-data", "ridge-checked", 0)]["status"] == "failed"
    stderr = " ".join(result.stderr.split())  # the table wraps at the terminal's width
    assert "Traceback" not in stderr
    assert "dataset 'broken-data' (plugin 'test_isolation') raised ValueError" in stderr


OBSERVERS = """
import json, os
from tlbench import hookimpl

@hookimpl
def on_cell_finished(record):
    {body}
"""


def test_every_observer_is_called_when_one_raises_and_its_failure_is_shown_at_the_end(tmp_path):
    seen = tmp_path / "seen.jsonl"
    plugins = tmp_path / "observers"
    plugins.mkdir()
    (plugins / "a_broken_observer.py").write_text(
        OBSERVERS.format(body="raise RuntimeError('dashboard unreachable')")
    )
    (plugins / "b_logger.py").write_text(
        OBSERVERS.format(
            body=f"open({str(seen)!r}, 'a').write(json.dumps(record['status']) + os.linesep)"
        )
    )
    path = suite(tmp_path, ["tiny-proj"], ["tiny-digits", "broken-data"], ["ridge"])

    result = cli("run", str(path), "--out", str(tmp_path / "run"), plugins_dir=plugins)

    assert result.exit_code == 1, result.output  # the failed cell, not the observer
    assert sorted(json.loads(line) for line in seen.read_text().splitlines()) == ["failed", "ok"]
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == [
        "warning: plugin 'a_broken_observer': observer on_cell_finished failed on 2 records: "
        "RuntimeError: dashboard unreachable"
    ]
    assert result.stderr.rstrip().endswith(warnings[0]), "shown at the end of the run"
