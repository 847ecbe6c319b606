"""Faults of the machine and hostile paths: each ends with one line naming the file and the
cause, its documented exit code (2: the input, 3: the machine, 130/143: a signal), and the
finished records equal to a clean run's. docs/running.md ("Faults") is written from these.

Faults are injected where they happen. A full or read-only disk: ``os.write``/``os.open`` raise
``ENOSPC``/``EROFS`` for files under one directory (what a small tmpfs would do, without
needing root to mount one), and ``torch.save`` raises what it raises on a full disk. Damage:
flipped bytes. Hostile paths: planted symbolic links. Signals: sent to a real ``tlbench run``
held at a known moment by the gated strategy below, which this module registers as a plugin.
"""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import metrics_by_cell, subprocess_env
from test_runner import Ridge

from tlbench import hookimpl
from tlbench.specs import Option, StrategySpec

PLUGINS = ("test_runner", "test_faults")
LINUX = sys.platform.startswith("linux")
needs_proc = pytest.mark.skipif(not LINUX, reason="reads /proc to find open files and processes")


# -- the plugin: a ridge probe that can be held while checking or running ---------------------


class GatedRidge(Ridge):
    """``test_runner``'s ridge probe, held while the file ``check_gate`` (or ``run_gate``)
    exists: it announces itself with ``<gate>.reached-<pid>``, then waits for a line on stdin
    (the run's own process, released by the test) or forever (a worker, killed with its run)."""

    def check(self, ctx) -> None:
        _hold(self.options["check_gate"])

    def run(self, ctx):
        _hold(self.options["run_gate"])
        return super().run(ctx)


def _hold(gate: str) -> None:
    if not gate or not os.path.exists(gate):
        return
    Path(f"{gate}.reached-{os.getpid()}").touch()
    if multiprocessing.parent_process() is None:
        sys.stdin.readline()
    else:
        threading.Event().wait()


PLANT_LINK_AFTER_FIRST_RECORD: dict = {}  # set by a test: {"run_dir": ..., "victim": ...}


@hookimpl
def register_strategies(register):
    register(
        StrategySpec(
            "ridge-gated",
            factory=GatedRidge,
            description="ridge classifier that can be held at a known moment (tests)",
            options=(
                Option("l2", float, default=[0.1, 10.0], minimum=0.0, sweep=True),
                Option("work", int, default=1, minimum=1),
                Option("fail_if_exists", str, default=""),
                Option("crash_if_exists", str, default=""),
                Option("touch", str, default=""),
                Option("check_gate", str, default=""),
                Option("run_gate", str, default=""),
            ),
        )
    )


@hookimpl
def on_cell_finished(record):
    """An attacker's move, when a test asks for it: once the first record is stored, replace
    cells.jsonl by a link to a file the run must never write."""
    plant = PLANT_LINK_AFTER_FIRST_RECORD
    if plant and not plant.get("done"):
        cells = Path(plant["run_dir"]) / "cells.jsonl"
        cells.rename(cells.with_name("cells.jsonl.saved"))
        cells.symlink_to(plant["victim"])
        plant["done"] = True


# -- helpers ---------------------------------------------------------------------------------

SUITE = """
name = "faults"
seeds = [0, 1]
models = ["tiny-proj"]
[[datasets]]
name = "tiny-digits"
train_size = 300
[[strategies]]
name = "ridge-gated"
{options}
[[strategies]]
name = "ridge-gated"
id = "ridge-strong"
l2 = [100.0, 1000.0]
{options}
"""


def write_suite(path: Path, name: str = "faults", **options) -> Path:
    """Four cells (2 seeds x 2 strategies, two groups); gates live next to the suite."""
    gates = {
        "check_gate": str(path.parent / "check-gate"),
        "run_gate": str(path.parent / "run-gate"),
    }
    lines = "\n".join(f"{k} = {json.dumps(v)}" for k, v in {**gates, **options}.items())
    path.write_text(
        SUITE.format(options=lines).replace('name = "faults"', f"name = {json.dumps(name)}")
    )
    return path


