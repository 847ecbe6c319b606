"""Comparing two runs of a suite: deltas, paired t-tests over seeds, flags, and the command."""

import io
import json

import pytest
from click.testing import CliRunner
from rich.console import Console
from scipy import stats

from tlbench.errors import UserError
from tlbench.report.commands import compare_command
from tlbench.report.compare import compare
from tlbench.report.samples import write_sample_run
from tlbench.report.terminal import render_comparison_terminal

RED, GREEN = "\x1b[31m", "\x1b[32m"


def run_with(run_dir, values, **options):
    """A run whose top1 for (model, dataset, strategy) on seed i is ``values[...][i]``."""
    models, datasets, strategies = (list(dict.fromkeys(key[i] for key in values)) for i in range(3))
    return write_sample_run(
        run_dir,
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
    ("lite0", "cifar10", "probe"): [78.0, 79.5, 80.0],  # about -1.8: a regression
    ("lite0", "cifar10", "tune"): [87.0, 88.5, 86.0],  # about +2.2: an improvement
    ("lite0", "pets", "probe"): [70.5, 70.5, 72.5],  # +0.17: noise
    ("lite0", "pets", "tune"): [75.0, 75.5, 76.0],  # unchanged
}


@pytest.fixture
def runs(tmp_path):
    return run_with(tmp_path / "a", A_VALUES), run_with(tmp_path / "b", B_VALUES)


def cell(comparison, model, dataset, strategy):
    frame = comparison.cells.set_index(["model", "dataset", "strategy"])
    return frame.loc[(model, dataset, strategy)]


def test_each_cell_gets_its_delta_and_a_paired_t_test_over_seeds(runs):
    comparison = compare(*runs)

    probe = cell(comparison, "lite0", "cifar10", "probe")
    expected = stats.ttest_rel(
        B_VALUES[("lite0", "cifar10", "probe")], A_VALUES[("lite0", "cifar10", "probe")]
    )
    assert probe["delta"] == pytest.approx(79.1666667 - 81.0)
    assert probe["pairs"] == 3
    assert probe["p_value"] == pytest.approx(expected.pvalue)
    assert probe["p_value"] < 0.05


def test_changes_beyond_the_threshold_are_flagged_as_regressions_or_improvements(runs):
    flags = compare(*runs).cells.set_index(["dataset", "strategy"])["flag"].to_dict()
    strict = (
        compare(*runs, threshold=2.0).cells.set_index(["dataset", "strategy"])["flag"].to_dict()
    )

    assert flags == {
        ("cifar10", "probe"): "regression",
        ("cifar10", "tune"): "improvement",
        ("pets", "probe"): "",
        ("pets", "tune"): "",
    }
    assert strict == {
        ("cifar10", "probe"): "",
        ("cifar10", "tune"): "improvement",
        ("pets", "probe"): "",
        ("pets", "tune"): "",
    }


def test_the_p_value_needs_at_least_two_seeds_in_both_runs(tmp_path):
    a = run_with(tmp_path / "a", {("m", "d", "s"): [80.0]})
    b = run_with(tmp_path / "b", {("m", "d", "s"): [75.0]})

    only = compare(a, b).cells.iloc[0]

    assert only["pairs"] == 1 and only["p_value"] != only["p_value"]  # NaN
    assert only["flag"] == "regression"


def test_the_same_shift_on_every_seed_is_an_exact_difference(tmp_path):
    a = run_with(tmp_path / "a", {("m", "d", "s"): [80.0, 82.0]})
    b = run_with(tmp_path / "b", {("m", "d", "s"): [78.0, 80.0]})

    assert compare(a, b).cells.iloc[0]["p_value"] == 0.0


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
        [*map(str, runs), "--format", "md", "--threshold", "5", "--fail-on-regression"],
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
