"""``tlbench report`` and ``tlbench compare``. Each command only parses options and delegates
to ``tlbench.report``; the heavy imports happen when a command runs, not at ``--help``."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from tlbench.errors import UserError

FORMAT_NAMES = ("md", "html", "latex", "csv", "json")
FORMAT_HELP = "Output format (default: from the -o extension; without -o, a table in a terminal and csv in a pipe)."
JSON_HELP = "Print JSON (the same as --format json)."


def _chosen_format(fmt: str | None, as_json: bool, output: Path | None) -> str | None:
    """--json is --format json; without either (and without -o), a pipe or a file gets plain
    csv lines, a terminal the table."""
    if as_json:
        if fmt not in (None, "json"):
            raise UserError(f"--json and --format {fmt} disagree; give one of them")
        return "json"
    if fmt is None and output is None and not sys.stdout.isatty():
        return "csv"
    return fmt


@click.command("report")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(FORMAT_NAMES), help=FORMAT_HELP)
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the report to this file.",
)
@click.option(
    "--plots",
    "plots_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Also write the plots as PNG files into this directory.",
)
@click.option(
    "--metric", default="top1", show_default=True, help="Which recorded metric the tables show."
)
def report_command(
    run_dirs: tuple[Path, ...],
    fmt: str | None,
    as_json: bool,
    output: Path | None,
    plots_dir: Path | None,
    metric: str,
) -> None:
    """Tables and plots from one or more run directories.

    Several directories are merged (a later one wins for a cell recorded in both). Without -o
    and --format the main table is printed (in a pipe: the summary as csv); `--format md`
    without -o prints Markdown, `--json` JSON.
    """
    fmt = _chosen_format(fmt, as_json, output)
    from tlbench.report.document import format_from_path, render_report
    from tlbench.report.records import load_env, load_records

    if plots_dir is not None and plots_dir.exists() and not plots_dir.is_dir():
        raise UserError(f"{plots_dir}: exists and is not a folder; --plots expects a folder")
    with _warnings_to_stderr():
        records = load_records(run_dirs)
    if f"metrics.{metric}" not in records:  # the terminal table shows top1, but a typo is a typo
        known = sorted(c.removeprefix("metrics.") for c in records if c.startswith("metrics."))
        raise UserError(
            f"--metric {metric!r} is in no record; recorded metrics: {', '.join(known) or 'none'}"
        )
    envs = {str(run_dir): load_env(run_dir) for run_dir in run_dirs}
    fmt = fmt or (format_from_path(output) if output is not None else None)
    plots = None
    if plots_dir is not None or fmt == "html":
        from tlbench.report.plots import render_plots, save_plots

        plots = render_plots(records, metric)  # drawn once for both the page and the files
    from tlbench.report.transferability import section_for_runs

    estimates = section_for_runs(records, run_dirs)
    if fmt is None:
        _print_table(records)
        if estimates is not None:
            from rich.console import Console

            from tlbench.report.transferability import render_transferability

            render_transferability(estimates, Console())
    else:
        text = render_report(
            records, fmt, envs=envs, metric=metric, plots=plots, estimates=estimates
        )
        if output is None:
            click.echo(text, nl=False)
        else:
            click.echo(f"wrote {write_text(output, text)}")
    if plots_dir is not None:
        from tlbench.safeio import fault

        try:
            written = save_plots(plots, plots_dir)
        except OSError as exc:
            raise fault(exc.filename or plots_dir, exc, "write the plots") from None
        for path in written:
            click.echo(f"wrote {path}")


@click.command("compare")
@click.argument("run_a", type=click.Path(path_type=Path))
@click.argument("run_b", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(FORMAT_NAMES), help=FORMAT_HELP)
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the comparison to this file.",
)
@click.option(
    "--threshold",
    type=float,
    default=0.0,
    show_default=True,
    help="Smallest change in points worth flagging, on top of significance.",
)
@click.option(
    "--alpha",
    type=float,
    default=0.05,
    show_default=True,
    help="Significance level a change must reach (Holm-corrected over the cells) to be flagged.",
)
@click.option(
    "--allow-mismatch",
    is_flag=True,
    help="Compare cells whose configuration or test split differ between the runs (refused by default).",
)
@click.option(
    "--metric", default="top1", show_default=True, help="Which recorded metric to compare."
)
@click.option(
    "--fail-on-regression",
    is_flag=True,
    help="Exit with status 1 when any cell regressed (for CI).",
)
def compare_command(
    run_a: Path,
    run_b: Path,
    fmt: str | None,
    as_json: bool,
    output: Path | None,
    threshold: float,
    alpha: float,
    allow_mismatch: bool,
    metric: str,
    fail_on_regression: bool,
) -> None:
    """Compare run B against run A (the reference), cell by cell.

    Tests each cell on the test items both runs scored (McNemar's exact test, summed over the
    seeds both ran; the paired t-test over seeds for runs without stored predictions), corrects
    for the number of cells (Holm) and flags regressions (red) and improvements (green) only
    where the corrected p is below --alpha. Cells run with another configuration or test split
    are refused unless --allow-mismatch. --fail-on-regression exits 1 on a flagged regression.
    In a pipe, without --format, the cells are printed as csv.
    """
    fmt = _chosen_format(fmt, as_json, output)
    from tlbench.report.compare import compare, render_comparison

    with _warnings_to_stderr():
        comparison = compare(
            run_a,
            run_b,
            threshold=threshold,
            metric=metric,
            alpha=alpha,
            allow_mismatch=allow_mismatch,
        )
    if output is not None:
        from tlbench.report.document import format_from_path

        text = render_comparison(comparison, fmt or format_from_path(output))
        click.echo(f"wrote {write_text(output, text)}")
    elif fmt is not None:
        click.echo(render_comparison(comparison, fmt), nl=False)
    else:
        from rich.console import Console

        from tlbench.report.terminal import render_comparison_terminal

        render_comparison_terminal(comparison, Console())
    if fail_on_regression and not comparison.regressions.empty:
        raise click.exceptions.Exit(1)


def write_text(path: Path, text: str) -> Path:
    from tlbench.safeio import fault

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:  # a full or read-only disk is exit code 3, a bad path 2
        raise fault(path, exc, "write the output file") from None
    return path


def _print_table(records) -> None:
    from rich.console import Console

    from tlbench.report.terminal import render_terminal

    render_terminal(records, Console())


def _warnings_to_stderr():
    """A skipped line of cells.jsonl is worth one line on stderr, not a Python warning dump."""
    from tlbench.safeio import warnings_as_lines

    return warnings_as_lines(sys.stderr)
