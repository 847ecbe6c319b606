"""Third-party failures cost exactly their own cells: a plugin that raises anywhere (a factory,
``check()``, ``run()``) or returns what the contract does not allow fails its cells with one line
naming the cell, the component and the plugin; the other cells run, nothing computed is lost,
and the exit code is 1. A ``UserError`` from ``check()`` fails its cells before training, and a
plugin that calls ``sys.exit()`` or raises any ``BaseException`` fails its cell like any other.
What a plugin returns is checked where it returns it and blamed on it: a dataset's labels and
images, a model's feature width, a strategy's top-1 against its own predictions.

This module is also the small broken plugin the tests load (``--plugin test_isolation``), on top
of ``test_runner``'s cheap real one (digits, a fixed projection, a ridge probe).
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import pytest
import test_runner
from click.testing import CliRunner
from test_runner import Ridge

from tlbench import hookimpl
from tlbench.errors import UserError
from tlbench.specs import DatasetSpec, EstimatorSpec, ModelSpec, Option, StrategySpec

PLUGIN = "test_isolation"
MISSING_WEIGHTS = "/nonexistent/tlbench-test/weights.pt"


# -- the broken plugin -------------------------------------------------------------------------


def broken_dataset(argument, options, context):
    raise ValueError("no images under /nowhere")


def missing_weights_model(argument, options, context):
    with open(MISSING_WEIGHTS, "rb"):  # the OSError a real loader meets
        pass


def damaged_digits(argument, options, context):
    """tiny-digits with one thing wrong, as ``options['damage']`` says."""
    import dataclasses

    import numpy as np

    target = test_runner.tiny_digits(argument, options, context)
    images, labels = target.train.images, target.train.labels.copy()
    damage = options["damage"]
    if damage == "label-10":
        labels[5] = 10
    elif damage == "negative-label":
        labels[7] = -1
    elif damage == "short-labels":
        labels = labels[:-3]
    elif damage == "float-images":
        images = images.astype(np.float32) / 255
    elif damage == "float-labels":
        labels = labels.astype(np.float64)
    train = dataclasses.replace(target.train, images=images, labels=labels)
    return dataclasses.replace(target, train=train)


def wide_projection(argument, options, context):
    """tiny-proj whose headless build returns what ``options['features']`` says."""
    import dataclasses

    from torch import nn

    source = test_runner.tiny_projection(argument, {"width": 16}, context)
    build = source.build

    def odd_build(num_classes, in_chans=3, seed=0):
        model = build(num_classes, in_chans, seed)
        if num_classes:
            return model
        if options["features"] == "mismatch":
            model.num_features = 32  # says 32, returns 16
        elif options["features"] == "3d":
            model.append(nn.Unflatten(1, (4, 4)))
        return model

    classes = tuple(f"c{i}" for i in range(16)) if options["features"] == "logits" else None
    return dataclasses.replace(source, build=odd_build, source_classes=classes)


class Exits(Ridge):
    """The ridge probe that ends its run() with what ``options['raises']`` names."""

    def run(self, ctx):
        raises = self.options["raises"]
        if raises == "exit-0":
            sys.exit(0)
        if raises == "exit-3":
            sys.exit(3)
        if raises == "keyboard":
            raise KeyboardInterrupt
        if raises == "generator-exit":
            raise GeneratorExit
        raise type("Custom", (BaseException,), {})("a BaseException of its own")


class RaisingEstimator:
    needs_source_head = False

    def score(self, features, labels, source_logits):
        raise RuntimeError("k must be smaller than the class size")


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
    register(
        ModelSpec(
            "odd-proj", factory=wide_projection, options=(Option("features", str, default=""),)
        )
    )


@hookimpl
def register_datasets(register):
    register(DatasetSpec("broken-data", factory=broken_dataset))
    register(
        DatasetSpec(
            "damaged-digits", factory=damaged_digits, options=(Option("damage", str, default=""),)
        )
    )


@hookimpl
def register_estimators(register):
    register(EstimatorSpec("raising", factory=lambda options: RaisingEstimator()))


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
            "exits", factory=Exits, options=RIDGE_OPTIONS + (Option("raises", str, default=""),)
        )
    )
    register(
        StrategySpec(
            "bad-result",
            factory=BadResult,
            options=RIDGE_OPTIONS + (Option("returns", str, default="dict"),),
        )
    )


# -- helpers -----------------------------------------------------------------------------------


def suite(tmp_path: Path, models, datasets, strategies, seeds=(0,)) -> Path:
    """A suite file: every dataset capped at 300 training images; models, datasets and
    strategies are names or tables of options."""
    lines = [
        'name = "isolation"',
        f"seeds = {list(seeds)}",
    ]
    for model in models:
        table = {"name": model} if isinstance(model, str) else model
        lines += ["[[models]]"] + [f"{k} = {json.dumps(v)}" for k, v in table.items()]
    for dataset in datasets:
        table = {"name": dataset} if isinstance(dataset, str) else dataset
        lines += ["[[datasets]]"] + [f"{k} = {json.dumps(v)}" for k, v in table.items()]
        lines.append("train_size = 300")
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


def test_a_top1_that_disagrees_with_its_own_predictions_breaks_the_contract():
    import numpy as np

    from tlbench.cell import result_fields
    from tlbench.components import StrategyResult
    from tlbench.contracts import ContractError
    from tlbench.predictions import Predictions

    label = np.arange(100) % 10
    pred = np.where(np.arange(100) < 19, label, (label + 1) % 10)  # 19 of 100 right
    predictions = Predictions(
        np.arange(100), label, pred, np.full(100, 0.5, dtype=np.float16), "split"
    )

    def fields(top1, test_size=100):
        result = StrategyResult({"top1": top1}, {}, {}, predictions=predictions)
        return result_fields(result, test_size=test_size)

    assert fields(19.0)["metrics"] == {"top1": 19.0}
    with pytest.raises(ContractError, match=r"top1'\] = 0.19, but its predictions give 19.00% "):
        fields(0.19)
    with pytest.raises(ContractError, match="a fraction"):
        fields(0.19)
    with pytest.raises(
        ContractError, match="predictions for 100 test items; the test split has 90"
    ):
        fields(19.0, test_size=90)


# -- what a dataset or a model returns ----------------------------------------------------------


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        ("label-10", "train label 10 at position 5 is outside 0..9 (10 class names)"),
        ("negative-label", "train label -1 at position 7 is outside 0..9 (10 class names)"),
        ("short-labels", "train has 1797 images and 1794 labels; expected one label per image"),
        ("float-images", "train images have dtype float32; expected uint8 (0..255)"),
        ("float-labels", "train labels have dtype float64; expected integers in 0..9"),
    ],
)
def test_a_dataset_that_breaks_its_contract_is_blamed_for_it_and_the_others_run(
    tmp_path, damage, problem
):
    datasets = ["tiny-digits", {"name": "damaged-digits", "damage": damage}]
    outcome, _ = run(tmp_path, suite(tmp_path, ["tiny-proj"], datasets, ["ridge"]))

    records = stored(outcome)
    assert records[("tiny-proj", "tiny-digits", "ridge", 0)]["status"] == "ok"
    bad = records[("tiny-proj", "damaged-digits", "ridge", 0)]
    assert bad["status"] == "failed" and bad["error"]["type"] == "ContractError"
    assert bad["error"]["message"].startswith(
        "cell tiny-proj x damaged-digits x ridge (seed 0): dataset 'damaged-digits' "
        f"(plugin 'test_isolation'): {problem}"
    )
    assert outcome.exit_code == 1


@pytest.mark.parametrize(
    ("features", "problem"),
    [
        ("mismatch", "returned shape (N, 16); expected features (N, 32) with no classifier"),
        ("3d", "returned shape (N, 4, 4); expected features (N, num_features) with no classifier"),
    ],
)
def test_a_model_with_the_wrong_feature_width_is_blamed_not_the_strategy(
    tmp_path, features, problem
):
    models = ["tiny-proj", {"name": "odd-proj", "features": features}]
    outcome, _ = run(tmp_path, suite(tmp_path, models, ["tiny-digits"], ["ridge"]))

    records = stored(outcome)
    assert records[("tiny-proj", "tiny-digits", "ridge", 0)]["status"] == "ok"
    bad = records[("odd-proj", "tiny-digits", "ridge", 0)]
    assert bad["status"] == "failed" and bad["error"]["type"] == "ContractError"
    message = re.sub(r"shape \(\d+, ", "shape (N, ", bad["error"]["message"])  # N: the batch
    assert message == (
        "cell odd-proj x tiny-digits x ridge (seed 0): model 'odd-proj' (plugin 'test_isolation') "
        f"build(0) made a module whose forward {problem} (end the body with pooling and "
        "flattening)"
    )


def test_features_as_wide_as_the_source_classes_are_warned_about_as_logits(tmp_path, caplog):
    models = [{"name": "odd-proj", "features": "logits"}]
    outcome, _ = run(tmp_path, suite(tmp_path, models, ["tiny-digits"], ["ridge"]))

    assert outcome.exit_code == 0
    assert [m for m in caplog.messages if "logits" in m] == [
        "model 'odd-proj' (plugin 'test_isolation'): build(0) returns 16 columns, the "
        "source's class count: these look like classifier logits, not features (remove or "
        "replace the classifier when num_classes is 0)"
    ]


# -- exits and interrupts from plugin code ------------------------------------------------------


@pytest.mark.parametrize(
    ("raises", "error_type", "says"),
    [
        ("exit-0", "SystemExit", "called sys.exit(0) in run(); a plugin cannot end the run"),
        ("exit-3", "SystemExit", "called sys.exit(3) in run(); a plugin cannot end the run"),
        ("keyboard", "KeyboardInterrupt", "raised KeyboardInterrupt in run()"),
        ("generator-exit", "GeneratorExit", "raised GeneratorExit in run()"),
        ("custom", "Custom", "raised Custom in run(): a BaseException of its own"),
    ],
)
def test_a_plugin_that_exits_or_raises_a_base_exception_fails_only_its_cell(
    tmp_path, raises, error_type, says
):
    strategies = [{"name": "exits", "raises": raises}, "ridge"]
    path = suite(tmp_path, ["tiny-proj"], ["tiny-digits"], strategies)

    result = cli("run", str(path), "--out", str(tmp_path / "run"), "--json")

    assert result.exit_code == 1, result.output
    records = by_cell(json.loads(result.stdout))
    assert records[("tiny-proj", "tiny-digits", "ridge", 0)]["status"] == "ok"
    bad = records[("tiny-proj", "tiny-digits", "exits", 0)]
    assert bad["status"] == "failed" and bad["error"]["type"] == error_type
    assert bad["error"]["message"] == (
        f"cell tiny-proj x tiny-digits x exits (seed 0): strategy 'exits' "
        f"(plugin 'test_isolation') {says}"
    )


# -- estimators --------------------------------------------------------------------------------


def test_a_failed_estimate_is_shown_naming_its_estimator_and_plugin_and_exits_1(tmp_path):
    path = suite(tmp_path, ["tiny-proj"], ["tiny-digits"], ["ridge"])
    path.write_text('estimators = ["raising", "logme"]\n' + path.read_text())

    result = cli("run", str(path), "--out", str(tmp_path / "run"), "--json")

    assert result.exit_code == 1, result.output
    assert [r["status"] for r in json.loads(result.stdout)] == ["ok"]
    line = (
        "estimate failed: estimate tiny-proj x tiny-digits (seed 0): estimator 'raising' "
        "(plugin 'test_isolation') raised RuntimeError in score(): k must be smaller than the "
        "class size"
    )
    stderr = " ".join(result.stderr.split())  # the terminal wraps long lines
    assert stderr.count(line) == 2  # when it failed, and again after the table
    estimates = (tmp_path / "run" / "estimates.jsonl").read_text().splitlines()
    assert sorted(json.loads(e)["status"] for e in estimates) == ["failed", "ok"]


# -- check() -----------------------------------------------------------------------------------


def test_a_user_error_from_check_fails_its_cells_before_training_and_the_others_run(tmp_path):
    strategies = ["ridge", {"name": "ridge-checked", "reject": True}]
    path = suite(tmp_path, ["tiny-proj"], ["tiny-digits"], strategies, seeds=(0, 1))

    result = cli("run", str(path), "--out", str(tmp_path / "run"), "--json")

    assert result.exit_code == 1, result.output
    records = by_cell(json.loads(result.stdout))
    assert {k: r["status"] for k, r in records.items()} == {
        ("tiny-proj", "tiny-digits", "ridge", 0): "ok",
        ("tiny-proj", "tiny-digits", "ridge", 1): "ok",
        ("tiny-proj", "tiny-digits", "ridge-checked", 0): "failed",
        ("tiny-proj", "tiny-digits", "ridge-checked", 1): "failed",
    }
    rejected = records[("tiny-proj", "tiny-digits", "ridge-checked", 1)]
    assert rejected["error"]["type"] == "UserError"
    assert rejected["error"]["message"] == (
        "cell tiny-proj x tiny-digits x ridge-checked (seed 1): strategy 'ridge-checked' "
        "(plugin 'test_isolation'): reject = true, so this cell cannot run"
    )
    assert "metrics" not in rejected or rejected["metrics"] == {}


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


# -- relative paths ------------------------------------------------------------------------------


def path_model(argument, options, context):
    """tiny-proj that refuses to build unless its ``path`` option names an existing file, and
    says where the suite is."""
    if not Path(options["path"]).is_file():
        raise FileNotFoundError(options["path"])
    (Path(options["path"]).parent / "suite_dir.txt").write_text(str(context.suite_dir))
    return test_runner.tiny_projection(argument, {"width": 16}, context)


@hookimpl(specname="register_models")
def register_path_model(register):
    register(ModelSpec("file-proj", factory=path_model, options=(Option("path", str),)))


def test_a_relative_path_in_a_suite_resolves_against_the_suite_files_directory(
    tmp_path, monkeypatch
):
    lab = tmp_path / "lab"
    (lab / "weights").mkdir(parents=True)
    (lab / "weights" / "proj.pt").write_bytes(b"weights")
    path = suite(
        lab, [{"name": "file-proj", "path": "weights/proj.pt"}], ["tiny-digits"], ["ridge"]
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    outcome, _ = run(tmp_path, path)

    record = stored(outcome)[("file-proj", "tiny-digits", "ridge", 0)]
    assert record["status"] == "ok", record["error"]
    assert record["options"]["model"]["path"] == "weights/proj.pt"  # as written
    assert (lab / "weights" / "suite_dir.txt").read_text() == str(lab.resolve())


# -- a cache that cannot go stale silently ---------------------------------------------------------


def _entries_of(cache_dir: Path, model: str) -> dict[str, float]:
    """meta file -> its creation time, for every cache entry computed from ``model``."""
    found = {}
    for meta in cache_dir.rglob("*.json"):
        text = meta.read_text()
        if f"|model {model}|" in text:
            found[str(meta)] = json.loads(text)["created"]
    return found


def test_cache_entries_name_their_model_and_can_be_cleared_or_refreshed_by_it(tmp_path):
    path = suite(tmp_path, ["tiny-proj"], ["tiny-digits"], ["linear-probe"])
    run(tmp_path, path)
    cache_dir = tmp_path / "cache"
    first = _entries_of(cache_dir, "tiny-proj")
    assert first, "the probe's features are cached, keyed with the model's name"
    assert all("plugin test_runner==" in Path(m).read_text() for m in first)

    from tlbench.planning import RunRequest
    from tlbench.runner import run_suite
    from tlbench.testing import make_host

    request = RunRequest(
        suite=path,
        out_dir=tmp_path / "refreshed",
        device="cpu",
        cache_dir=cache_dir,
        results_root=tmp_path / "results",
        refresh=True,
    )
    run_suite(request, host=make_host(test_runner, sys.modules[__name__]))
    second = _entries_of(cache_dir, "tiny-proj")
    assert set(second) == set(first) and all(second[m] > first[m] for m in first)

    result = cli(
        "cache", "clear", "--component", "tiny-proj", "--cache-dir", str(cache_dir), "--yes"
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == f"cleared {len(first)} entries computed from model 'tiny-proj'\n"
    assert _entries_of(cache_dir, "tiny-proj") == {}


def test_the_end_of_run_summary_keeps_a_long_failure_message_whole(tmp_path):
    marker = tmp_path / ("a-deliberately-long-file-name-" * 8 + "end")
    marker.touch()
    path = suite(
        tmp_path, ["tiny-proj"], ["tiny-digits"], [{"name": "ridge", "fail_if_exists": str(marker)}]
    )

    result = cli("run", str(path), "--out", str(tmp_path / "run"))

    assert result.exit_code == 1
    message = f"RuntimeError in run(): told to fail: {marker} exists"
    assert len(message) > 200
    # Piped, the summary is csv on stdout and each failure's message is whole on stderr (a
    # terminal's table wraps it, and may break the path anywhere); nothing of it is cut.
    assert "tiny-proj,tiny-digits,ridge" in result.stdout
    assert message.replace(" ", "") in "".join(result.stderr.split())


def test_a_plugin_that_exits_fails_only_its_cell_under_the_process_executor_too(tmp_path):
    strategies = [{"name": "exits", "raises": "exit-0"}, "ridge"]
    path = suite(tmp_path, ["tiny-proj"], ["tiny-digits"], strategies)

    result = cli(
        "run", str(path), "--out", str(tmp_path / "run"), "--json", "--executor", "process"
    )

    assert result.exit_code == 1, result.output
    records = by_cell(json.loads(result.stdout))
    assert records[("tiny-proj", "tiny-digits", "ridge", 0)]["status"] == "ok"
    bad = records[("tiny-proj", "tiny-digits", "exits", 0)]
    assert bad["status"] == "failed" and bad["error"]["type"] == "SystemExit"
