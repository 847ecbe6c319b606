"""The results store: one JSON line per finished cell, durable, safe with concurrent writers."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import subprocess
import sys
import warnings

import pytest

from tlbench.errors import UserError
from tlbench.rundir import ResultsStore, RunDir, environment, read_records
from tlbench.safeio import StorageError, TlbenchWarning

# A writer killed mid-record: its second record's bytes are half written (the write is split
# the way a signal or a full disk splits os.write) when it is SIGKILLed, holding the lock.
TORN_WRITER = """
import os, sys
from tlbench.rundir import ResultsStore

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
from tlbench.rundir import ResultsStore

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


def test_a_torn_last_line_is_skipped_with_one_warning_and_the_next_record_starts_clean(tmp_path):
    store = ResultsStore(tmp_path)
    store.append({"config_hash": "a", "status": "ok"})
    with open(store.path, "a") as fh:
        fh.write('{"config_hash": "b", "sta')  # a process killed mid-write
    with pytest.warns(TlbenchWarning, match=r"cells.jsonl:2: skipped a truncated"):
        assert [r["config_hash"] for r in read_records(store.path)] == ["a"]
    store.append({"config_hash": "c", "status": "ok"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same problem is not reported again
        assert [r["config_hash"] for r in store.read()] == ["a", "c"]
        assert [r["config_hash"] for r in store.read()] == ["a", "c"]


def test_a_record_the_disk_cannot_hold_is_taken_back_whole(tmp_path, monkeypatch):
    store = ResultsStore(tmp_path)
    store.append({"config_hash": "a", "status": "ok"})
    before = store.path.read_bytes()
    real_write = os.write

    def write_a_little_then_fill(fd, data):
        real_write(fd, bytes(data[:10]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", write_a_little_then_fill)
    with pytest.raises(StorageError) as info:
        store.append({"config_hash": "b", "status": "ok", "payload": "x" * 100})
    monkeypatch.undo()
    assert str(info.value) == f"{store.path}: cannot append a record: No space left on device"
    assert info.value.exit_code == 3
    assert store.path.read_bytes() == before, "no torn line is left behind"


@pytest.mark.parametrize("name", ["cells.jsonl", ".run.lock", ".write-probe"])
def test_a_link_planted_in_a_run_directory_is_refused_and_its_target_untouched(tmp_path, name):
    target = tmp_path / "target"
    target.write_text("precious")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / name).symlink_to(target)
    with pytest.raises(UserError, match=f"{name}: is a symbolic link; tlbench never follows"):
        if name == "cells.jsonl":
            ResultsStore(run_dir).append({"config_hash": "a", "status": "ok"})
        elif name == ".run.lock":
            with RunDir(run_dir).lock():
                pass
        else:
            RunDir(run_dir).probe()
    assert target.read_text() == "precious"


def test_a_cells_file_that_is_a_directory_is_one_user_error(tmp_path):
    (tmp_path / "cells.jsonl").mkdir()
    with pytest.raises(UserError, match=r"cells.jsonl: is a directory, expected a file"):
        read_records(tmp_path / "cells.jsonl")


def test_a_damaged_env_json_is_refused_not_rewritten(tmp_path):
    (tmp_path / "env.json").write_text("{not json")
    with pytest.raises(UserError, match=r"env.json: damaged"):
        RunDir(tmp_path).write_environment({"schema": 1})
    assert (tmp_path / "env.json").read_text() == "{not json"


def test_unwritable_results_directory_fails_before_work(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(UserError, match="is not writable: Not a directory"):
        RunDir(blocker / "run").probe()


def test_a_read_only_results_directory_is_a_storage_error(tmp_path, monkeypatch):
    real_open = os.open

    def read_only(path, flags, *args, **kwargs):
        if str(path).startswith(str(tmp_path)) and flags & (os.O_WRONLY | os.O_RDWR):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(StorageError) as info:
        RunDir(tmp_path).probe()
    assert str(info.value) == (
        f"results directory {str(tmp_path)!r} is not writable: Read-only file system"
    )


def test_environment_is_recorded_once_and_resumes_are_appended(tmp_path):
    env = environment(
        [{"name": "p", "version": "1", "hooks": []}], "name='x'", "x.toml", argv=["tlbench"]
    )
    assert {"packages", "plugins", "git_revision", "hardware", "suite"} <= set(env)
    assert env["packages"]["torch"]
    RunDir(tmp_path).write_environment(env)
    RunDir(tmp_path).write_environment(env)
    stored = json.loads((tmp_path / "env.json").read_text())
    assert stored["suite"] == "name='x'"
    assert len(stored["resumes"]) == 1
