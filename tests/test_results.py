"""The results store: one JSON line per finished cell, durable, safe with concurrent writers."""

from __future__ import annotations

import fcntl
import json
import signal
import subprocess
import sys

import pytest

from tlbench.errors import UserError
from tlbench.results import (
    ResultsStore,
    environment,
    prepare_run_dir,
    read_records,
    write_environment,
)

# A writer killed mid-record: its second record's bytes are half written (the write is split
# the way a signal or a full disk splits os.write) when it is SIGKILLed, holding the lock.
TORN_WRITER = """
import os, sys
from tlbench.results import ResultsStore

store = ResultsStore(sys.argv[1])
store.append({"config_hash": "before", "status": "ok"})
real_write = os.write

def write_half_then_hang(fd, data):
    written = real_write(fd, bytes(data[: len(data) // 2]))
    print("torn", flush=True)
    sys.stdin.read()  # until killed
    return written

os.write = write_half_then_hang
store.append({"config_hash": "torn", "status": "ok", "payload": "x" * 20000})
"""
# Large records, so two writers racing for the file would interleave if appends were not atomic.
WRITER = """
import sys
from tlbench.results import ResultsStore

store = ResultsStore(sys.argv[1])
for i in range(10):
    store.append({"config_hash": f"{sys.argv[2]}-{i}", "status": "ok", "payload": "x" * 20000})
"""


def test_records_are_appended_and_read_back(tmp_path):
    store = ResultsStore(tmp_path)
    store.append({"config_hash": "a", "status": "failed"})
    store.append({"config_hash": "a", "status": "ok"})
    store.append({"config_hash": "b", "status": "ok"})
    assert [r["config_hash"] for r in store.read()] == ["a", "a", "b"]
    assert store.latest_by_hash()["a"]["status"] == "ok", "a retried cell supersedes its failure"


def test_a_writer_killed_mid_record_loses_only_that_record_while_others_append(tmp_path):
    torn = subprocess.Popen(
        [sys.executable, "-c", TORN_WRITER, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    with torn:
        try:
            assert torn.stdout.readline() == "torn\n", "the writer never reached its half record"
            with open(tmp_path / "cells.jsonl", "rb") as cells, pytest.raises(BlockingIOError):
                fcntl.flock(cells, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a record in progress holds it
            # Started while the torn writer holds the lock: they wait, then race each other.
            writers = [
                subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), name])
                for name in "ab"
            ]
        finally:
            torn.kill()
    assert torn.returncode == -signal.SIGKILL
    assert [w.wait() for w in writers] == [0, 0]

    with pytest.warns(UserWarning) as caught:
        records = read_records(tmp_path / "cells.jsonl")
    assert [str(w.message) for w in caught] == [
        f"{tmp_path / 'cells.jsonl'}:2: skipped a truncated or garbled record"
    ]
    hashes = [r["config_hash"] for r in records]
    assert hashes[0] == "before"
    assert sorted(hashes) == sorted(["before"] + [f"{w}-{i}" for w in "ab" for i in range(10)])


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