def tlbench(*args: str):
    from tlbench.cli import cli

    return CliRunner().invoke(cli, [*(a for p in PLUGINS for a in ("--plugin", p)), *args])


def run_args(suite: Path, out: Path, cache: Path, *extra: str) -> list[str]:
    return [
        "run",
        str(suite),
        "--out",
        str(out),
        "--cache-dir",
        str(cache),
        "--device",
        "cpu",
        "-q",
        *extra,
    ]


def errors(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error: ")]


def records(run_dir: Path) -> list[dict]:
    from tlbench.results import read_records

    return read_records(run_dir / "cells.jsonl")


def assert_one_record_per_cell_equal_to(reference: dict, run_dir: Path) -> None:
    stored = records(run_dir)
    assert len({r["config_hash"] for r in stored}) == len(stored), "no cell is recorded twice"
    assert metrics_by_cell(stored) == reference


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> tuple[Path, dict]:
    """A clean run of the suite: its run directory and its metrics by cell."""
    tmp = tmp_path_factory.mktemp("clean")
    suite = write_suite(tmp / "suite.toml")
    result = tlbench(*run_args(suite, tmp / "run", tmp / "cache"))
    assert result.exit_code == 0, result.output
    reference = metrics_by_cell(records(tmp / "run"))
    assert len(reference) == 4
    return tmp / "run", reference


@pytest.fixture
def suite(tmp_path) -> Path:
    return write_suite(tmp_path / "suite.toml")


def path_of(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


def disk_fills(monkeypatch, under: Path, room: int | None) -> None:
    """``os.write`` to files under ``under`` fails with ENOSPC once ``room`` bytes were written
    there (``None``: after the first record lands in cells.jsonl, 100 more bytes fit)."""
    real_write = os.write
    left = {"room": room}

    def write(fd, data):
        path = path_of(fd)
        if not path.startswith(str(under)):
            return real_write(fd, data)
        if left["room"] is None:
            written = real_write(fd, data)
            if path.endswith("cells.jsonl") and bytes(data).endswith(b"\n"):
                left["room"] = 100
            return written
        if left["room"] <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written = real_write(fd, bytes(data[: left["room"]]))
        left["room"] -= written
        return written

    monkeypatch.setattr(os, "write", write)


def read_only(monkeypatch, under: Path) -> None:
    """Opening a file under ``under`` for writing, or creating a directory there, is EROFS."""
    real_open, real_mkdir = os.open, os.mkdir

    def refuse(path):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    def open_(path, flags, *args, **kwargs):
        writing = flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
        if writing and os.path.abspath(path).startswith(str(under)):
            refuse(path)
        return real_open(path, flags, *args, **kwargs)

    def mkdir(path, *args, **kwargs):
        if os.path.abspath(path).startswith(str(under)):
            refuse(path)
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_)
    monkeypatch.setattr(os, "mkdir", mkdir)


# -- inputs: suite files, names, references ---------------------------------------------------


@pytest.mark.parametrize(
    ("encoding", "expected"),
    [
        ("binary", "byte 0x89 at offset 0"),
        ("latin-1", "byte 0xe9 at offset 13"),
        ("utf-16", "byte 0xff at offset 0"),
    ],
)
def test_a_suite_file_that_is_not_utf8_is_one_line_naming_it(tmp_path, suite, encoding, expected):
    data = (
        b"\x89PNG\r\n\x1a\n\x00\x00"
        if encoding == "binary"
        else suite.read_text().replace("faults", "fautés").encode(encoding)
    )
    suite.write_bytes(data)
    result = tlbench(*run_args(suite, tmp_path / "run", tmp_path / "cache"))
    assert result.exit_code == 2
    assert errors(result) == [
        f"error: {suite}: not a UTF-8 text file ({expected}); suites are TOML, which is UTF-8: save the file as UTF-8"
    ]
    assert "Traceback" not in result.output and not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("field", "value", "line"),
    [
        ("name", "../../escaped", "name: expected a name, not a path"),
        ("name", "/tmp/escaped", "name: expected a name, not a path"),
        ("id", "../escaped", "strategies[0].id: expected a name, not a path"),
    ],
)
def test_a_name_that_is_a_path_is_refused_and_nothing_is_written(
    tmp_path, monkeypatch, field, value, line
):
    path = tmp_path / "deep" / "suite.toml"
    path.parent.mkdir()
    write_suite(path)
    text = path.read_text()
    if field == "name":
        text = text.replace('name = "faults"', f"name = {json.dumps(value)}")
    else:
        text = text.replace('name = "ridge-gated"\n', f'name = "ridge-gated"\nid = "{value}"\n', 1)
    path.write_text(text)
    monkeypatch.chdir(path.parent)  # the default results root is ./results
    result = tlbench(
        "run", str(path), "--cache-dir", str(tmp_path / "cache"), "--device", "cpu", "-q"
    )
    assert result.exit_code == 2
    assert [e for e in errors(result)] == [
        f"error: {path}: {line} (no '/', '\\', '.' or '..'), got {value!r}"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep"]
    assert sorted(p.name for p in path.parent.iterdir()) == ["suite.toml"]


def test_a_reference_that_looks_like_a_path_names_its_suite_field(tmp_path, suite):
    suite.write_text(
        suite.read_text().replace('models = ["tiny-proj"]', 'models = ["scratch:../../etc/passwd"]')
    )
    result = tlbench(*run_args(suite, tmp_path / "run", tmp_path / "cache"), "--dry-run")
    assert result.exit_code == 2
    assert errors(result) == [
        f"error: {suite}: models[0].name: model reference 'scratch:../../etc/passwd' looks like a file path; "
        "a reference is 'name' or 'name:argument', and files are given as options (e.g. path = ...)"
    ]


def test_every_out_of_range_option_is_reported_at_once_before_any_work(tmp_path, suite):
    text = suite.read_text().replace("seeds = [0, 1]", "seeds = [0, 4294967296]")
    text = text.replace("l2 = [100.0, 1000.0]", "l2 = [100.0, inf]\nwork = 0\nwrok = 1")
    suite.write_text(text)
    result = tlbench(*run_args(suite, tmp_path / "run", tmp_path / "cache"))
    assert result.exit_code == 2
    assert [line.split(": ", 2)[2] for line in errors(result)] == [
        "seeds: expected a non-empty list of non-negative integers below 2**32 (4294967296), got [0, 4294967296]",
        "strategies[1]: strategy 'ridge-gated': unknown option 'wrok' (known options: check_gate, crash_if_exists, fail_if_exists, l2, run_gate, touch, work); did you mean 'work'?",
        "strategies[1]: strategy 'ridge-gated': option 'l2': expected a number >= 0.0 (or a list of them to sweep), got inf, which is not finite",
        "strategies[1]: strategy 'ridge-gated': option 'work': expected an integer >= 1, got 0",
    ]
    assert not (tmp_path / "run").exists()


# -- a full or read-only disk ------------------------------------------------------------------


@needs_proc
def test_a_results_disk_filling_mid_run_keeps_every_finished_record(
    tmp_path, suite, clean, monkeypatch
):
    run_dir = tmp_path / "run"
    disk_fills(monkeypatch, run_dir, room=None)
    result = tlbench(*run_args(suite, run_dir, tmp_path / "cache"))
    monkeypatch.undo()
    cells = run_dir / "cells.jsonl"
    assert result.exit_code == 3, result.output
    lines = errors(result)
    assert lines[0] == (
        f"error: cannot store records: {cells}: cannot append a record: No space left on device; "
        "finishing the cells in flight, starting no more"
    )
    rescue = Path(lines[2].split("kept in ", 1)[1].split(":", 1)[0])
    assert lines[1:] == [
        f"error: {cells}: cannot append a record: No space left on device",
        f"error: 1 finished record could not be stored; kept in {rescue}: once there is room, append it with: cat {rescue} >> {cells}",
        "error: the run stopped: 2 cells finished, 2 not run",
        f"error: resume with: tlbench run {suite} --resume {run_dir}",
    ]
    assert len(records(run_dir)) == 1 and cells.read_bytes().endswith(b"}\n"), "no torn line"
    with cells.open("ab") as fh:  # what the message says to do once there is room
        fh.write(rescue.read_bytes())
    rescue.unlink()
    resumed = tlbench(
        "run", str(suite), "--resume", str(run_dir), "--cache-dir", str(tmp_path / "cache"), "-q"
    )
    assert resumed.exit_code == 0, resumed.output
    assert_one_record_per_cell_equal_to(clean[1], run_dir)


@needs_proc
@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_an_unwritable_results_directory_stops_before_any_work(tmp_path, suite, monkeypatch, fault):
    results = tmp_path / "results"
    results.mkdir()
    ran = tmp_path / "a-cell-ran"
    suite.write_text(
        suite.read_text().replace(
            'name = "ridge-gated"\n', f'name = "ridge-gated"\ntouch = "{ran}"\n', 1
        )
    )
    if fault == "full":
        disk_fills(monkeypatch, results, room=0)
    else:
        read_only(monkeypatch, results)
    result = tlbench(*run_args(suite, results / "run", tmp_path / "cache"))
    monkeypatch.undo()
    cause = "No space left on device" if fault == "full" else "Read-only file system"
    assert result.exit_code == 3
    assert errors(result) == [
        f"error: results directory {str(results / 'run')!r} is not writable: {cause}"
    ]
    assert not ran.exists()


def test_a_read_only_cache_stops_before_any_work(tmp_path, suite, monkeypatch):
    cache = tmp_path / "cache"
    read_only(monkeypatch, cache)
    result = tlbench(*run_args(suite, tmp_path / "run", cache))
    monkeypatch.undo()
    assert result.exit_code == 3
    assert errors(result) == [
        f"error: cache directory {str(cache)!r} is not writable: Read-only file system "
        "(choose another with --cache-dir or $TLBENCH_CACHE)"
    ]
    assert not (tmp_path / "run").exists()


def test_a_cache_disk_filling_mid_run_costs_one_warning_not_a_result(
    tmp_path, suite, clean, monkeypatch
):
    cache = tmp_path / "cache"
    real_pwrite = os.pwrite

    def full_disk_pwrite(fd, data, offset):
        # Preprocessed images are the entries this run stores: their rows land through pwrite.
        if path_of(fd).startswith(str(cache)):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", full_disk_pwrite)
    result = tlbench(*run_args(suite, tmp_path / "run", cache))
    monkeypatch.undo()
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and warnings[0].startswith(f"warning: cache {cache}"), result.stderr
    assert warnings[0].endswith(
        ": cannot store entries (No space left on device); computing without caching them"
    )
    assert_one_record_per_cell_equal_to(clean[1], tmp_path / "run")


# -- damaged files -------------------------------------------------------------------------------


def test_byte_flipped_cache_entries_are_recomputed_and_results_unchanged(tmp_path, suite, clean):
    cache = tmp_path / "cache"
    assert tlbench(*run_args(suite, tmp_path / "first", cache)).exit_code == 0
    damaged = [p for p in cache.rglob("*") if p.is_file() and not p.name.endswith(".lock")]
    assert damaged
    for path in damaged:
        blob = bytearray(path.read_bytes())
        blob[len(blob) // 2] ^= 0xFF
        path.write_bytes(bytes(blob))
    result = tlbench(*run_args(suite, tmp_path / "second", cache))
    assert result.exit_code == 0 and not errors(result), result.output
    assert_one_record_per_cell_equal_to(clean[1], tmp_path / "second")


def test_a_damaged_safetensors_entry_in_the_cache_is_recomputed(tmp_path):
    import torch
    from safetensors import SafetensorError

    from tlbench.cache import Cache, file_sha256
    from tlbench.weights import load_safetensors, save_safetensors

    calls = []

    def convert():
        calls.append(1)
        return {"weight": torch.arange(6.0).reshape(2, 3)}

    def get():
        return Cache(tmp_path).get_or_compute(
            "converted-weights", {"k": 1}, convert, save=save_safetensors, load=load_safetensors
        )

    get()
    payload = next(tmp_path.glob("converted-weights/*/*.pt"))
    meta = payload.with_suffix(".json")
    # A header length of 2**63-1 ("header too large"), and a meta file that vouches for it, so
    # the damage is met by the loader itself, not only by the sha256 check.
    payload.write_bytes(b"\xff" * 7 + b"\x7f" + payload.read_bytes()[8:])
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "sha256": file_sha256(payload)}))
    with pytest.raises(SafetensorError, match="header too large"):
        load_safetensors(payload)
    assert torch.equal(get()["weight"], torch.arange(6.0).reshape(2, 3)) and len(calls) == 2
    assert torch.equal(get()["weight"], torch.arange(6.0).reshape(2, 3)) and len(calls) == 2, (
        "the repaired entry is a hit"
    )


