"""The results store: one JSON line per finished cell, durable, safe with concurrent writers."""

from __future__ import annotations

import json
import multiprocessing as mp

import pytest

from tlbench.errors import UserError
from tlbench.results import (
    ResultsStore,
    environment,
    prepare_run_dir,
    read_records,
    write_environment,
)


def _write_many(run_dir, writer: int, count: int) -> None:
    store = ResultsStore(run_dir)
    for i in range(count):
        # Large records make interleaving likely if writes were not atomic.
        store.append({"config_hash": f"{writer}-{i}", "status": "ok", "payload": "x" * 20000})


def test_records_are_appended_and_read_back(tmp_path):
    store = ResultsStore(tmp_path)
    store.append({"config_hash": "a", "status": "failed"})
    store.append({"config_hash": "a", "status": "ok"})
    store.append({"config_hash": "b", "status": "ok"})
    assert [r["config_hash"] for r in store.read()] == ["a", "a", "b"]
    assert store.latest_by_hash()["a"]["status"] == "ok", "a retried cell supersedes its failure"


def test_concurrent_writers_never_interleave_lines(tmp_path):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_write_many, args=(tmp_path, w, 25)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    lines = (tmp_path / "cells.jsonl").read_text().splitlines()
    assert len(lines) == 75
    assert {json.loads(line)["config_hash"] for line in lines} == {
        f"{w}-{i}" for w in range(3) for i in range(25)
    }


def test_a_torn_last_line_is_skipped_with_a_warning_and_the_next_record_starts_clean(tmp_path):
    store = ResultsStore(tmp_path)
    store.append({"config_hash": "a", "status": "ok"})
    with open(store.path, "a") as fh:
        fh.write('{"config_hash": "b", "sta')  # a process killed mid-write
    with pytest.warns(UserWarning, match=r"cells.jsonl:2: skipped a truncated"):
        assert [r["config_hash"] for r in read_records(store.path)] == ["a"]
    store.append({"config_hash": "c", "status": "ok"})
    with pytest.warns(UserWarning):
        assert [r["config_hash"] for r in store.read()] == ["a", "c"]


def test_unwritable_results_directory_fails_before_work(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(UserError, match="is not writable"):
        prepare_run_dir(blocker / "run")


def test_environment_is_recorded_once_and_resumes_are_appended(tmp_path):
    env = environment(
        [{"name": "p", "version": "1", "hooks": []}], "name='x'", "x.toml", argv=["tlbench"]
    )
    assert {"packages", "plugins", "git_revision", "hardware", "suite"} <= set(env)
    assert env["packages"]["torch"]
    write_environment(tmp_path, env)
    write_environment(tmp_path, env)
    stored = json.loads((tmp_path / "env.json").read_text())
    assert stored["suite"] == "name='x'"
    assert len(stored["resumes"]) == 1
