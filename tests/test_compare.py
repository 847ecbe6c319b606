"""Comparing two runs of a suite: Welch's t over seeds (configurations) with 2+ seeds a side,
McNemar over test items (trained models) with one, Holm over cells, flags only what retraining
cannot explain, pairing only comparable cells, and the command."""

import io
import json

import pytest
from click.testing import CliRunner
from rich.console import Console
from scipy import stats

from tlbench.errors import UserError
from tlbench.report.commands import compare_command
from tlbench.report.compare import compare, render_comparison
from tlbench.report.samples import write_sample_run
from tlbench.report.terminal import render_comparison_terminal

RED, GREEN = "\x1b[31m", "\x1b[32m"


def run_with(run_dir, values, predictions=True, **options):
    """A run whose top1 for (model, dataset, strategy) on seed i is ``values[...][i]``, with
    per-example predictions on 1000 test items unless ``predictions=False``."""
    models, datasets, strategies = (list(dict.fromkeys(key[i] for key in values)) for i in range(3))
    return write_sample_run(
        run_dir,
        predictions=predictions,
        models=models,
        datasets=datasets,
        strategies=strategies,
        seeds=range(len(next(iter(values.values())))),
        top1=lambda m, d, s, seed: values[(m, d, s)][seed],
        **options,
    )


A_VALUES = {
    ("lite0", "cifar10", "probe"): [80.0, 81.0, 82.0],
    ("lite0", "cifar10", "tune"): [85.0, 86.0, 84.0],
    ("lite0", "pets", "probe"): [70.0, 71.0, 72.0],
    ("lite0", "pets", "tune"): [75.0, 75.5, 76.0],
}
B_VALUES = {
    ("lite0", "cifar10", "probe"): [76.0, 77.0, 78.0],  # -4 points on 3 x 1000 items: a regression
    ("lite0", "cifar10", "tune"): [89.0, 90.0, 88.0],  # +4: an improvement
    ("lite0", "pets", "probe"): [70.1, 71.0, 72.1],  # one image either way: noise
    ("lite0", "pets", "tune"): [75.0, 75.5, 76.0],  # unchanged
}


@pytest.fixture
def runs(tmp_path):
    return run_with(tmp_path / "a", A_VALUES), run_with(tmp_path / "b", B_VALUES)


def cell(comparison, model, dataset, strategy):
    frame = comparison.cells.set_index(["model", "dataset", "strategy"])
    return frame.loc[(model, dataset, strategy)]


def test_with_two_or_more_seeds_a_side_the_configurations_are_compared_over_seeds(runs):
    comparison = compare(*runs)

    probe = cell(comparison, "lite0", "cifar10", "probe")
    expected = stats.ttest_ind([76.0, 77.0, 78.0], [80.0, 81.0, 82.0], equal_var=False)
    assert probe["test"] == "welch" and probe["scope"] == "configurations"
    assert probe["delta"] == pytest.approx(-4.0)
    assert probe["p_value"] == pytest.approx(expected.pvalue)
    assert probe["p_holm"] < 0.05


def test_with_one_seed_a_side_only_the_trained_models_are_compared_and_the_output_says_so(
    tmp_path,
):
    a = run_with(tmp_path / "a", {("m", "d", "s"): [80.0]})
    b = run_with(tmp_path / "b", {("m", "d", "s"): [76.0]})

    comparison = compare(a, b)
    only = comparison.cells.iloc[0]
    document = json.loads(render_comparison(comparison, "json"))
    markdown = render_comparison(comparison, "md")

    # Every model finds the same items easiest, so B is right on a subset of A's items.
    assert only["test"] == "mcnemar" and only["scope"] == "trained models"
    assert only["right_only_a"] == 40 and only["right_only_b"] == 0
    assert only["flag"] == "regression"
    assert (
        document["scope"] == "trained models" and document["cells"][0]["scope"] == "trained models"
    )
    assert "compares the two trained models only" in document["scope_note"]
    assert "compares the two trained models only" in markdown