def test_a_damaged_safetensors_checkpoint_is_one_line_naming_the_file(tmp_path):
    checkpoint = tmp_path / "bad.safetensors"
    checkpoint.write_bytes(b"\xff" * 7 + b"\x7f{garbage")
    suite = tmp_path / "s.toml"
    suite.write_text(
        f'seeds = [0]\nstrategies = ["ridge-gated"]\n[[models]]\nname = "file:test_resnet"\n'
        f'path = "{checkpoint}"\ninput_size = 32\n[[datasets]]\nname = "tiny-digits"\ntrain_size = 100\n'
    )
    result = tlbench(*run_args(suite, tmp_path / "run", tmp_path / "cache"))
    # The model's cells fail (exit 1, docs/running.md), each with one line naming the file.
    assert result.exit_code == 1 and not errors(result), result.output
    (record,) = records(tmp_path / "run")
    message = record["error"]["message"]
    assert str(checkpoint) in message and "header too large" in message
    assert "\n" not in message


# -- hostile paths and foreign run directories -------------------------------------------------

PLANTED = [
    ".write-probe",
    ".run.lock",
    "cells.jsonl",
    "env.json",
    "run.log",
    "suite.toml",
    "estimates.jsonl",
    "predictions",
]


@pytest.mark.parametrize("name", PLANTED)
def test_a_link_planted_in_a_run_directory_is_refused_with_one_line(tmp_path, clean, name):
    run_dir = tmp_path / "run"
    shutil.copytree(clean[0], run_dir)
    before = (run_dir / "cells.jsonl").read_bytes()
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    planted = run_dir / name
    if planted.is_dir():
        shutil.rmtree(planted)
    elif planted.exists():
        planted.unlink()
    planted.symlink_to(victim)
    for extra in ((), ("--dry-run",)):
        result = tlbench(
            "run", str(clean[0].parent / "suite.toml"), "--resume", str(run_dir), "-q", *extra
        )
        assert result.exit_code == 2, result.output
        assert errors(result) == [
            f"error: {planted}: is a symbolic link; tlbench never follows links inside a run directory (remove it, or choose another --out)"
        ]
    assert victim.read_text() == "precious\n"
    if name != "cells.jsonl":
        assert (run_dir / "cells.jsonl").read_bytes() == before


