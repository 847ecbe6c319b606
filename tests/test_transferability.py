"""Running estimators over a suite's (model, dataset, seed) pairs, and the report section that
compares their rankings with fine-tuning's."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from rich.console import Console

from tlbench import hookimpl
from tlbench.cache import Cache
from tlbench.cell import CellRunner
from tlbench.planning import Selection
from tlbench.plugins import load_plugins
from tlbench.report.transferability import (
    render_transferability,
    transferability_markdown,
    transferability_tables,
)
from tlbench.specs import EstimatorSpec, ModelSpec
from tlbench.suite import load_suite, parse_suite
from tlbench.transferability import (
    ESTIMATES_FILE,
    estimate_pairs,
    load_estimates,
    rank_correlation,
    run_estimators,
)


class Constant:
    """Scores the features after zeroing them: LogME must reject them with a message."""

    needs_source_head = False

    def score(self, features, labels, source_logits):
        from tlbench.estimators import logme

        return logme(torch.zeros_like(features), labels)


class NotANumber:
    needs_source_head = False

    def score(self, features, labels, source_logits):
        return float("nan")


def broken_model(argument, options, context):
    raise RuntimeError("checkpoint is truncated")


def broken_head_model(argument, options, context):
    """A random Lite0 whose source classifier cannot be built."""
    from tlbench.builtin.model_sources import scratch_model

    source = scratch_model("tf_efficientnet_lite0", options, context)

    def build_with_source_head(in_chans=3):
        raise RuntimeError("classifier weights missing from the checkpoint")

    source.build_with_source_head = build_with_source_head
    return source


class BrokenComponents:
    @hookimpl
    def register_models(self, register):
        register(ModelSpec(name="broken", factory=broken_model))
        register(ModelSpec(name="broken-head", factory=broken_head_model))

    @hookimpl
    def register_estimators(self, register):
        register(EstimatorSpec(name="zeroed", factory=lambda options: Constant()))
        register(EstimatorSpec(name="nan", factory=lambda options: NotANumber()))


@pytest.fixture(scope="module")
def host():
    return load_plugins(extra=[BrokenComponents()], load_entrypoints=False)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One cache for the module: the ImageNet weights are converted once."""
    return Cache(tmp_path_factory.mktemp("cache"))


MODELS = [
    {"name": "efficientnet_lite0.in1k", "id": "imagenet", "input_size": 32},
    {"name": "scratch:tf_efficientnet_lite0", "id": "scratch", "input_size": 32},
]


def small_suite(host, estimators, models=MODELS, seeds=(0,)):
    raw = {
        "name": "transfer-test",
        "seeds": list(seeds),
        "models": models,
        "datasets": [{"name": "digits", "train_size": 60, "val_size": 20, "test_size": 20}],
        "strategies": ["linear-probe"],
        "estimators": estimators,
    }
    return parse_suite(raw, Path("transfer-test.toml"), host.registry)


def lines(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / ESTIMATES_FILE).read_text().splitlines()]


@pytest.mark.slow
def test_every_pair_gets_a_record_per_estimator_and_a_rerun_resumes(host, cache, tmp_path):
    suite = small_suite(host, ["logme", "leep", "nce", "hscore"])
    runner = CellRunner(host, cache, "cpu")
    records = run_estimators(suite, runner, tmp_path)
    by_key = {(r["model"], r["estimator"]): r for r in records}
    assert len(records) == 8 and len(lines(tmp_path)) == 8
    for estimator in ("logme", "leep", "nce", "hscore"):
        ok = by_key[("imagenet", estimator)]
        assert ok["status"] == "ok" and math.isfinite(ok["score"]), ok["error"]
        assert (
            ok["kind"] == "estimate" and ok["schema"] == 1 and ok["seed"] == 0 and ok["n"] == 40
        )  # train_size 60 minus the 20 carved for val
        assert ok["wall_s"] >= 0 and ok["features_s"] >= 0
    assert (
        by_key[("imagenet", "leep")]["input"] == "source-logits"
        and by_key[("imagenet", "leep")]["source_classes"] == 1000
    )
    assert by_key[("imagenet", "logme")]["dim"] == 1280
    for estimator in ("logme", "hscore"):
        assert by_key[("scratch", estimator)]["status"] == "ok"
    for estimator in ("leep", "nce"):
        skipped = by_key[("scratch", estimator)]
        assert skipped["status"] == "skipped" and skipped["score"] is None
        assert (
            "has no source classifier" in skipped["error"]["message"]
            and "'scratch'" in skipped["error"]["message"]
        )

    again = run_estimators(suite, runner, tmp_path)
    assert len(lines(tmp_path)) == 8  # nothing recomputed
    assert [r["score"] for r in again] == [r["score"] for r in records]
    assert {r["config_hash"] for r in load_estimates(tmp_path)} == {
        r["config_hash"] for r in records
    }


