"""compare on real runs: the same suite rerun with disjoint seeds is not a regression, and a
configuration that really got worse (far fewer training images) is flagged."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from tlbench.report.commands import compare_command
from tlbench.testing import run_tiny_suite

SUITE = """
name = "rerun"
seeds = [{seeds}]

[[models]]
name = "pixels"

[[datasets]]
name = "digits"
train_size = {train_size}

[[strategies]]
name = "linear-probe"
"""


def run(tmp_path: Path, name: str, seeds: str, train_size: int) -> Path:
    place = tmp_path / name
    place.mkdir()
    run_tiny_suite(
        place, SUITE.format(seeds=seeds, train_size=train_size), cache_dir=tmp_path / "cache"
    )
    return place / "run"


def test_a_rerun_with_disjoint_seeds_passes_and_fewer_training_images_fail(tmp_path):
    first = run(tmp_path, "first", "0, 1", 400)
    rerun = run(tmp_path, "rerun", "2, 3", 400)
    starved = run(tmp_path, "starved", "2, 3", 30)

    same = CliRunner().invoke(
        compare_command, [str(first), str(rerun), "--format", "json", "--fail-on-regression"]
    )
    worse = CliRunner().invoke(
        compare_command,
        [str(first), str(starved), "--format", "md", "--allow-mismatch", "--fail-on-regression"],
    )

    assert same.exit_code == 0, same.output
    assert '"scope": "configurations"' in same.output
    assert worse.exit_code == 1, worse.output
    assert "**regression" in worse.output