def test_a_link_planted_mid_run_is_refused_and_the_finished_records_kept(
    tmp_path, suite, clean, monkeypatch
):
    run_dir = tmp_path / "run"
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    plant = {"run_dir": str(run_dir), "victim": str(victim)}
    monkeypatch.setattr(sys.modules[__name__], "PLANT_LINK_AFTER_FIRST_RECORD", plant)
    result = tlbench(*run_args(suite, run_dir, tmp_path / "cache"))
    monkeypatch.undo()
    assert result.exit_code == 2, result.output
    cells = run_dir / "cells.jsonl"
    link_line = f"{cells}: is a symbolic link; tlbench never follows links inside a run directory (remove it, or choose another --out)"
    lines = errors(result)
    assert (
        lines[0]
        == f"error: cannot store records: {link_line}; finishing the cells in flight, starting no more"
    )
    assert lines[1] == f"error: {link_line}"
    assert lines[3:] == [
        "error: the run stopped: 2 cells finished, 2 not run",
        f"error: resume with: tlbench run {suite} --resume {run_dir}",
    ]
    assert victim.read_text() == "precious\n"
    rescue = Path(lines[2].split("kept in ", 1)[1].split(":", 1)[0])
    cells.unlink()  # undo the attack, keep what the run kept, resume
    cells.with_name("cells.jsonl.saved").rename(cells)
    with cells.open("ab") as fh:
        fh.write(rescue.read_bytes())
    rescue.unlink()
    assert tlbench(*run_args(suite, run_dir, tmp_path / "cache")).exit_code == 0
    assert_one_record_per_cell_equal_to(clean[1], run_dir)


