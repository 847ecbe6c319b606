"""Run directories and the append-only results store.

A run directory holds ``cells.jsonl`` (one JSON object per finished cell, appended, flushed and
fsync'ed before the next cell starts), ``env.json`` (what produced the run), ``suite.toml`` (a copy
of the suite as it was) and ``run.log``. Several processes may append to one ``cells.jsonl``: each
record is written with a single ``write`` under an exclusive ``flock``, so lines never interleave.
One run at a time owns a run directory (``lock_run_dir``), so a resumed run can never race a run
that is still going and record a cell twice.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import json
import os
import platform
import secrets
import subprocess
import sys
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tlbench.cache import atomic_write_text
from tlbench.errors import UserError

SCHEMA_VERSION = 1
CELLS_FILE = "cells.jsonl"
ENV_FILE = "env.json"
LOCK_FILE = ".run.lock"


def new_run_id() -> str:
    return _dt.datetime.now().strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)


def now_iso() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def prepare_run_dir(path: Path) -> Path:
    """Create the run directory and prove it is writable before any work starts."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-probe"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise UserError(
            f"results directory {str(path)!r} is not writable: {exc.strerror or exc}"
        ) from None
    return path


@contextmanager
def lock_run_dir(path: Path) -> Iterator[None]:
    """Hold the run directory for this run. The kernel drops a ``flock`` when its holder dies,
    so a run killed with SIGKILL never leaves a stale lock behind."""
    fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            raise UserError(
                f"run directory {str(path)!r} is in use by another tlbench run (pid {holder})"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)


class ResultsStore:
    def __init__(self, run_dir: Path, filename: str = CELLS_FILE):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / filename

    def append(self, record: dict) -> None:
        line = (json.dumps(record, sort_keys=True, default=str) + "\n").encode()
        created = not self.path.exists()
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            _repair_torn_tail(fd)
            _write_all(fd, line)
            os.fsync(fd)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        if created:
            _fsync_dir(self.run_dir)  # the new file's name must survive a crash too

    def read(self) -> list[dict]:
        return read_records(self.path)

    def latest_by_hash(self) -> dict[str, dict]:
        """The last record per config hash (a retried cell supersedes its failure)."""
        latest: dict[str, dict] = {}
        for record in self.read():
            latest[record.get("config_hash", "")] = record
        return latest

    def check_schema(self) -> None:
        """Refuse to resume a run written by a newer tlbench: its records may mean other things."""
        newer = {
            r.get("schema")
            for r in self.read()
            if isinstance(r.get("schema"), int) and r["schema"] > SCHEMA_VERSION
        }
        if newer:
            raise UserError(
                f"{self.path} holds records of schema {max(newer)}, newer than this tlbench understands ({SCHEMA_VERSION}); upgrade tlbench or choose another --out"
            )


def _write_all(fd: int, data: bytes) -> None:
    # os.write may write less than asked (signals, full disks); a record must land whole.
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _repair_torn_tail(fd: int) -> None:
    """A process killed mid-write can leave a last line without its newline; close it so the
    next record starts on a fresh line (the torn line is then skipped, with a warning, on read)."""
    size = os.fstat(fd).st_size
    if size == 0:
        return
    if os.pread(fd, 1, size - 1) != b"\n":
        os.write(fd, b"\n")


def read_records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    records = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            if isinstance(record, dict):
                records.append(record)
            else:
                warnings.warn(
                    f"{path}:{number}: skipped a truncated or garbled record", stacklevel=2
                )
    return records


def package_versions(names: Iterable[str]) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for name in names:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            continue
    return versions


def git_revision() -> str | None:
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if rev.returncode != 0:
        return None
    return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def hardware() -> dict:
    info = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
    }
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["cuda"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            info["cuda_version"] = torch.version.cuda
    except ImportError:
        pass
    return info


CORE_PACKAGES = (
    "tlbench",
    "torch",
    "torchvision",
    "timm",
    "numpy",
    "pandas",
    "scikit-learn",
    "pluggy",
    "safetensors",
    "peft",
)


def environment(
    plugin_rows: list[dict], suite_text: str, suite_path: str, argv: list[str] | None = None
) -> dict:
    return {
        "schema": SCHEMA_VERSION,
        "created_at": now_iso(),
        "argv": argv if argv is not None else sys.argv,
        "packages": package_versions(CORE_PACKAGES),
        "plugins": plugin_rows,
        "git_revision": git_revision(),
        "hardware": hardware(),
        "suite_path": suite_path,
        "suite": suite_text,
    }


def write_environment(run_dir: Path, env: dict) -> None:
    """The first run writes env.json; a resumed run adds its own environment under ``resumes``,
    so a run assembled from several sessions says what produced each part."""
    path = run_dir / ENV_FILE
    if path.exists():
        try:
            existing = json.loads(path.read_text())
        except json.JSONDecodeError:
            existing = {}
        existing.setdefault("resumes", []).append(env)
        atomic_write_text(path, json.dumps(existing, indent=2, default=str))
    else:
        atomic_write_text(path, json.dumps(env, indent=2, default=str))
