"""Resume and interrupts, with real processes: a run killed at any moment loses at most the cells
in flight, and resuming it yields the table of an uninterrupted run, without duplicates."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from helpers import PLUGIN, cli, metrics_by_cell, request, subprocess_env, tiny_host, tiny_suite

from tlbench.results import read_records


def start_run(tmp_path: Path, suite: Path, run_dir: Path, *extra: str) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "tlbench.cli",
        "--plugin",
        PLUGIN,
        "run",
        str(suite),
        "--out",
        str(run_dir),
        "--device",
        "cpu",
        "-q",
        *extra,
    ]
    return subprocess.Popen(
        command,
        env=subprocess_env(tmp_path / "cache"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(proc: subprocess.Popen, done) -> None:
    """Wait until ``done()`` holds, failing if the process exits first."""
    while not done():
        try:
            proc.wait(timeout=0.02)
        except subprocess.TimeoutExpired:
            continue
        raise AssertionError(
            f"the run exited ({proc.returncode}) before the awaited moment:\n{proc.stderr.read()}"
        )


def records_in(run_dir: Path) -> list[dict]:
    return read_records(run_dir / "cells.jsonl")


@pytest.mark.slow
def test_sigkill_then_resume_equals_an_uninterrupted_run_without_duplicates(tmp_path):
    from tlbench.runner import run_suite

    suite = tiny_suite(tmp_path / "s.toml", seeds=(0, 1), work=3)
    reference = run_suite(request(tmp_path / "ref", suite, out_dir=tmp_path / "ref"), tiny_host())
    run_dir = tmp_path / "run"
    proc = start_run(tmp_path, suite, run_dir)
    wait_for(proc, lambda: len(records_in(run_dir)) >= 1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    survived = records_in(run_dir)
    assert 1 <= len(survived) < 4, "killed mid-run: some cells recorded, some not"

    result = cli("run", str(suite), "--resume", str(run_dir), "--device", "cpu", "--json", "-q")
    assert result.exit_code == 0, result.output
    records = records_in(run_dir)
    assert max(Counter(r["config_hash"] for r in records).values()) == 1, (
        "no cell is recorded twice"
    )
    assert len(records) == 4
    assert metrics_by_cell(records) == metrics_by_cell(reference.records)
    env = (run_dir / "env.json").read_text()
    assert '"resumes"' in env


def test_ctrl_c_finishes_the_cell_in_flight_exits_130_and_the_rest_resumes(tmp_path):
    suite = tiny_suite(tmp_path / "s.toml", seeds=(0, 1), work=3)
    run_dir = tmp_path / "run"
    proc = start_run(tmp_path, suite, run_dir)
    wait_for(proc, lambda: len(records_in(run_dir)) >= 1)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "interrupt: finishing the cells in flight" in stderr and "--resume" in stderr
    done = records_in(run_dir)
    assert 1 <= len(done) < 4 and all(r["status"] == "ok" for r in done), (
        "the cell in flight finished normally"
    )
    assert "run interrupted" in (run_dir / "run.log").read_text()

    resumed = cli("run", str(suite), "--resume", str(run_dir), "--device", "cpu", "-q")
    assert resumed.exit_code == 0, resumed.output
    records = records_in(run_dir)
    assert len(records) == 4 and len({r["config_hash"] for r in records}) == 4


def test_a_second_ctrl_c_stops_at_once_and_records_the_cell_in_flight_as_interrupted(tmp_path):
    suite = tiny_suite(tmp_path / "s.toml", seeds=(0,), work=400)
    run_dir = tmp_path / "run"
    proc = start_run(tmp_path, suite, run_dir)
    log = run_dir / "run.log"
    wait_for(proc, lambda: log.exists() and " start " in log.read_text())
    proc.send_signal(signal.SIGINT)
    # Two signals in quick succession may coalesce: wait until the first one was handled.
    wait_for(proc, lambda: "interrupt: finishing" in log.read_text())
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    records = records_in(run_dir)
    assert [r["status"] for r in records] == ["interrupted"]
    assert records[0]["strategy"] == "ridge" and records[0]["error"]["type"] == "KeyboardInterrupt"

    plan = cli("run", str(suite), "--resume", str(run_dir), "--dry-run", "--json")
    assert [p["state"] for p in __import__("json").loads(plan.stdout)["plan"]] == [
        "pending",
        "pending",
    ]