def env_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "env.json").read_text())


@pytest.mark.parametrize(
    "case", ["other suite", "damaged env.json", "no env.json", "env.json emptied"]
)
def test_a_run_directory_is_adopted_only_by_its_own_suite(tmp_path, clean, case):
    run_dir = tmp_path / "run"
    shutil.copytree(clean[0], run_dir)
    suite = write_suite(
        tmp_path / "suite.toml", name="other" if case == "env.json emptied" else "faults"
    )
    env = run_dir / "env.json"
    expected = {
        "other suite": f"run directory {str(run_dir)!r} holds suite 'other', not 'faults'; choose another --out",
        "env.json emptied": f"run directory {str(run_dir)!r} holds records of suite 'faults', not 'other'; choose another --out",
        "damaged env.json": f"{env}: damaged, not the JSON tlbench writes",
        "no env.json": f"run directory {str(run_dir)!r} holds cells.jsonl but no env.json: tlbench cannot tell which suite produced them",
    }[case]
    if case == "other suite":
        env.write_text(json.dumps({**env_of(run_dir), "suite_name": "other"}))
    elif case == "damaged env.json":
        env.write_text('{"suite_name": "faults", ')
    elif case == "env.json emptied":  # the directory's own say-so erased: the records still tell
        env.write_text("{}")
    else:
        env.unlink()
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    for extra in ((), ("--dry-run",)):
        result = tlbench("run", str(suite), "--out", str(run_dir), "-q", *extra)
        assert result.exit_code == 2, result.output
        assert len(errors(result)) == 1 and errors(result)[0].startswith(f"error: {expected}")
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before


