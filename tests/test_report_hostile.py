"""`tlbench report` on hostile or mistaken input (issue 27): a CSV that no spreadsheet
evaluates, an unknown --metric and a --plots that is not a folder refused in one line before
any work, and a full disk answered with exit code 3. Uses the reference run's records."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from tlbench.cli import cli

REFERENCE = Path(__file__).resolve().parent.parent / "results" / "reference" / "quickstart"


def report(*args) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["report", *(str(a) for a in args)])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def run_dir(tmp_path) -> Path:
    """The reference run with one model renamed to look like a spreadsheet formula."""
    run = tmp_path / "run"
    shutil.copytree(REFERENCE, run, ignore=shutil.ignore_patterns("plots", "report.*"))
    lines = []
    for line in (run / "cells.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["model"] == "pixels":
            record["model"] = "=cmd|' /C calc'!A0"
        lines.append(json.dumps(record))
    (run / "cells.jsonl").write_text("\n".join(lines) + "\n")
    return run


def test_report_csv_escapes_text_that_starts_like_a_formula(run_dir):
    code, out, _ = report(run_dir, "--format", "csv")
    assert code == 0
    rows = list(csv.reader(out.splitlines()))
    assert "'=cmd|' /C calc'!A0" in {cell for row in rows for cell in row}
    assert not any(cell.startswith(("=", "+", "@")) for row in rows for cell in row)


def test_an_unknown_metric_is_one_line_and_exit_2(run_dir):
    code, out, err = report(run_dir, "--metric", "top5")
    assert code == 2 and out == ""
    assert err.strip() == "error: --metric 'top5' is in no record; recorded metrics: top1, val_top1"


def test_plots_into_something_that_is_not_a_folder_is_one_line_before_any_work(run_dir):
    code, out, err = report(run_dir, "--plots", "/dev/null")
    assert code == 2 and out == ""
    assert err.strip() == "error: /dev/null: exists and is not a folder; --plots expects a folder"


def test_a_report_onto_a_full_disk_is_exit_code_3(run_dir):
    code, _, err = report(run_dir, "--format", "md", "-o", "/dev/full")
    assert code == 3
    assert err.strip() == "error: /dev/full: cannot write the output file: No space left on device"
