"""Reports from run directories: loading records, tables, plots, formats and the report command."""

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image
from rich.console import Console

from tlbench.errors import UserError
from tlbench.report.commands import report_command
from tlbench.report.plots import pareto_front
from tlbench.report.records import load_records
from tlbench.report.samples import sample_top1, write_sample_run
from tlbench.report.tables import average_ranks, build_tables, summarize
from tlbench.report.terminal import render_terminal

ROOT = Path(__file__).resolve().parent.parent


def run_with(run_dir: Path, values: dict, **options) -> Path:
    """A run whose top1 for (model, dataset, strategy) on seed i is ``values[...][i]``."""
    models, datasets, strategies = (list(dict.fromkeys(key[i] for key in values)) for i in range(3))
    seeds = range(len(next(iter(values.values()))))
    return write_sample_run(
        run_dir,
        models=models,
        datasets=datasets,
        strategies=strategies,
        seeds=seeds,
        top1=lambda m, d, s, seed: values[(m, d, s)][seed],
        **options,
    )


def table(tables, title_start):
    return next(t for t in tables if t.title.startswith(title_start))


def rows(frame, label):
    return frame.set_index(frame.columns[0]).loc[label]


@pytest.fixture
def full_run(tmp_path):
    """The sample grid (scratch baseline, two pretrained models, three strategies, three seeds)
    with every seed of one cell failed, one seed diverged and one cell retried after failing."""
    return write_sample_run(
        tmp_path / "run",
        failed=[("r18-imagenet", "cifar10", "partial-unfreeze", seed) for seed in (0, 1, 2)],
        diverged=[("lite0-imagenet", "fashion-mnist", "full-finetune", 1)],
        retried=[("scratch-r18", "cifar10", "full-finetune", 0)],
    )


# --- loading ---------------------------------------------------------------------------


def test_the_retry_of_a_failed_cell_replaces_its_failure(full_run):
    records = load_records(full_run)

    cell = records[
        (records["model"] == "scratch-r18")
        & (records["dataset"] == "cifar10")
        & (records["strategy"] == "full-finetune")
    ]
    assert len(records) == 3 * 2 * 3 * 3
    assert cell.set_index("seed").loc[0, "status"] == "ok"
    assert cell.set_index("seed").loc[0, "metrics.top1"] == sample_top1(
        "scratch-r18", "cifar10", "full-finetune", 0
    )


def test_records_are_flattened_and_the_scratch_model_is_the_baseline(full_run):
    records = load_records(full_run)

    assert {
        "metrics.top1",
        "cost.trainable_params",
        "cost.phases.train_s",
        "cost.peak_mem_mb",
        "error.message",
    } <= set(records)
    assert set(records.loc[records["baseline"], "model"]) == {"scratch-r18"}
    diverged = records[records["status"] == "diverged"].iloc[0]
    assert (diverged["error.message"], diverged["error.step"]) == ("loss became nan", 12)


def test_a_torn_last_line_is_a_warning_naming_file_and_line_and_the_rest_is_used(tmp_path):
    run = write_sample_run(tmp_path / "run", seeds=(0, 1), torn_tail=True)

    with pytest.warns(
        UserWarning, match=r"run/cells\.jsonl:37: skipped a truncated or garbled record"
    ):
        records = load_records(run)

    assert len(records) == 3 * 2 * 3 * 2


def test_a_directory_without_results_is_a_user_error_naming_it(tmp_path):
    (tmp_path / "empty").mkdir()

    with pytest.raises(UserError, match=r"empty: no results"):
        load_records(tmp_path / "empty")
    with pytest.raises(UserError, match=r"missing: no such run directory"):
        load_records(tmp_path / "missing")


def test_records_of_an_unknown_schema_are_refused(tmp_path):
    run = write_sample_run(tmp_path / "run", seeds=(0,))
    lines = (run / "cells.jsonl").read_text().splitlines()
    lines[0] = json.dumps({**json.loads(lines[0]), "schema": 2})
    (run / "cells.jsonl").write_text("\n".join(lines) + "\n")

    with pytest.raises(UserError, match="schema 2; this tlbench reads schema 1"):
        load_records(run)