def test_an_edited_suite_resumes_its_run_and_reruns_only_what_changed(tmp_path, clean):
    run_dir = tmp_path / "run"
    shutil.copytree(clean[0], run_dir)
    suite = write_suite(tmp_path / "suite.toml", work=2)
    plan = tlbench("run", str(suite), "--out", str(run_dir), "-q", "--dry-run", "--json")
    assert plan.exit_code == 0, plan.output
    assert json.loads(plan.stdout)["counts"]["pending"] == 4  # every cell's options changed
    result = tlbench(*run_args(suite, run_dir, tmp_path / "cache"))
    assert result.exit_code == 0, result.output
    assert "note: the suite file changed since this run started" in result.stderr
    assert len(records(run_dir)) == 8  # the first version's 4 records are kept, 4 new ones


def test_resume_latest_is_the_most_recently_started_run(tmp_path, clean, monkeypatch):
    suite_dir = tmp_path / "results" / "faults"
    for name, started in (
        ("zz-older", "2026-01-01T00:00:00+00:00"),
        ("aa-newer", "2026-06-01T00:00:00+00:00"),
    ):
        shutil.copytree(clean[0], suite_dir / name)
        (suite_dir / name / "env.json").write_text(
            json.dumps({**env_of(clean[0]), "created_at": started})
        )
    monkeypatch.chdir(tmp_path)
    result = tlbench(
        "run", str(clean[0].parent / "suite.toml"), "--resume", "latest", "--dry-run", "--json"
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["run_dir"] == str(Path("results/faults/aa-newer"))


# -- reports on damaged run directories --------------------------------------------------------


def test_a_report_counts_and_names_malformed_records(tmp_path, clean):
    run_dir = tmp_path / "run"
    shutil.copytree(clean[0], run_dir)
    stored = records(run_dir)
    stored[0]["metrics"]["top1"] = "97.5"  # ok, but not a number
    stored[1]["dataset"] = ["tiny-digits"]  # cannot be placed in the grid
    (run_dir / "cells.jsonl").write_text("".join(json.dumps(r) + "\n" for r in stored))
    from tlbench.cli import cli

    result = CliRunner().invoke(cli, ["report", str(run_dir)], terminal_width=200)
    assert result.exit_code == 0, result.output
    cells = run_dir / "cells.jsonl"
    first = stored[0]
    assert result.stderr.splitlines() == [
        f"warning: {cells}:1 (tiny-proj / tiny-digits / {first['strategy']} / seed {first['seed']}): status 'ok' but metrics.top1 is '97.5', expected a number in [0, 100]; counted as malformed, in no mean",
        f"warning: {cells}:2: 'dataset' is ['tiny-digits'], expected a string; left out of the report",
    ]
    assert "1 malformed" in result.stdout, "the summary counts it next to its cell's mean"


@pytest.mark.parametrize("name", ["cells.jsonl", "env.json"])
def test_a_report_on_a_run_file_that_is_a_directory_is_one_line(tmp_path, clean, name):
    from tlbench.cli import cli

    run_dir = tmp_path / "run"
    shutil.copytree(clean[0], run_dir)
    (run_dir / name).unlink()
    (run_dir / name).mkdir()
    result = CliRunner().invoke(cli, ["report", str(run_dir), "--format", "md"])
    assert result.exit_code == 2
    assert errors(result) == [f"error: {run_dir / name}: is a directory, expected a file"]


# -- signals and orphans: real processes ---------------------------------------------------------


def start_run(tmp_path: Path, suite: Path, run_dir: Path, *extra: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "tlbench.cli", *(a for p in PLUGINS for a in ("--plugin", p))]
    command += run_args(suite, run_dir, tmp_path / "cache", *extra)
    return subprocess.Popen(
        command,
        env=subprocess_env(tmp_path / "cache"),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_until(proc: subprocess.Popen, done, what: str, limit_s: float = 300) -> None:
    """Poll ``done()``, failing when the process exits first or ``limit_s`` passes (a hang
    guard, not a timing assertion)."""
    deadline = time.monotonic() + limit_s
    while not done():
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"never reached: {what}")
        try:
            proc.wait(timeout=0.05)
        except subprocess.TimeoutExpired:
            continue
        raise AssertionError(
            f"the run exited ({proc.returncode}) before {what}:\n{proc.stderr.read()}"
        )


def reached(gate: Path) -> list[Path]:
    return sorted(gate.parent.glob(gate.name + ".reached-*"))


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_while_checking_cells_stops_at_once_with_its_code(
    tmp_path, suite, clean, signum, code
):
    gate = tmp_path / "check-gate"
    gate.touch()
    run_dir = tmp_path / "run"
    proc = start_run(tmp_path, suite, run_dir)
    wait_until(proc, lambda: reached(gate), "the check phase")
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=120)
    name = signal.Signals(signum).name
    assert proc.returncode == code, stderr
    assert stderr.splitlines() == [
        f"interrupted: resume with: tlbench run {suite} --resume {run_dir}"
    ]
    assert f"run interrupted by {name} before any cell ran" in (run_dir / "run.log").read_text()
    assert records(run_dir) == []
    gate.unlink()
    assert tlbench(*run_args(suite, run_dir, tmp_path / "cache")).exit_code == 0
    assert_one_record_per_cell_equal_to(clean[1], run_dir)


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_while_a_cell_runs_finishes_it_and_stops_with_its_code(
    tmp_path, suite, clean, signum, code
):
    gate = tmp_path / "run-gate"
    gate.touch()
    run_dir = tmp_path / "run"
    log = run_dir / "run.log"
    proc = start_run(tmp_path, suite, run_dir)
    wait_until(proc, lambda: reached(gate), "the first cell")
    proc.send_signal(signum)
    wait_until(proc, lambda: "interrupt: " in log.read_text(), "the signal was handled")
    proc.stdin.write("\n")  # release the cell in flight
    proc.stdin.flush()
    _, stderr = proc.communicate(timeout=120)
    name = signal.Signals(signum).name
    assert proc.returncode == code, stderr
    assert (
        stderr.splitlines()[-1]
        == f"interrupted: resume with: tlbench run {suite} --resume {run_dir}"
    )
    assert "Traceback" not in stderr and "Aborted" not in stderr
    assert (
        f"run interrupted by {name}: 1 cells finished, 0 recorded interrupted, 3 not run"
        in log.read_text()
    )
    finished = records(run_dir)
    assert [r["status"] for r in finished] == ["ok"], "the cell in flight finished"
    gate.unlink()
    assert tlbench(*run_args(suite, run_dir, tmp_path / "cache")).exit_code == 0
    assert_one_record_per_cell_equal_to(clean[1], run_dir)