def test_degenerate_scores_fail_alone_with_their_message(host, cache, tmp_path):
    suite = small_suite(host, ["zeroed", "nan", "logme"], models=MODELS[:1])
    records = {
        r["estimator"]: r for r in run_estimators(suite, CellRunner(host, cache, "cpu"), tmp_path)
    }
    assert records["zeroed"]["status"] == "failed"
    assert "identical for every example" in records["zeroed"]["error"]["message"]
    assert (
        records["nan"]["status"] == "failed"
        and "non-finite score" in records["nan"]["error"]["message"]
    )
    assert records["logme"]["status"] == "ok"


def test_failed_estimates_are_retried_only_when_asked(host, cache, tmp_path):
    suite = small_suite(host, ["nan"], models=MODELS[1:])
    runner = CellRunner(host, cache, "cpu")
    run_estimators(suite, runner, tmp_path)
    run_estimators(suite, runner, tmp_path)
    assert len(lines(tmp_path)) == 1
    run_estimators(suite, runner, tmp_path, retry_failed=True)
    assert [r["status"] for r in lines(tmp_path)] == ["failed", "failed"]


def test_a_pair_that_cannot_load_fails_its_estimates_and_the_others_go_on(host, cache, tmp_path):
    models = [{"name": "broken", "id": "broken"}, MODELS[1]]
    suite = small_suite(host, ["logme", "leep"], models=models)
    records = {
        (r["model"], r["estimator"]): r
        for r in run_estimators(suite, CellRunner(host, cache, "cpu"), tmp_path)
    }
    for estimator in ("logme", "leep"):
        failed = records[("broken", estimator)]
        assert failed["status"] == "failed"
        assert failed["error"]["message"] == (
            "estimate broken x digits (seed 0): model 'broken' (plugin 'BrokenComponents') "
            "raised RuntimeError in its factory: checkpoint is truncated"
        )
        assert failed["error"]["type"] == "RuntimeError"
    assert records[("scratch", "logme")]["status"] == "ok"


def test_a_source_head_that_fails_fails_only_the_estimators_reading_it(host, cache, tmp_path):
    suite = small_suite(host, ["logme", "nce"], models=[{"name": "broken-head", "input_size": 32}])
    records = {
        r["estimator"]: r for r in run_estimators(suite, CellRunner(host, cache, "cpu"), tmp_path)
    }
    assert records["logme"]["status"] == "ok"
    assert records["nce"]["status"] == "failed"
    assert records["nce"]["error"]["message"] == (
        "estimate broken-head x digits (seed 0): model 'broken-head' (plugin 'BrokenComponents') "
        "raised RuntimeError computing its source logits: classifier weights missing from the "
        "checkpoint"
    )


def test_pairs_follow_the_suite_grid_and_ignore_strategy_filters(host):
    suite = small_suite(host, ["logme"], seeds=(0, 1))
    pairs = [(c.model, c.dataset, c.seed) for c in estimate_pairs(suite)]
    assert pairs == [
        ("imagenet", "digits", 0),
        ("imagenet", "digits", 1),
        ("scratch", "digits", 0),
        ("scratch", "digits", 1),
    ]
    selected = estimate_pairs(
        suite, Selection(models=("scratch",), strategies=("full-finetune",), seeds=(1,))
    )
    assert [(c.model, c.seed) for c in selected] == [("scratch", 1)]


def test_a_suite_without_estimators_writes_nothing(host, cache, tmp_path):
    suite = small_suite(host, [])
    assert run_estimators(suite, CellRunner(host, cache, "cpu"), tmp_path) == []
    assert not (tmp_path / ESTIMATES_FILE).exists()


def test_the_shipped_suite_is_valid(host, repo_root):
    suite = load_suite(repo_root / "suites" / "transferability.toml", host.registry)
    assert {e.ref for e in suite.estimators} >= {"logme", "leep", "nce", "hscore", "gbc", "sfda"}
    assert len(suite.models) >= 12 and len(suite.datasets) == 2  # enough sources to rank


# ------------------------------------------------------------------------------- analysis


def test_rank_correlation_of_agreeing_and_reversed_rankings():
    assert rank_correlation([1, 2, 3, 4], [10, 20, 30, 40])["kendall_tau"] == pytest.approx(1.0)
    reversed_ = rank_correlation([1, 2, 3, 4], [40, 30, 20, 10])
    assert reversed_["kendall_tau"] == pytest.approx(-1.0) and reversed_[
        "weighted_tau"
    ] == pytest.approx(-1.0)
    one_swap = rank_correlation([1, 2, 3, 4], [10, 20, 40, 30])
    assert one_swap["kendall_tau"] == pytest.approx(4 / 6)  # 5 concordant, 1 discordant pair of 6
    # A swap at the top costs weighted tau more than the same swap at the bottom.
    assert (
        one_swap["weighted_tau"] < rank_correlation([1, 2, 3, 4], [20, 10, 30, 40])["weighted_tau"]
    )