def test_a_later_run_directory_wins_for_a_cell_recorded_in_both(tmp_path):
    first = run_with(tmp_path / "first", {("m", "d", "s"): [70.0, 71.0]})
    second = run_with(tmp_path / "second", {("m", "d", "s"): [80.0, 81.0]})

    records = load_records([first, second])

    assert sorted(records["metrics.top1"]) == [80.0, 81.0]


# --- statistics and tables -------------------------------------------------------------


def test_without_predictions_the_interval_is_t_over_seeds_plus_the_test_sets_noise(tmp_path):
    run = run_with(tmp_path / "run", {("m", "d", "s"): [80.0, 82.0, 84.0]})

    summary = summarize(load_records(run)).iloc[0]
    text = build_tables(load_records(run))[0].text

    # Seed term s^2/n = 4/3, item term (binomial, 1000 items at p = 0.82) 1.476; the seeds'
    # t(0.975, 2 dof) = 4.3027 correction weighted by their share x^2 / (x^2 + 0.09), x = S / I.
    seed, item, t, z = 4 / 3, 1e4 * 0.82 * 0.18 / 1000, 4.302653, 1.959964
    share = (seed / item) ** 2 / ((seed / item) ** 2 + 0.09)
    expected = (z**2 * (seed + item) + (t**2 - z**2) * seed * share) ** 0.5
    assert summary["ci95"] == pytest.approx(expected, abs=1e-3)
    assert summary["interval"] == "t: seeds + binomial"
    assert rows(text, "m")["d"] == "82.0 ± 5.3"


def test_a_single_seed_has_the_test_sets_interval_marked_as_one_training_draw(tmp_path):
    run = run_with(tmp_path / "run", {("m", "d", "s"): [81.34]})
    accuracy = build_tables(load_records(run))[0]

    # 1.96 * sqrt(0.8134 * 0.1866 / 1000) * 100 = 2.4 points
    assert rows(accuracy.text, "m")["d"] == "81.3 ± 2.4 ¹"
    assert (
        "¹ one training draw (one seed): its interval is the test set's noise only" in accuracy.note
    )
    assert r"81.3 $\pm$ 2.4 \textsuperscript{1}" in accuracy.to_latex()


def test_the_best_cell_of_each_column_is_bold_in_every_format(tmp_path):
    values = {
        ("a", "d1", "s"): [90.0, 91.0],
        ("a", "d2", "s"): [50.0, 51.0],
        ("b", "d1", "s"): [80.0, 81.0],
        ("b", "d2", "s"): [60.0, 61.0],
    }
    accuracy = build_tables(load_records(run_with(tmp_path / "run", values)))[0]

    markdown, latex, html = accuracy.to_markdown(), accuracy.to_latex(), accuracy.to_html()

    assert "**90.5 ± 4.8**" in markdown and "**60.5 ± 3.8**" in markdown
    assert r"\textbf{90.5 $\pm$ 4.8}" in latex and r"\textbf{60.5 $\pm$ 3.8}" in latex
    assert "<b>90.5 ± 4.8</b>" in html and "<b>60.5 ± 3.8</b>" in html
    assert "**80.5" not in markdown and "**50.5" not in markdown


def test_failed_and_diverged_cells_are_shown_as_such_never_dropped(full_run):
    tables = build_tables(load_records(full_run))

    partial = rows(
        table(tables, "top1 by model and dataset: strategy partial-unfreeze").text, "r18-imagenet"
    )
    full = rows(
        table(tables, "top1 by model and dataset: strategy full-finetune").text, "lite0-imagenet"
    )
    failures = table(tables, "Cells that did not finish").text

    assert partial["cifar10"] == "failed"
    assert full["fashion-mnist"].endswith("(1 diverged)")
    assert list(failures["status"]) == ["failed", "failed", "failed", "diverged"]
    assert failures["error"].iloc[0] == "RuntimeError: CUDA out of memory while allocating the head"
    assert failures["error"].iloc[3] == "loss became nan (step 12)"


def test_a_cell_whose_every_seed_diverged_reads_diverged(tmp_path):
    run = write_sample_run(
        tmp_path / "run",
        models=["lite0-imagenet"],
        datasets=["cifar10"],
        seeds=(0, 1),
        diverged=[("lite0-imagenet", "cifar10", "linear-probe", s) for s in (0, 1)],
    )

    text = table(build_tables(load_records(run)), "top1 by model").text

    assert rows(text, "lite0-imagenet")["cifar10"] == "diverged"