def descendants(pid: int) -> dict[int, str]:
    """{pid: start time} of every process below ``pid``, from /proc."""
    children: dict[int, list[int]] = {}
    starts = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
        starts[int(entry.name)] = fields[19]
    found, todo = {}, [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found[child] = starts[child]
            todo.append(child)
    return found


def alive(pid: int, start: str) -> bool:
    """Running (not a zombie waiting to be reaped) and the same process (not a reused pid)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z" and fields[19] == start


@needs_proc
def test_killing_the_parent_with_sigkill_leaves_no_worker_behind(tmp_path, suite):
    gate = tmp_path / "run-gate"
    gate.touch()
    proc = start_run(tmp_path, suite, tmp_path / "run", "--executor", "process", "--workers", "2")
    wait_until(proc, lambda: len(reached(gate)) == 2, "both workers running a cell")
    workers = descendants(proc.pid)
    held = {int(p.name.rsplit("-", 1)[1]) for p in reached(gate)}
    assert held <= set(workers), "the held cells run in the parent's worker processes"
    proc.kill()
    proc.wait()
    try:
        assert wait_gone(workers, limit_s=60) == [], "workers and the resource tracker die with it"
    finally:
        for pid, start in workers.items():
            if alive(pid, start):
                os.kill(pid, signal.SIGKILL)


def wait_gone(processes: dict[int, str], limit_s: float) -> list[int]:
    """Wait (on pidfds, no polling) until every process has exited; return the survivors."""
    watched = {}
    for pid, start in processes.items():
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        if alive(pid, start):
            watched[fd] = pid
        else:
            os.close(fd)
    poller = select.poll()
    for fd in watched:
        poller.register(fd, select.POLLIN)
    deadline = time.monotonic() + limit_s
    try:
        while watched and time.monotonic() < deadline:
            for fd, _ in poller.poll(max(1, int((deadline - time.monotonic()) * 1000))):
                poller.unregister(fd)
                watched.pop(fd)
                os.close(fd)
        return sorted(watched.values())
    finally:
        for fd in watched:
            os.close(fd)


SECOND_CTRL_C = """
import sys
from pathlib import Path
import tlbench.cli as cli
import tlbench.runner as runner

RUN_DIR = Path(sys.argv[2])

def run_suite(request, host, progress):  # the run loop ended: its cells finished, all stored
    return runner.RunOutcome(run_dir=RUN_DIR, records=[{"status": "ok"}], ran=1)

def print_table(run_dir, console, **_):  # Ctrl-C again, while the summary is printed
    raise KeyboardInterrupt

runner.run_suite = run_suite
cli._print_table = print_table
sys.argv = ["tlbench", "run", sys.argv[1], "--out", sys.argv[2]]
cli.main()
"""


def test_a_ctrl_c_while_the_summary_prints_exits_130_with_the_resume_hint(tmp_path):
    suite = write_suite(tmp_path / "suite.toml")
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-c", SECOND_CTRL_C, str(suite), str(run_dir)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TLBENCH_DISABLE_AUTOLOAD": "1"},
    )
    assert proc.returncode == 130, proc.stderr
    assert "Aborted" not in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines()[-1] == (
        f"interrupted: resume with: tlbench run {suite} --resume {run_dir}"
    )