def test_rank_correlation_is_undefined_without_two_usable_models():
    result = rank_correlation([1.0, None, float("nan")], [1.0, 2.0, 3.0])
    assert (
        result["n"] == 1
        and math.isnan(result["kendall_tau"])
        and math.isnan(result["weighted_tau"])
    )
    assert math.isnan(rank_correlation([1, 1, 1], [1, 2, 3])["kendall_tau"])


def cell(model, dataset, strategy, top1, wall_s, seed=0, status="ok"):
    return {
        "suite": "s",
        "model": model,
        "dataset": dataset,
        "strategy": strategy,
        "seed": seed,
        "status": status,
        "model_ref": model,
        "metrics": {"top1": top1},
        "cost": {"wall_s": wall_s},
    }


def estimate(model, dataset, estimator, score, wall_s=1.0, features_s=1.0, seed=0, status="ok"):
    return {
        "kind": "estimate",
        "model": model,
        "dataset": dataset,
        "seed": seed,
        "estimator": estimator,
        "status": status,
        "score": score,
        "wall_s": wall_s,
        "features_s": features_s,
        "features_cached": False,
    }


@pytest.fixture
def report_inputs():
    from tlbench.report.records import records_frame

    models = ["a", "b", "c", "d"]
    cells = [
        cell(m, "digits", "linear-probe", top1, 10.0)
        for m, top1 in zip(models, [50, 60, 70, 80], strict=True)
    ]
    cells += [
        cell(m, "digits", "full-finetune", top1, 100.0)
        for m, top1 in zip(models, [80, 70, 60, 50], strict=True)
    ]
    cells.append(cell("d", "digits", "full-finetune", 0.0, 5.0, seed=1, status="failed"))
    estimates = [
        estimate(m, "digits", "logme", s) for m, s in zip(models, [0.1, 0.2, 0.3, 0.4], strict=True)
    ]
    estimates += [
        estimate(m, "digits", "leep", s)
        for m, s in zip(models[:3], [-3.0, -2.0, -1.0], strict=True)
    ]
    estimates.append(
        estimate("d", "digits", "leep", None, wall_s=None, features_s=None, status="skipped")
    )
    return records_frame(cells), estimates


def test_report_tables_put_scores_next_to_accuracies_and_rank_them(report_inputs):
    tables = transferability_tables(*report_inputs)
    scores = tables["scores"].set_index("model")
    assert list(scores.columns) == [
        "dataset",
        "weakened",
        "logme",
        "leep",
        "linear-probe top1",
        "full-finetune top1",
    ]
    assert scores.loc["c", "logme"] == 0.3 and scores.loc["d", "full-finetune top1"] == 50
    assert math.isnan(scores.loc["d", "leep"])  # skipped, not zero
    corr = tables["correlation"].set_index(["estimator", "strategy"])
    assert corr.loc[("logme", "linear-probe"), "kendall_tau"] == pytest.approx(1.0)
    assert corr.loc[("logme", "full-finetune"), "kendall_tau"] == pytest.approx(-1.0)
    assert corr.loc[("leep", "linear-probe"), "models"] == 3


def test_report_time_compares_estimators_with_fine_tuning_on_the_same_models(report_inputs):
    time = transferability_tables(*report_inputs)["time"].set_index(["estimator", "strategy"])
    assert time.loc[("logme", "linear-probe"), ["pairs", "estimator_s", "finetune_s"]].tolist() == [
        4,
        8.0,
        40.0,
    ]
    assert time.loc[("logme", "full-finetune"), "speedup"] == pytest.approx(
        50.0
    )  # 400 s / 8 s; the failed cell is left out
    assert time.loc[("leep", "full-finetune"), ["pairs", "finetune_s"]].tolist() == [3, 300.0]


def test_report_renders_as_markdown_and_in_the_terminal(report_inputs):
    tables = transferability_tables(*report_inputs)
    markdown = transferability_markdown(tables)
    assert "## Transferability estimation" in markdown
    assert "50.0x" in markdown and "—" in markdown
    console = Console(record=True, width=200)
    render_transferability(tables, console)
    text = console.export_text()
    assert "Rank correlation" in text and "50.0x" in text and "full-finetune top1" in text


def test_report_without_estimates_says_so():
    tables = transferability_tables(None, [])
    assert all(frame.empty for frame in tables.values())
    assert "No estimates" in transferability_markdown(tables)