def test_a_rerun_with_disjoint_seeds_is_compared_and_a_changed_recipe_still_refused(tmp_path):
    a = run_with(tmp_path / "a", A_VALUES)
    b = write_sample_run(
        tmp_path / "b",
        predictions=True,
        models=["lite0"],
        datasets=["cifar10", "pets"],
        strategies=["probe", "tune"],
        seeds=(3, 4, 5),
        top1=lambda m, d, s, seed: A_VALUES[(m, d, s)][seed - 3] + 0.3,
    )

    comparison = compare(a, b)
    assert set(comparison.cells["test"]) == {"welch"} and set(comparison.cells["flag"]) == {""}
    assert (comparison.cells["pairs"] == 0).all()

    path = b / "cells.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    for record in records[:3]:  # another recipe: no seed in common, yet it is caught
        record["options"] = {"model": {}, "dataset": {}, "strategy": {"lr": 0.1}}
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(UserError, match="ran 1 cells differently.*configuration differs"):
        compare(a, b)


def test_an_option_recorded_as_null_equals_one_recorded_before_it_existed(tmp_path):
    a, b = run_with(tmp_path / "a", A_VALUES), run_with(tmp_path / "b", A_VALUES)
    for run, strategy_options in ((a, {}), (b, {"extract_batch_size": None})):
        path = run / "cells.jsonl"
        records = [json.loads(line) for line in path.read_text().splitlines()]
        for record in records:
            record["options"] = {"model": {}, "dataset": {}, "strategy": strategy_options}
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert (compare(a, b).cells["mismatch"].fillna("") == "").all()

    path = b / "cells.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    records[0]["options"]["strategy"] = {"extract_batch_size": 64}  # set: another configuration
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(UserError, match="configuration differs"):
        compare(a, b)


def test_only_significant_changes_are_flagged(runs):
    flags = compare(*runs).cells.set_index(["dataset", "strategy"])["flag"].to_dict()
    assert flags == {
        ("cifar10", "probe"): "regression",
        ("cifar10", "tune"): "improvement",
        ("pets", "probe"): "",
        ("pets", "tune"): "",
    }


def test_a_threshold_adds_a_minimum_change_on_top_of_significance(runs):
    strict = compare(*runs, threshold=5.0).cells.set_index(["dataset", "strategy"])["flag"]
    assert set(strict) == {""}


def test_identical_code_rerun_on_another_cpu_flags_nothing(tmp_path):
    """Another CPU rounds differently: a few test items change hands, in both directions."""
    a = run_with(tmp_path / "a", A_VALUES)
    b = run_with(tmp_path / "b", A_VALUES, flipped=lambda m, d, s, seed: 6 + 3 * seed)

    comparison = compare(a, b)

    assert set(comparison.cells["flag"]) == {""}
    assert set(comparison.cells["test"]) == {"welch"}


def test_a_one_image_shift_on_two_seeds_is_not_significant(tmp_path):
    """The paired t-test over two seeds called this p = 0.001."""
    a = run_with(tmp_path / "a", {("m", "d", "s"): [80.0, 82.0]})
    b = run_with(tmp_path / "b", {("m", "d", "s"): [80.1, 82.1]})

    only = compare(a, b).cells.iloc[0]

    assert only["p_holm"] > 0.4 and only["flag"] == ""


def test_without_predictions_seeds_are_compared_the_same_way(tmp_path):
    values_a, values_b = [80.0, 81.0, 82.0], [76.0, 77.5, 78.0]
    a = run_with(tmp_path / "a", {("lite0", "cifar10", "probe"): values_a}, predictions=False)
    b = run_with(tmp_path / "b", {("lite0", "cifar10", "probe"): values_b}, predictions=False)

    probe = cell(compare(a, b), "lite0", "cifar10", "probe")
    expected = stats.ttest_ind(values_b, values_a, equal_var=False)

    assert probe["test"] == "welch" and probe["p_value"] == pytest.approx(expected.pvalue)


def test_one_seed_without_predictions_cannot_be_tested_and_is_not_flagged(tmp_path):
    a = run_with(tmp_path / "a", {("m", "d", "s"): [80.0]}, predictions=False)
    b = run_with(tmp_path / "b", {("m", "d", "s"): [75.0]}, predictions=False)

    only = compare(a, b).cells.iloc[0]

    assert only["test"] == "none" and only["flag"] == ""