def test_average_rank_is_taken_within_each_model_and_dataset_and_failures_rank_last(tmp_path):
    values = {
        ("m1", "d1", "probe"): [70.0],
        ("m1", "d1", "tune"): [80.0],
        ("m1", "d2", "probe"): [75.0],
        ("m1", "d2", "tune"): [60.0],
        ("m2", "d1", "probe"): [50.0],
        ("m2", "d1", "tune"): [55.0],
        ("m2", "d2", "probe"): [99.0],
        ("m2", "d2", "tune"): [90.0],
    }
    run = run_with(tmp_path / "run", values, failed=[("m2", "d2", "probe", 0)])

    ranks = average_ranks(summarize(load_records(run)), "strategy")

    # d1: tune wins for both models; d2: probe wins for m1, fails (last) for m2.
    assert ranks.loc["tune"].to_dict() == {"d1": 1.0, "d2": 1.5, "all datasets": 1.25}
    assert ranks.loc["probe"].to_dict() == {"d1": 2.0, "d2": 1.5, "all datasets": 1.75}


def test_gain_compares_every_strategy_with_the_network_trained_from_scratch(tmp_path):
    values = {
        ("scratch-r18", "d", "linear-probe"): [30.0],
        ("scratch-r18", "d", "full-finetune"): [60.0],
        ("lite0-imagenet", "d", "linear-probe"): [82.5],
        ("lite0-imagenet", "d", "full-finetune"): [85.0],
    }
    gain = table(
        build_tables(load_records(run_with(tmp_path / "run", values))),
        "Gain over training from scratch",
    )

    # The linear probe on the random-init network is random-init features, never the reference.
    assert rows(gain.text, "lite0-imagenet / linear-probe")["d"].startswith("+22.5")
    assert rows(gain.text, "lite0-imagenet / full-finetune")["d"].startswith("+25.0")
    assert "scratch-r18 / full-finetune" in gain.note
    assert "scratch-r18 / linear-probe" not in gain.note


def test_the_from_scratch_reference_is_chosen_on_validation_never_on_test(tmp_path):
    from tlbench.report.tables import with_comparisons

    values = {
        ("scratch-a", "d", "probe"): [50.0],  # best on test, worse on validation
        ("scratch-b", "d", "probe"): [40.0],
        ("lite0-imagenet", "d", "probe"): [70.0],
    }
    records = load_records(run_with(tmp_path / "run", values))
    records["baseline"] = records["model"].str.startswith("scratch")
    records["role"] = records["baseline"].map({True: "trained from scratch", False: ""})
    records.loc[records["model"] == "scratch-a", "metrics.val_top1"] = 30.0
    records.loc[records["model"] == "scratch-b", "metrics.val_top1"] = 45.0
    summary = with_comparisons(summarize(records), records, "top1")
    lite0 = summary.set_index("model").loc["lite0-imagenet"]

    assert lite0["gain_reference"] == "scratch-b / probe" and lite0["gain"] == 30.0


def test_a_suite_without_a_from_scratch_model_has_no_gain_table(tmp_path):
    run = write_sample_run(tmp_path / "run", models=["r18-imagenet", "lite0-imagenet"], seeds=(0,))

    assert not any(t.title.startswith("Gain") for t in build_tables(load_records(run)))


def test_cost_table_shows_trainable_params_wall_time_and_peak_memory(full_run):
    cost = table(build_tables(load_records(full_run)), "Cost").text

    probe = rows(cost, "lite0-imagenet / linear-probe")
    assert probe["trainable params"] == "12,810"  # 1280 features x 10 classes + 10 biases
    assert probe["trainable %"] == "0.38"
    assert list(cost.columns) == [
        "model / strategy",
        "trainable params",
        "trainable %",
        "wall s / cell",
        "peak memory MB",
    ]


# --- terminal, plots, formats ----------------------------------------------------------


