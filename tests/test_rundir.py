"""The run directory has one owner, ``RunDir``: it chooses the directory, checks whose it is,
locks it, writes env.json once and reads env.json and the records once per process."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from helpers import request, tiny_host, tiny_suite

from tlbench import rundir
from tlbench.errors import UserError
from tlbench.rundir import ResultsStore, RunDir


@pytest.fixture
def reads(monkeypatch) -> Counter:
    """How often each file of a run directory is read from disk."""
    counted: Counter = Counter()
    real = rundir.read_bytes_nofollow

    def counting(path):
        data = real(path)  # FileNotFoundError: nothing was read
        counted[Path(path).name] += 1
        return data

    monkeypatch.setattr(rundir, "read_bytes_nofollow", counting)
    return counted


def _env(created_at: str, suite: str = "s") -> str:
    return json.dumps({"created_at": created_at, "suite_name": suite})


def test_env_json_is_read_once_and_again_only_when_it_changed(tmp_path, reads):
    (tmp_path / "env.json").write_text(_env("2026-01-01T00:00:00+00:00"))
    run = RunDir(tmp_path)
    assert run.environment()["created_at"] == "2026-01-01T00:00:00+00:00"
    run.check_owner("s")
    assert run.suite_changed("any") is None  # no suite hash recorded: nothing to compare
    assert reads["env.json"] == 1
    (tmp_path / "env.json").write_text(_env("2026-02-02T00:00:00+00:00-changed"))
    assert run.environment()["created_at"].endswith("changed")
    assert reads["env.json"] == 2


def test_what_a_store_appends_is_kept_and_another_writer_is_seen(tmp_path, reads):
    store = ResultsStore(tmp_path)
    assert store.read() == []
    store.append({"config_hash": "a", "status": "failed"})
    store.append({"config_hash": "a", "status": "ok"})
    assert store.latest_by_hash()["a"]["status"] == "ok"
    assert reads["cells.jsonl"] == 0, "nothing to read: the file did not exist, then was ours"
    ResultsStore(tmp_path).append({"config_hash": "b", "status": "ok"})  # another process
    assert [r["config_hash"] for r in store.read()] == ["a", "a", "b"]
    assert store.numbered()[-1][0] == 3  # line numbers as a fresh reader counts them
    assert reads["cells.jsonl"] == 1


def test_resume_latest_is_the_run_started_last_by_its_env_json(tmp_path, reads):
    suite_dir = tmp_path / "results" / "s"
    for name, created in (("b-older", "2026-01-01"), ("a-newer", "2026-03-01")):
        (suite_dir / name).mkdir(parents=True)
        (suite_dir / name / "env.json").write_text(_env(created))
    (suite_dir / "damaged").mkdir()
    (suite_dir / "damaged" / "env.json").write_text("{not json")
    run = RunDir.choose("s", resume="latest", results_root=tmp_path / "results")
    assert run.path == suite_dir / "a-newer"
    run.check_owner("s")
    assert reads["env.json"] == 3, "each candidate read once, the chosen one not again"


def test_a_run_directory_of_another_suite_is_refused_untouched(tmp_path):
    (tmp_path / "env.json").write_text(_env("2026-01-01", suite="other"))
    with pytest.raises(UserError, match="holds suite 'other', not 's'; choose another --out"):
        RunDir(tmp_path).check_owner("s")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["env.json"]


def test_a_run_reads_env_json_and_cells_jsonl_once_and_writes_env_json_once(
    tmp_path, reads, monkeypatch
):
    from tlbench.runner import run_suite

    written: Counter = Counter()
    real_write = rundir.atomic_write_text

    def counting_write(path, text):
        written[Path(path).name] += 1
        real_write(path, text)

    monkeypatch.setattr(rundir, "atomic_write_text", counting_write)
    suite = tiny_suite(tmp_path / "s.toml", seeds=(0,))
    first = run_suite(request(tmp_path, suite), tiny_host())
    assert first.exit_code == 0 and len(first.records) == 2
    assert written["env.json"] == 1
    assert reads["env.json"] == 0 and reads["cells.jsonl"] == 0, "a new run reads nothing back"

    reads.clear()
    resumed = run_suite(request(tmp_path, suite), tiny_host())
    assert resumed.skipped == 2 and resumed.records == first.records
    assert reads == {"env.json": 1, "cells.jsonl": 1}
    assert written["env.json"] == 2
    env = json.loads((tmp_path / "run" / "env.json").read_text())
    assert env["suite_name"] == "tiny" and len(env["resumes"]) == 1
    assert (tmp_path / "run" / "suite.toml").read_bytes() == suite.read_bytes()
