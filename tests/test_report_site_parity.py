"""``tlbench report`` and ``tlbench publish`` show the same interval and the same gain over
training from scratch for every cell: both call ``tlbench.report.stats.cell_interval`` on the
same seeds and stored predictions, and both measure gains against the trained-from-scratch cell
chosen by ``tlbench.report.records.reference_position``."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from click.testing import CliRunner

from tlbench.publish.command import publish_command
from tlbench.report.document import render_report
from tlbench.report.records import load_records
from tlbench.report.samples import write_sample_run
from tlbench.report.tables import summarize, with_comparisons

REFERENCE = Path(__file__).resolve().parent.parent / "results" / "reference" / "quickstart"


def published_rows(run: Path, site: Path) -> dict[tuple, dict]:
    """(model, dataset, strategy) -> the row of the site's leaderboard downloads."""
    result = CliRunner().invoke(publish_command, [str(run), "-o", str(site)])
    assert result.exit_code == 0, result.output
    found = {}
    for path in sorted(site.glob("suites/*/leaderboard-*.csv")):
        with path.open(newline="") as handle:
            for row in csv.DictReader(handle):
                found[(row["model"], row["dataset"], row["strategy"])] = row
    return found


def published_intervals(run: Path, site: Path) -> dict[tuple, tuple[float, str, str]]:
    """(model, dataset, strategy) -> (ci95, one_training_draw, still_improving) from the site's
    leaderboard downloads."""
    return {
        key: (float(row["ci95"]), row["one_training_draw"], row["still_improving"])
        for key, row in published_rows(run, site).items()
    }


def published_gains(run: Path, site: Path) -> dict[tuple, tuple[float, str]]:
    """(model, dataset, strategy) -> (gain, the trained-from-scratch cell it is over), for the
    cells the site gives a gain."""
    return {
        key: (float(row["gain"]), row["gain_reference"])
        for key, row in published_rows(run, site).items()
        if row["gain"]
    }


def reported_gains(run: Path) -> dict[tuple, tuple[float, str]]:
    records = load_records(run)
    summary = with_comparisons(summarize(records), records, "top1")
    return {
        (row["model"], row["dataset"], row["strategy"]): (
            round(row["gain"], 4),
            row["gain_reference"],
        )
        for _, row in summary.iterrows()
        if row["gain"] == row["gain"]
    }


def reported_intervals(run: Path) -> dict[tuple, tuple[float, str, str]]:
    summary = summarize(load_records(run))
    return {
        (row["model"], row["dataset"], row["strategy"]): (
            round(row["ci95"], 4),
            str(bool(row["one_draw"])).lower(),
            str(bool(row["still_improving"])).lower(),
        )
        for _, row in summary.iterrows()
    }


@pytest.mark.skipif(not REFERENCE.is_dir(), reason="no reference run in this checkout")
def test_the_reference_run_has_the_same_interval_in_the_report_and_on_the_site(tmp_path):
    site = published_intervals(REFERENCE, tmp_path / "site")
    report = reported_intervals(REFERENCE)

    assert site.keys() == report.keys() and len(site) == 16
    assert site == report


def test_several_seeds_with_predictions_have_the_same_interval_in_report_and_site(tmp_path):
    run = write_sample_run(
        tmp_path / "run",
        models=["scratch-r18", "lite0-imagenet"],
        datasets=["fashion-mnist"],
        seeds=(0, 1, 2),
        predictions=True,
    )
    site = published_intervals(run, tmp_path / "site")
    report = reported_intervals(run)

    assert site.keys() == report.keys() and len(site) == 6
    assert site == report
    assert {draw for _, draw, _ in site.values()} == {"false"}


@pytest.mark.skipif(not REFERENCE.is_dir(), reason="no reference run in this checkout")
def test_the_reference_run_has_the_same_gain_over_scratch_in_the_report_and_on_the_site(
    tmp_path,
):
    site = published_gains(REFERENCE, tmp_path / "site")
    report = reported_gains(REFERENCE)

    # Pretrained models under three strategies on two datasets; random-init models and trivial
    # baselines get none.
    assert site.keys() == report.keys() and len(site) == 6
    assert site == report
    assert {reference for _, reference in site.values()} == {"lite0-scratch / full-finetune"}


def test_the_report_inlines_the_one_stylesheet_and_script_the_site_links(tmp_path):
    run = write_sample_run(
        tmp_path / "run", models=["scratch-r18", "lite0-imagenet"], datasets=["fashion-mnist"]
    )
    published_rows(run, tmp_path / "site")
    report = render_report(load_records(run), "html", plots=[])

    for name in ("tlbench.css", "tlbench.js"):
        shared = (tmp_path / "site" / "assets" / name).read_text(encoding="utf-8")
        assert shared.strip() and shared in report
    assert report.count("<style>") == 1 and report.count("<script>") == 1