def test_terminal_table_shows_mean_and_interval_per_strategy_and_lists_failures(full_run, tmp_path):
    run = run_with(tmp_path / "small", {("m", "d", "s"): [80.0, 82.0, 84.0]})
    console = Console(record=True, width=200)

    render_terminal(load_records(run), console)
    render_terminal(load_records(full_run), console)
    out = console.export_text()

    assert "82.0 ± 5.3" in out
    assert "r18-imagenet / cifar10 / partial-unfreeze / seed 2: failed - RuntimeError" in out
    assert (
        "lite0-imagenet / fashion-mnist / full-finetune / seed 1: diverged - loss became nan" in out
    )


def test_pareto_front_keeps_only_points_no_cheaper_point_beats():
    points = pd.DataFrame(
        {"trainable_params": [10, 100, 1000, 50, 5000], "mean": [70.0, 80.0, 75.0, 65.0, 90.0]}
    )

    front = pareto_front(points)

    assert list(zip(front["trainable_params"], front["mean"], strict=True)) == [
        (10, 70.0),
        (100, 80.0),
        (5000, 90.0),
    ]


@pytest.mark.parametrize("suffix", [".md", ".tex", ".csv", ".json"])
def test_report_command_writes_the_format_its_output_file_names(full_run, tmp_path, suffix):
    output = tmp_path / f"report{suffix}"

    result = CliRunner().invoke(report_command, [str(full_run), "-o", str(output)])

    assert result.exit_code == 0, result.output
    text = output.read_text()
    if suffix == ".md":
        assert "# tlbench report: quickstart" in text and "| lite0-imagenet" in text
    elif suffix == ".tex":
        assert (
            text.startswith(r"\documentclass")
            and r"\textbf{" in text
            and text.rstrip().endswith(r"\end{document}")
        )
    elif suffix == ".csv":
        frame = pd.read_csv(output)
        assert len(frame) == 18 and {"mean", "ci95", "ci_low", "ci_high", "status", "gain"} <= set(
            frame
        )
        assert (
            frame.set_index(["model", "dataset", "strategy"]).loc[
                ("r18-imagenet", "cifar10", "partial-unfreeze"), "status"
            ]
            == "failed"
        )
    else:
        document = json.loads(text)
        assert document["suite"] == "quickstart" and len(document["summary"]) == 18
        assert (
            len(document["failures"]) == 4
            and document["average_rank"]["strategy"][0]["strategy"] == "linear-probe"
        )


def test_html_report_is_self_contained_and_plots_are_written_as_png(full_run, tmp_path):
    output, plots = tmp_path / "report.html", tmp_path / "plots"

    result = CliRunner().invoke(
        report_command, [str(full_run), "-o", str(output), "--plots", str(plots)]
    )
    text = output.read_text()

    assert result.exit_code == 0, result.output
    assert text.count('src="data:image/png;base64,') == 3
    assert "http://" not in text and "https://" not in text and "<link" not in text
    assert 'class="dataframe sortable"' in text and "addEventListener" in text
    assert "name = &quot;quickstart&quot;" in text  # the suite, from env.json (escaped)
    for name in ("accuracy_vs_params", "strategies", "heatmap"):
        with Image.open(plots / f"{name}.png") as image:
            assert image.format == "PNG" and image.width > 400


def test_report_command_prints_csv_lines_when_stdout_is_a_pipe(full_run):
    result = CliRunner().invoke(report_command, [str(full_run)])  # stdout: not a terminal

    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert rows and {"model", "dataset", "strategy", "mean", "ci95", "problems"} <= set(rows[0])
    assert "─" not in result.stdout and "│" not in result.stdout


def test_report_and_compare_take_json_like_the_other_commands(full_run):
    as_json = CliRunner().invoke(report_command, [str(full_run), "--json"])
    as_format = CliRunner().invoke(report_command, [str(full_run), "--format", "json"])
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.stdout) == json.loads(as_format.stdout)
    from tlbench.cli import cli

    both = CliRunner().invoke(cli, ["report", str(full_run), "--json", "--format", "md"])
    assert both.exit_code == 2 and "--json and --format md disagree" in both.stderr


def test_report_command_says_which_extension_it_cannot_read(full_run, tmp_path):
    result = CliRunner().invoke(
        report_command, [str(full_run), "-o", str(tmp_path / "report.docx")]
    )

    assert isinstance(result.exception, UserError)
    assert "report.docx: cannot tell the format from the extension" in str(result.exception)


