"""The ground truth the estimators are ranked against: averaged over seeds (its own noise shown),
over all sources and over the realistic ones alone, and combined from several run directories
of one suite configuration."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from scipy.stats import kendalltau

from tlbench.errors import UserError
from tlbench.report.records import load_records, records_frame
from tlbench.report.stats import cell_interval
from tlbench.report.transferability import (
    formatted,
    section_for_runs,
    transferability_markdown,
    transferability_tables,
    weakened,
)
from tlbench.transferability import ESTIMATES_FILE

OPTIONS = {"model": {"input_size": 64}, "dataset": {"train_size": 1000}, "strategy": {}}
VERSIONS = {"model": "1", "dataset": "1", "protocol": "2", "strategy": "3"}


def cell(model, top1, seed=0, ref=None, card=None, options=OPTIONS):
    return {
        "suite": "transferability",
        "model": model,
        "dataset": "digits",
        "strategy": "linear-probe",
        "seed": seed,
        "status": "ok",
        "model_ref": ref or f"pretrained:{model}",
        "dataset_ref": "digits",
        "strategy_ref": "linear-probe",
        "model_card": card or {},
        "options": options,
        "versions": VERSIONS,
        "metrics": {"top1": top1},
        "cost": {"wall_s": 10.0},
    }


def estimate(model, score, seed=0, ref=None, options=OPTIONS):
    return {
        "kind": "estimate",
        "suite": "transferability",
        "model": model,
        "dataset": "digits",
        "seed": seed,
        "estimator": "logme",
        "status": "ok",
        "score": score,
        "wall_s": 0.1,
        "features_s": 0.1,
        "features_cached": False,
        "model_ref": ref or f"pretrained:{model}",
        "dataset_ref": "digits",
        "estimator_ref": "logme",
        "options": {"model": options["model"], "dataset": options["dataset"], "estimator": {}},
        "versions": {"model": "1", "dataset": "1", "protocol": "2", "estimator": "1"},
    }


# Per seed, the five sources' order shuffles; their means order them m0 < m1 < ... < m4.
SEED_TOP1 = {
    "m0": [60.0, 75.0, 60.0],  # mean 65, best of all on seed 1
    "m1": [70.0, 70.0, 70.0],  # 70
    "m2": [80.0, 65.0, 80.0],  # 75
    "m3": [78.0, 84.0, 78.0],  # 80
    "m4": [86.0, 82.0, 87.0],  # 85
}
SCORES = {"m0": 0.1, "m1": 0.2, "m2": 0.3, "m3": 0.4, "m4": 0.5}


def three_seed_inputs():
    cells = [cell(m, v, seed) for m, vals in SEED_TOP1.items() for seed, v in enumerate(vals)]
    # The estimator's score varies by seed too; its mean orders the sources like the ground truth.
    estimates = [
        estimate(m, SCORES[m] + (0.15 if seed == 1 and m == "m0" else 0.0), seed)
        for m in SEED_TOP1
        for seed in range(3)
    ]
    return records_frame(cells), estimates


def test_ground_truth_is_the_mean_over_three_seeds_and_the_score_too():
    tables = transferability_tables(*three_seed_inputs())
    scores = tables["scores"].set_index("model")
    assert scores.loc["m0", "linear-probe top1"] == pytest.approx(65.0)
    assert scores.loc["m0", "logme"] == pytest.approx(0.15)  # (0.25 + 0.1 + 0.1) / 3
    row = tables["correlation"].iloc[0]
    # Ranked by the means the estimator is perfect, although no single seed agrees with it.
    assert row["kendall_tau"] == pytest.approx(1.0) and row["models"] == 5
    assert row["seeds"] == 3
    truth = tables["ground_truth"].iloc[0]
    assert (truth["sources"], truth["models"], truth["seeds"], truth["few_seeds"]) == (
        "all",
        5,
        3,
        False,
    )
    assert truth["best"] == "m4" and truth["best_top1"] == pytest.approx(85.0)


def test_the_ground_truth_states_its_own_noise():
    truth = transferability_tables(*three_seed_inputs())["ground_truth"].iloc[0]
    # The report's interval of the best source, and the others' means inside it.
    best = cell_interval(SEED_TOP1["m4"])
    assert (truth["best_ci_low"], truth["best_ci_high"]) == pytest.approx((best.low, best.high))
    inside = sum(best.low <= sum(v) / 3 for m, v in SEED_TOP1.items() if m != "m4")
    assert truth["within_best"] == inside
    assert truth["top5_spread"] == pytest.approx(85.0 - 65.0)
    shown = formatted("ground_truth", transferability_tables(*three_seed_inputs())["ground_truth"])
    assert shown.iloc[0]["seeds"] == "3" and shown.iloc[0]["within_best"] == f"{inside} of 4"


def test_fewer_than_three_seeds_are_flagged():
    cells = [cell(m, vals[0]) for m, vals in SEED_TOP1.items()]
    cells += [cell("m4", SEED_TOP1["m4"][1], seed=1)]
    estimates = [estimate(m, SCORES[m]) for m in SEED_TOP1]
    tables = transferability_tables(records_frame(cells), estimates)
    truth = tables["ground_truth"].iloc[0]
    assert truth["few_seeds"] and (truth["seeds"], truth["max_seeds"]) == (1, 2)
    assert formatted("ground_truth", tables["ground_truth"]).iloc[0]["seeds"] == "1-2 (< 3)"
    assert formatted("correlation", tables["correlation"]).iloc[0]["seeds"] == "1 (< 3)"
    markdown = transferability_markdown(tables)
    assert "1 (< 3)" in markdown and "marked below 3" in markdown


def test_weakened_sources_are_the_constructed_ones():
    assert weakened("scratch:tf_efficientnet_lite0")
    assert weakened("reinit-top:efficientnet_lite0.in1k")
    assert weakened("my-plugin:net", {"weights": "random"})
    assert weakened("pixels", {"trivial_baseline": True})
    assert weakened("some-wrapper:x", {"reinit_top": {"k": 2}})
    assert not weakened("efficientnet_lite0.in1k", {"weights_file": "x.pth"})
    assert not weakened("self-pretrained:tf_efficientnet_lite0")


def test_the_realistic_tau_leaves_out_scratch_and_reinit_sources():
    realistic = {"r0": (70.0, 0.1), "r1": (75.0, 0.3), "r2": (80.0, 0.2), "r3": (85.0, 0.4)}
    realistic["r4"] = (90.0, 0.5)
    weak = {
        "lite0-scratch": ("scratch:tf_efficientnet_lite0", 95.0, 0.0),
        "lite0-reinit-top1": ("reinit-top:efficientnet_lite0.in1k", 97.0, -0.1),
    }
    cells = [cell(m, top1) for m, (top1, _) in realistic.items()]
    cells += [cell(m, top1, ref=ref) for m, (ref, top1, _) in weak.items()]
    estimates = [estimate(m, score) for m, (_, score) in realistic.items()]
    estimates += [estimate(m, score, ref=ref) for m, (ref, _, score) in weak.items()]
    tables = transferability_tables(records_frame(cells), estimates)

    row = tables["correlation"].iloc[0]
    accuracies, scores = zip(*realistic.values(), strict=True)
    assert row["models"] == 7 and row["realistic_models"] == 5
    assert row["realistic_kendall_tau"] == pytest.approx(kendalltau(scores, accuracies).statistic)
    assert row["kendall_tau"] < row["realistic_kendall_tau"]  # the weak sources rank backwards
    assert set(tables["scores"].loc[tables["scores"]["weakened"], "model"]) == set(weak)
    truth = tables["ground_truth"].set_index("sources")
    assert truth.loc["all", "best"] == "lite0-reinit-top1"
    assert truth.loc["realistic", "best"] == "r4" and truth.loc["realistic", "models"] == 5
    shown = formatted("correlation", tables["correlation"])
    assert list(shown.columns[-5:]) == [
        "realistic_models",
        "realistic_tau",
        "realistic_95ci",
        "realistic_p",
        "realistic_seeds",
    ]
    assert shown.iloc[0]["realistic_models"] == "5"


def test_seeds_are_counted_for_the_realistic_sources_apart():
    """Extra seeds run for the realistic sources only: their tau rests on 3 seeds, the tau
    over all sources on 1."""
    cells = [cell(m, v, seed) for m, vals in SEED_TOP1.items() for seed, v in enumerate(vals)]
    cells.append(cell("lite0-scratch", 50.0, ref="scratch:tf_efficientnet_lite0"))
    estimates = [estimate(m, SCORES[m], seed) for m in SEED_TOP1 for seed in range(3)]
    estimates.append(estimate("lite0-scratch", 0.0, ref="scratch:tf_efficientnet_lite0"))
    tables = transferability_tables(records_frame(cells), estimates)
    row = tables["correlation"].iloc[0]
    assert (row["seeds"], row["realistic_seeds"]) == (1, 3)
    shown = formatted("correlation", tables["correlation"]).iloc[0]
    assert (shown["seeds"], shown["realistic_seeds"]) == ("1 (< 3)", "3")
    truth = formatted("ground_truth", tables["ground_truth"]).set_index("sources")["seeds"]
    assert truth.to_dict() == {"all": "1-3 (< 3)", "realistic": "3"}


def test_without_weakened_sources_there_is_no_realistic_column():
    tables = transferability_tables(*three_seed_inputs())
    assert "realistic_tau" not in formatted("correlation", tables["correlation"])
    assert list(tables["ground_truth"]["sources"]) == ["all"]


def write_run(run_dir: Path, cells, estimates) -> Path:
    run_dir.mkdir(parents=True)
    (run_dir / "cells.jsonl").write_text("".join(json.dumps(c) + "\n" for c in cells))
    (run_dir / ESTIMATES_FILE).write_text("".join(json.dumps(e) + "\n" for e in estimates))
    return run_dir


def test_two_runs_of_one_suite_combine_their_seeds(tmp_path):
    first = write_run(
        tmp_path / "seed0",
        [cell(m, v[0]) for m, v in SEED_TOP1.items()],
        [estimate(m, SCORES[m]) for m in SEED_TOP1],
    )
    # Extra seeds of the same cells, without estimates: the linear probe only.
    extra = [cell(m, v[s], seed=s) for m, v in SEED_TOP1.items() for s in (1, 2)]
    second = write_run(tmp_path / "seeds12", extra, [])
    runs = [first, second]
    tables = section_for_runs(load_records(runs), runs)
    assert tables["ground_truth"].iloc[0]["seeds"] == 3
    top1 = tables["scores"].set_index("model")["linear-probe top1"]
    assert top1.to_dict() == pytest.approx({m: sum(v) / 3 for m, v in SEED_TOP1.items()})
    assert tables["correlation"].iloc[0]["kendall_tau"] == pytest.approx(1.0)

    from tlbench.cli import cli

    result = CliRunner().invoke(cli, ["report", str(first), str(second), "--format", "md"])
    assert result.exit_code == 0, result.output
    assert "The ranking to recover" in result.stdout


def test_an_estimate_recorded_in_two_runs_counts_once(tmp_path):
    cells = [cell(m, v[0]) for m, v in SEED_TOP1.items()]
    first = write_run(tmp_path / "a", cells, [estimate(m, SCORES[m]) for m in SEED_TOP1])
    second = write_run(tmp_path / "b", [cells[0]], [estimate("m0", 0.9)])
    tables = section_for_runs(load_records([first, second]), [first, second])
    assert tables["scores"].set_index("model").loc["m0", "logme"] == pytest.approx(0.9)


def test_runs_that_configure_a_source_differently_are_refused(tmp_path):
    first = write_run(
        tmp_path / "at64",
        [cell(m, v[0]) for m, v in SEED_TOP1.items()],
        [estimate(m, SCORES[m]) for m in SEED_TOP1],
    )
    at32 = {**OPTIONS, "model": {"input_size": 32}}
    second = write_run(tmp_path / "at32", [cell("m1", 50.0, seed=1, options=at32)], [])
    runs = [first, second]
    with pytest.raises(UserError) as refused:
        section_for_runs(load_records(runs), runs)
    message = str(refused.value)
    assert "\n" not in message and str(first) in message and str(second) in message
    assert "model 'm1'" in message and '{"input_size": 64} vs {"input_size": 32}' in message

    from tlbench.cli import cli

    result = CliRunner().invoke(cli, ["report", str(first), str(second), "--format", "md"])
    assert result.exit_code == 2 and "configure model 'm1' differently" in result.stderr
    assert "Traceback" not in result.output


def test_an_option_left_unset_matches_a_run_written_before_the_option_existed(tmp_path):
    first = write_run(
        tmp_path / "older",
        [cell(m, v[0]) for m, v in SEED_TOP1.items()],
        [estimate(m, SCORES[m]) for m in SEED_TOP1],
    )
    newer_options = {**OPTIONS, "strategy": {**OPTIONS["strategy"], "extract_batch_size": None}}
    extra = [
        cell(m, v[s], seed=s, options=newer_options) for m, v in SEED_TOP1.items() for s in (1, 2)
    ]
    second = write_run(tmp_path / "newer", extra, [])
    tables = section_for_runs(load_records([first, second]), [first, second])
    assert tables["ground_truth"].iloc[0]["seeds"] == 3