def test_seeds_without_any_spread_have_no_t_statistic(tmp_path):
    a = run_with(tmp_path / "a", {("m", "d", "s"): [80.0, 80.0]}, predictions=False)
    b = run_with(tmp_path / "b", {("m", "d", "s"): [78.0, 78.0]}, predictions=False)

    assert compare(a, b).cells.iloc[0]["test"] == "none"


def test_cells_run_with_another_configuration_are_refused_unless_allowed(tmp_path):
    import json as json_module

    a = run_with(tmp_path / "a", A_VALUES)
    b = run_with(tmp_path / "b", A_VALUES)
    path = b / "cells.jsonl"
    records = [json_module.loads(line) for line in path.read_text().splitlines()]
    for record in records[:3]:  # one cell's three seeds ran with another recipe version
        record["config_hash"] = "0" * 64
    path.write_text("".join(json_module.dumps(r) + "\n" for r in records))

    with pytest.raises(UserError, match="ran 1 cells differently.*configuration differs"):
        compare(a, b)
    allowed = compare(a, b, allow_mismatch=True)
    assert cell(allowed, "lite0", "cifar10", "probe")["mismatch"].startswith("configuration")


def test_a_cell_that_fails_only_in_b_is_flagged_broken(tmp_path):
    a = run_with(tmp_path / "a", A_VALUES)
    b = run_with(
        tmp_path / "b", A_VALUES, failed=[("lite0", "pets", "tune", seed) for seed in (0, 1, 2)]
    )

    broken = cell(compare(a, b), "lite0", "pets", "tune")

    assert broken["flag"] == "broken" and broken["text_b"] == "failed"


def test_runs_of_different_suites_are_refused_naming_both(tmp_path):
    a = run_with(tmp_path / "a", A_VALUES, suite="quickstart")
    b = run_with(tmp_path / "b", A_VALUES, suite="vtab-lite")

    with pytest.raises(UserError, match="is suite quickstart but .* is suite vtab-lite"):
        compare(a, b)


def test_runs_without_cells_in_common_are_refused(tmp_path):
    a = run_with(tmp_path / "a", {("m", "d", "s"): [80.0]})
    b = run_with(tmp_path / "b", {("other", "d", "s"): [80.0]})

    with pytest.raises(UserError, match="no \\(model, dataset, strategy\\) cells in common"):
        compare(a, b)


def test_terminal_shows_regressions_red_and_improvements_green(runs):
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, color_system="standard", width=200)

    render_comparison_terminal(compare(*runs), console)
    lines = out.getvalue().splitlines()

    regression = next(line for line in lines if "regression" in line and "cifar10" in line)
    improvement = next(line for line in lines if "improvement" in line and "cifar10" in line)
    unchanged = next(line for line in lines if "pets" in line and "tune" in line)
    assert RED in regression and GREEN not in regression
    assert GREEN in improvement and RED not in improvement
    assert RED not in unchanged and GREEN not in unchanged


def test_compare_command_writes_json_and_fails_on_regression_when_asked(runs, tmp_path):
    output = tmp_path / "delta.json"

    written = CliRunner().invoke(compare_command, [str(runs[0]), str(runs[1]), "-o", str(output)])
    gated = CliRunner().invoke(
        compare_command, [*map(str, runs), "--format", "md", "--fail-on-regression"]
    )
    relaxed = CliRunner().invoke(
        compare_command,
        [*map(str, runs), "--format", "md", "--alpha", "1e-40", "--fail-on-regression"],
    )

    assert written.exit_code == 0, written.output
    document = json.loads(output.read_text())
    assert [c["flag"] for c in document["cells"]] == ["regression", "improvement", "", ""]
    assert gated.exit_code == 1 and "**regression**" in gated.output
    assert relaxed.exit_code == 0


def test_compare_command_reports_a_suite_mismatch_as_a_user_error(tmp_path):
    a = run_with(tmp_path / "a", A_VALUES, suite="quickstart")
    b = run_with(tmp_path / "b", A_VALUES, suite="other")

    result = CliRunner().invoke(compare_command, [str(a), str(b)])

    assert isinstance(result.exception, UserError) and "suite" in str(result.exception)