def test_report_command_turns_a_skipped_line_into_one_stderr_line(tmp_path):
    run = write_sample_run(tmp_path / "run", seeds=(0,), torn_tail=True)

    result = CliRunner().invoke(report_command, [str(run), "--format", "csv"])

    assert result.exit_code == 0
    assert (
        result.stderr.strip()
        == f"warning: {run / 'cells.jsonl'}:19: skipped a truncated or garbled record"
    )


def test_cli_import_is_light_and_reports_never_import_torch(full_run):
    script = (
        "import sys\n"
        "import tlbench.report.commands\n"
        "assert 'pandas' not in sys.modules, 'commands imported pandas'\n"
        "from tlbench.report import compare, document, html, plots, terminal\n"
        "from tlbench.report import load_records, render_report\n"
        f"render_report(load_records({str(full_run)!r}), 'md')\n"
        "assert 'torch' not in sys.modules, 'the report imported torch'\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, env=env
    )

    assert result.returncode == 0, result.stderr


def test_records_without_a_run_id_take_the_run_directory_name(tmp_path):
    import json

    from tlbench.report.records import load_records

    run = tmp_path / "20261129-000000-abcd"
    run.mkdir()
    record = {
        "schema": 1,
        "suite": "s",
        "model": "m",
        "dataset": "d",
        "strategy": "x",
        "seed": 0,
        "status": "ok",
        "metrics": {"top1": 50.0},
        "cost": {},
    }
    (run / "cells.jsonl").write_text(json.dumps(record) + "\n")
    frame = load_records([run])
    assert list(frame["run_id"]) == ["20261129-000000-abcd"]


def test_tables_list_cells_in_suite_order_whatever_order_workers_finished_them(tmp_path):
    run = run_with(
        tmp_path / "run",
        {
            ("scratch", "digits", "linear-probe"): [50.0, 51.0],
            ("imagenet", "digits", "linear-probe"): [60.0, 61.0],
            ("imagenet", "fashion-mnist", "linear-probe"): [70.0, 71.0],
            ("scratch", "fashion-mnist", "linear-probe"): [40.0, 41.0],
        },
    )
    (run / "suite.toml").write_text(
        'name = "quickstart"\nseeds = [0, 1]\n'
        '[[models]]\nname = "efficientnet_lite0.in1k"\nid = "imagenet"\n'
        '[[models]]\nname = "scratch:tf_efficientnet_lite0"\nid = "scratch"\n'
        '[[datasets]]\nname = "fashion-mnist"\n[[datasets]]\nname = "digits"\n'
        '[[strategies]]\nname = "linear-probe"\n'
    )
    lines = (run / "cells.jsonl").read_text().splitlines()
    (run / "cells.jsonl").write_text("\n".join(reversed(lines)) + "\n")  # as two workers might

    records = load_records(run)

    assert list(zip(records["model"], records["dataset"], records["seed"], strict=True)) == [
        ("imagenet", "fashion-mnist", 0),
        ("imagenet", "fashion-mnist", 1),
        ("imagenet", "digits", 0),
        ("imagenet", "digits", 1),
        ("scratch", "fashion-mnist", 0),
        ("scratch", "fashion-mnist", 1),
        ("scratch", "digits", 0),
        ("scratch", "digits", 1),
    ]


def test_piped_terminal_table_keeps_every_column_and_ids_with_brackets_whole(tmp_path):
    strategies = ["linear-probe", "partial-unfreeze", "full-finetune", "surgical[block=first]"]
    run = run_with(
        tmp_path / "run",
        {("lite0-imagenet", "fashion-mnist", s): [80.0 + i] for i, s in enumerate(strategies)},
    )
    out = io.StringIO()

    render_terminal(load_records(run), Console(file=out, width=80))  # not a terminal: a pipe

    header = next(line for line in out.getvalue().splitlines() if "linear-probe" in line)
    assert all(s in header for s in strategies), header


