"""The runner: every cell runs, is recorded once, and failures, selections and dry runs behave.

This module is also the cheap *real* plugin the runner, resume and executor tests load by module
name (``--plugin test_runner``, so worker processes can import it too): scikit-learn's digits as
a target, a fixed random projection as the "pretrained" source, and a ridge-regression classifier
whose regularisation is chosen on the validation split. It goes through the real
``tlbench.data.prepare``, so cells cost milliseconds but compute real accuracies.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import PLUGIN, cli, request, tiny_host, tiny_suite

from tlbench import hookimpl
from tlbench.specs import DatasetSpec, ModelSpec, Option, StrategySpec

# -- the plugin ------------------------------------------------------------------------------


def tiny_digits(argument, options, context):
    import hashlib

    from tlbench.components import TargetData
    from tlbench.testing import load_digits_images

    images = load_digits_images()
    digest = hashlib.sha256(images.images.tobytes() + images.labels.tobytes()).hexdigest()
    return TargetData(
        "tiny-digits",
        tuple(str(d) for d in range(10)),
        images,
        None,
        digest,
        {"source": "sklearn digits"},
    )


def tiny_projection(argument, options, context):
    import torch
    from torch import nn

    from tlbench.components import SourceModel

    width = options["width"]

    def build(num_classes: int, in_chans: int, seed: int) -> nn.Module:
        body = nn.Linear(in_chans * 64, width)
        with torch.no_grad():  # the "pretrained" weights: the same for every cell and process
            body.weight.copy_(
                torch.randn(width, in_chans * 64, generator=torch.Generator().manual_seed(1234)) / 8
            )
            body.bias.zero_()
        layers = [nn.Flatten(), body, nn.Tanh()]
        if num_classes:
            torch.manual_seed(seed)
            layers.append(nn.Linear(width, num_classes))
        return nn.Sequential(*layers)

    config = {
        "input_size": (3, 8, 8),
        "interpolation": "bilinear",
        "mean": (0.5, 0.5, 0.5),
        "std": (0.5, 0.5, 0.5),
        "crop_pct": 1.0,
        "crop_mode": "center",
    }
    return SourceModel(
        "tiny-proj",
        "tiny-proj",
        "random-projection",
        f"tiny-proj:1234:{width}",
        config,
        build,
        card={"arch": "tiny-proj"},
    )


class Ridge:
    """One-vs-rest ridge regression on frozen features; l2 chosen on val, refit on trainval."""

    def __init__(self, options):
        self.options = options

    def run(self, ctx):
        from tlbench.components import StrategyResult

        if self.options["fail_if_exists"] and os.path.exists(self.options["fail_if_exists"]):
            raise RuntimeError(f"told to fail: {self.options['fail_if_exists']} exists")
        if self.options["touch"]:
            Path(self.options["touch"]).touch()
        if self.options["crash_if_exists"] and os.path.exists(self.options["crash_if_exists"]):
            os._exit(3)  # a worker dying mid-cell (segfault, OOM killer)
        for _ in range(self.options["work"]):
            chosen, val_top1, top1 = self._fit(ctx)
        width = ctx.source.build(0, ctx.data.in_chans, ctx.seed)[1].out_features
        cost = {
            "trainable_params": (width + 1) * ctx.data.num_classes,
            "total_params": (width + 1) * ctx.data.num_classes
            + width * (ctx.data.in_chans * 64 + 1),
        }
        return StrategyResult(
            metrics={"top1": top1, "val_top1": val_top1}, hparams={"l2": chosen}, cost=cost
        )

    def _fit(self, ctx):
        feats = {split: _features(ctx, split) for split in ("train", "val", "trainval", "test")}
        scored = [
            (_accuracy(_solve(*feats["train"], ctx.data.num_classes, l2), *feats["val"]), l2)
            for l2 in self.options["l2"]
        ]
        val_top1, chosen = max(scored, key=lambda item: (item[0], -item[1]))
        weights = _solve(*feats["trainval"], ctx.data.num_classes, chosen)
        return chosen, val_top1, _accuracy(weights, *feats["test"])


def _features(ctx, split):
    import torch

    model = ctx.source.build(0, ctx.data.in_chans, ctx.seed).eval()
    with torch.no_grad():
        pairs = [(model(x).double(), y) for x, y in ctx.data.batches(split, 512)]
    x = torch.cat([p[0] for p in pairs])
    return torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1), torch.cat([p[1] for p in pairs])


def _solve(x, y, classes, l2):
    import torch

    targets = torch.nn.functional.one_hot(y, classes).double()
    return torch.linalg.solve(x.T @ x + l2 * torch.eye(x.shape[1], dtype=x.dtype), x.T @ targets)


def _accuracy(weights, x, y) -> float:
    return round(100.0 * float(((x @ weights).argmax(1) == y).double().mean()), 4)


@hookimpl
def register_models(register):
    register(
        ModelSpec(
            "tiny-proj",
            factory=tiny_projection,
            description="fixed random projection (tests)",
            options=(Option("width", int, default=64, minimum=1),),
        )
    )


@hookimpl
def register_datasets(register):
    register(
        DatasetSpec("tiny-digits", factory=tiny_digits, description="scikit-learn digits (tests)")
    )


@hookimpl
def register_strategies(register):
    options = (
        Option("l2", float, default=[0.1, 10.0], minimum=0.0, sweep=True),
        Option(
            "work",
            int,
            default=1,
            minimum=1,
            help="repeat the fit (slower cells for interrupt tests)",
        ),
        Option("fail_if_exists", str, default=""),
        Option("crash_if_exists", str, default=""),
        Option("touch", str, default="", help="create this file when a cell runs"),
    )
    register(
        StrategySpec(
            "ridge",
            factory=Ridge,
            description="ridge classifier on frozen features (tests)",
            options=options,
        )
    )


# -- the tests -----------------------------------------------------------------------------------


def test_every_cell_runs_once_and_records_real_accuracy(tmp_path):
    from tlbench.results import read_records
    from tlbench.runner import run_suite

    outcome = run_suite(request(tmp_path, tiny_suite(tmp_path / "s.toml")), tiny_host())
    assert outcome.exit_code == 0 and outcome.ran == 4
    records = read_records(outcome.run_dir / "cells.jsonl")
    assert len({r["config_hash"] for r in records}) == len(records) == 4
    for record in records:
        assert record["status"] == "ok"
        assert record["metrics"]["top1"] > 60, "a ridge probe on digits is far above chance (10%)"
        assert record["hparams"]["l2"] in (0.1, 10.0, 100.0, 1000.0)
        assert record["worker"]["executor"] == "local" and record["worker"]["pid"] == os.getpid()
        assert record["split"]["seed"] == record["seed"]
    env = json.loads((outcome.run_dir / "env.json").read_text())
    assert env["executor"]["kind"] == "local" and env["suite_name"] == "tiny"


def test_a_failing_cell_is_recorded_with_its_traceback_and_the_rest_still_run(tmp_path):
    from tlbench.runner import run_suite

    flag = tmp_path / "fail"
    flag.write_text("")
    suite = tiny_suite(tmp_path / "s.toml", seeds=(0,), fail_if_exists=str(flag))
    outcome = run_suite(request(tmp_path, suite), tiny_host())
    assert outcome.exit_code == 1
    assert [r["status"] for r in outcome.records] == ["failed", "failed"]
    assert "told to fail" in outcome.records[0]["error"]["traceback"]
    log = (outcome.run_dir / "run.log").read_text()
    assert (
        "traceback of cell tiny-proj x tiny-digits x ridge (seed 0)" in log
        and "RuntimeError: told to fail" in log
    )

    again = run_suite(request(tmp_path, suite, resume=outcome.run_dir), tiny_host())
    assert again.ran == 0 and again.skipped == 2, (
        "without --retry-failed, failures count as recorded"
    )
    flag.unlink()
    retried = run_suite(
        request(tmp_path, suite, resume=outcome.run_dir, retry_failed=True), tiny_host()
    )
    assert retried.ran == 2 and retried.exit_code == 0
    assert [r["status"] for r in retried.records] == ["ok", "ok"]


def test_resume_skips_finished_cells_and_runs_only_the_rest(tmp_path):
    from tlbench.planning import Selection
    from tlbench.runner import run_suite

    suite = tiny_suite(tmp_path / "s.toml")
    first = run_suite(request(tmp_path, suite, selection=Selection(seeds=(1,))), tiny_host())
    assert first.ran == 2
    second = run_suite(request(tmp_path, suite), tiny_host())  # an existing --out is resumed
    assert (second.ran, second.skipped) == (2, 2)
    assert {r["seed"] for r in second.records} == {0, 1} and len(second.records) == 4
    env = json.loads((first.run_dir / "env.json").read_text())
    assert len(env["resumes"]) == 1, (
        "a resumed run adds its environment, it does not replace the first"
    )


def test_selection_naming_an_unknown_id_is_a_user_error_with_a_suggestion(tmp_path):
    result = cli(
        "run",
        str(tiny_suite(tmp_path / "s.toml")),
        "--strategy",
        "ridge-strng",
        "--out",
        str(tmp_path / "run"),
        "-q",
    )
    assert result.exit_code == 2
    assert (
        "error: --strategy 'ridge-strng': suite 'tiny' has no such id. Did you mean 'ridge-strong'?"
        in result.output
    )
    assert not (tmp_path / "run").exists()


def test_dry_run_prints_the_plan_and_creates_and_loads_nothing(tmp_path):
    from tlbench.planning import Selection
    from tlbench.runner import run_suite

    suite = tiny_suite(tmp_path / "s.toml")
    run_suite(
        request(tmp_path, suite, selection=Selection(strategies=("ridge",), seeds=(0,))),
        tiny_host(),
    )
    result = cli(
        "run",
        str(suite),
        "--out",
        str(tmp_path / "run"),
        "--dry-run",
        "--json",
        "--cache-dir",
        str(tmp_path / "cache"),
    )
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert (plan["cells"], plan["to_run"]) == (4, 3)
    states = {(p["strategy"], p["seed"]): p["state"] for p in plan["plan"]}
    assert states == {
        ("ridge", 0): "recorded",
        ("ridge-strong", 0): "pending",
        ("ridge", 1): "pending",
        ("ridge-strong", 1): "pending",
    }
    assert plan["shared_work"] == {
        "source_models": 2,
        "datasets": 1,
        "model_dataset_pairs": 1,
        "prepared_groups": 2,
        "feature_pools": 1,  # both seeds split the same images: their features are computed once
        "sweeps": {"asha": 0, "candidates": 0, "grid": 0},  # the test's strategies sweep nothing
    }
    assert {row["namespace"] for row in plan["cache"]["namespaces"]} >= {"prepared"}, (
        "the first run cached its preprocessing"
    )
    new = cli("run", str(suite), "--dry-run", "--out", str(tmp_path / "fresh"))
    assert new.exit_code == 0 and "not created by a dry run" in " ".join(new.output.split())
    assert not (tmp_path / "fresh").exists()


def test_dry_run_never_calls_a_factory(tmp_path, write_suite):
    # The model factory names a module that does not exist: loading it would fail the cell.
    plugin = tmp_path / "plugins" / "broken.py"
    plugin.parent.mkdir()
    plugin.write_text(
        'from tlbench import hookimpl\nfrom tlbench.specs import ModelSpec\n@hookimpl\ndef register_models(register):\n    register(ModelSpec("ghost", factory="no_such_module:make"))\n'
    )
    suite = write_suite('models = ["ghost"]\ndatasets = ["tiny-digits"]\nstrategies = ["ridge"]')
    from tlbench.cli import cli as command

    result = CliRunner().invoke(
        command,
        [
            "--plugin",
            PLUGIN,
            "--plugins-dir",
            str(plugin.parent),
            "run",
            str(suite),
            "--dry-run",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["to_run"] == 1


def test_unwritable_results_directory_fails_before_any_work(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    ran = tmp_path / "a-cell-ran"
    result = cli(
        "run",
        str(tiny_suite(tmp_path / "s.toml", touch=str(ran))),
        "--out",
        str(blocker / "run"),
        "-q",
    )
    assert result.exit_code == 2
    assert (
        result.output.startswith("error: results directory") and "is not writable" in result.output
    )
    assert not ran.exists()


def test_a_second_run_on_a_busy_run_directory_is_refused(tmp_path):
    from tlbench.errors import UserError
    from tlbench.rundir import RunDir
    from tlbench.runner import run_suite

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with RunDir(run_dir).lock(), pytest.raises(UserError, match="is in use by another tlbench run"):
        run_suite(request(tmp_path, tiny_suite(tmp_path / "s.toml")), tiny_host())
    assert not (run_dir / "cells.jsonl").exists()


def test_executor_options_are_checked_before_work(tmp_path):
    suite = str(tiny_suite(tmp_path / "s.toml"))
    assert "--workers needs --executor process" in cli("run", suite, "--workers", "2", "-q").output
    assert "need --executor ray" in cli("run", suite, "--gpus-per-cell", "1", "-q").output
    result = cli("run", suite, "--executor", "process", "--workers", "0", "-q")
    assert result.exit_code == 2 and "--workers: expected an integer >= 1" in result.output
