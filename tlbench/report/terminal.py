"""Rich tables for the terminal: the run's main comparison and the comparison of two runs."""

from __future__ import annotations

import pandas as pd
from rich.console import Console
from rich.table import Table as RichTable
from rich.text import Text

from tlbench.report.compare import BAD_FLAGS, Comparison, marks_line, scope_line
from tlbench.report.tables import cell_marks, cell_text, failures, marks_note, summarize


def render_terminal(records: pd.DataFrame, console: Console) -> None:
    """Print rows model x dataset, one column per strategy, ``mean ± half the 95% interval``
    over test items and seeds (the best strategy of each row in bold), then every cell that did
    not finish ok."""
    if records.empty:
        console.print("No cell has finished yet.")
        return
    summary = summarize(records)
    strategies = list(summary["strategy"].unique())
    suites = ", ".join(map(str, records["suite"].unique()))
    table = RichTable(
        title=f"{suites}: top1 (%), mean ± 95% interval over test items and seeds",
        title_justify="left",
    )
    rows = []
    for (model, dataset), part in summary.groupby(["model", "dataset"], sort=False):
        cells = part.set_index("strategy")
        best = cells["mean"].max()
        rows.append(
            (Text(model), Text(dataset), *(_cell(cells, strategy, best) for strategy in strategies))
        )
    # Labels never wrap; in a narrow terminal the strategy headers wrap instead, so the table
    # stays readable at 80 columns.
    for i, name in enumerate(("model", "dataset")):
        table.add_column(name, no_wrap=True, min_width=max(len(r[i].plain) for r in rows))
    # A terminal wraps the headers to fit; piped into a file or a log, the table keeps its
    # natural width (whole headers) instead of losing the columns past 80.
    wide = not console.is_terminal
    for j, strategy in enumerate(strategies, start=2):
        widest = max(len(r[j].plain) for r in rows)
        table.add_column(
            Text(strategy),  # ids such as surgical[block=first] are not markup
            justify="right",
            overflow="fold",
            min_width=max(widest, len(strategy)) if wide else widest,
        )
    for row in rows:
        table.add_row(*row)
    console.print(table, width=10_000 if wide else None, crop=not wide)
    note = marks_note(summary)
    if note:
        console.print(Text(note, style="dim"))
    _print_failures(records, console)


def _cell(cells: pd.DataFrame, strategy: str, best: float) -> Text:
    if strategy not in cells.index:
        return Text("—", style="dim")  # excluded by the suite
    row = cells.loc[strategy]
    if row["n"] == 0:
        return Text(row["status"], style="red")
    style = "bold" if row["mean"] == best else ""
    marks = cell_marks(row)
    text = cell_text(row) + (f" {marks}" if marks else "")
    return Text(text, style=style + (" yellow" if row["problems"] else ""))


def _print_failures(records: pd.DataFrame, console: Console) -> None:
    failed = failures(records)
    if failed.empty:
        return
    console.print(Text(f"{len(failed)} cell(s) did not finish:", style="bold red"))
    for _, row in failed.iterrows():
        line = f"  {row['model']} / {row['dataset']} / {row['strategy']} / seed {row['seed']}: {row['status']}"
        console.print(Text(line + (f" - {row['error']}" if row["error"] else "")))


def render_comparison_terminal(comparison: Comparison, console: Console) -> None:
    """Print the per-cell comparison; regressions red, improvements green."""
    table = RichTable(
        title=f"{comparison.suite}: B against A ({comparison.metric}, points)", title_justify="left"
    )
    for column in ("model", "dataset", "strategy", "A", "B", "delta", "p", "flag"):
        numeric = column in ("A", "B", "delta", "p")
        table.add_column(column, justify="right" if numeric else "left", no_wrap=numeric)
    for _, row in comparison.cells.iterrows():
        style = "red" if row["flag"] in BAD_FLAGS else "green" if row["flag"] else ""
        delta = f"{row['delta']:+.2f}" if pd.notna(row["delta"]) else "—"
        p_value = f"{row['p_holm']:.3f}" if pd.notna(row["p_holm"]) else "n/a"
        cells = (
            row["model"],
            row["dataset"],
            row["strategy"],
            row["text_a"],
            row["text_b"],
            delta,
            p_value,
            row["flag"],
        )
        table.add_row(*(Text(str(cell)) for cell in cells), style=style)
    console.print(table)
    console.print(f"A = {comparison.run_a}\nB = {comparison.run_b}")
    regressions, improvements = len(comparison.regressions), len(comparison.improvements)
    console.print(
        Text(f"{regressions} regression(s)", style="bold red" if regressions else ""),
        Text(f"{improvements} improvement(s)", style="bold green" if improvements else ""),
        Text(
            "(p: Welch's t over the seeds' accuracies with 2+ seeds a side, else McNemar over "
            f"test items; Holm-corrected; flagged when p < {comparison.alpha:g}"
            + (f" and |delta| >= {comparison.threshold:g} points)" if comparison.threshold else ")")
        ),
    )
    for line in (scope_line(comparison), marks_line(comparison)):
        if line:
            console.print(Text(line, style="yellow"))
    for label, keys in (("only in A", comparison.only_a), ("only in B", comparison.only_b)):
        if keys:
            console.print(
                Text(
                    f"{len(keys)} cell(s) {label}: " + ", ".join(" / ".join(key) for key in keys),
                    style="yellow",
                )
            )