def test_cells_of_an_entry_with_axis_options_take_that_entrys_place_in_the_suite(tmp_path):
    run = run_with(
        tmp_path / "run",
        {
            ("imagenet", "digits", "linear-probe"): [60.0],
            ("imagenet", "digits", "surgical[block=first]"): [61.0],
            ("imagenet", "digits", "surgical[block=last]"): [62.0],
        },
    )
    (run / "suite.toml").write_text(
        'name = "quickstart"\n[[models]]\nname = "efficientnet_lite0.in1k"\nid = "imagenet"\n'
        '[[datasets]]\nname = "digits"\n'
        '[[strategies]]\nname = "surgical"\nblock = ["first", "last"]\n'
        '[[strategies]]\nname = "linear-probe"\n'
    )

    records = load_records(run)

    assert list(records["strategy"]) == [
        "surgical[block=first]",
        "surgical[block=last]",
        "linear-probe",
    ]


def _with_training_fields(run: Path, still_improving: dict, tuning: dict) -> Path:
    """Add ``hparams.convergence`` ((model, strategy) -> still improving in seed 0) and
    ``hparams.tuning`` (strategy -> its record) as trained records carry them."""
    path = run / "cells.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    for record in records:
        rising = still_improving.get((record["model"], record["strategy"]), False)
        record["hparams"]["convergence"] = {
            "best_epoch": 3,
            "epochs_run": 3,
            "budget_epochs": 3,
            "stopped": "budget",
            "still_improving": rising and record["seed"] == 0,
        }
        record["hparams"]["tuning"] = tuning[record["strategy"]]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return run


def test_under_trained_cells_are_marked_in_every_format_and_the_tuning_budgets_shown(tmp_path):
    from tlbench.report.document import render_report

    run = _with_training_fields(
        write_sample_run(
            tmp_path / "run",
            models=["scratch-r18", "lite0-imagenet"],
            datasets=["cifar10"],
            strategies=["linear-probe", "full-finetune"],
            seeds=(0, 1),
        ),
        still_improving={("lite0-imagenet", "full-finetune"): True},
        tuning={
            "linear-probe": {
                "configurations": 15,
                "epochs": 0,
                "train_s": 2.0,
                "schedule": "solver",
            },
            "full-finetune": {
                "configurations": 3,
                "epochs": 24,
                "train_s": 90.0,
                "schedule": "asha",
            },
        },
    )
    records = load_records(run)
    tables = build_tables(records)
    full = rows(
        table(tables, "top1 by model and dataset: strategy full-finetune").text, "lite0-imagenet"
    )
    probe = rows(
        table(tables, "top1 by model and dataset: strategy linear-probe").text, "lite0-imagenet"
    )
    budget = table(tables, "Tuning budget per strategy").text.set_index("strategy")
    console = Console(record=True, width=200)
    render_terminal(records, console)

    assert full["cifar10"].endswith(" ↗") and "↗" not in probe["cifar10"]
    for fmt in ("md", "html"):
        assert "↗ under-trained: validation was still improving" in render_report(records, fmt)
    assert r"$\nearrow$" in render_report(records, "latex")
    assert "true" in render_report(records, "csv").lower()  # the still_improving column
    assert "↗" in console.export_text()
    assert budget.loc["linear-probe", "configurations tried"] == "15.0"
    assert budget.loc["full-finetune", "epochs tuning"] == "24.0"
    assert budget.loc["full-finetune", "seconds tuning"] == "90.0"


def test_random_init_probes_are_random_init_features_and_full_finetuning_is_from_scratch(
    tmp_path,
):
    run = write_sample_run(
        tmp_path / "run",
        models=["scratch-r18", "lite0-imagenet"],
        datasets=["cifar10"],
        strategies=["linear-probe", "full-finetune"],
        seeds=(0,),
    )
    tables = build_tables(load_records(run))

    probe = table(tables, "top1 by model and dataset: strategy linear-probe").text
    full = table(tables, "top1 by model and dataset: strategy full-finetune").text

    assert "scratch-r18 (random-init features)" in list(probe["model"])
    assert "scratch-r18 (trained from scratch)" in list(full["model"])
    assert (
        "random-init features"
        in table(tables, "top1 by model and dataset: strategy linear-probe").note
    )


def test_records_without_convergence_or_tuning_fields_still_render_without_marks(full_run):
    tables = build_tables(load_records(full_run))
    text = "\n".join(t.to_markdown() for t in tables)

    assert "↗" not in text
