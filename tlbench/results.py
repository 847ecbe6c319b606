"""Run directories and the append-only results store.

A run directory holds ``cells.jsonl`` (one JSON object per finished cell, appended, flushed and
fsync'ed before the next cell starts), ``env.json`` (what produced the run), ``suite.toml`` (a copy
of the suite as it was) and ``run.log``. Several processes may append to one ``cells.jsonl``: each
record is written with a single ``write`` under an exclusive ``flock``, so lines never interleave.
One run at a time owns a run directory (``lock_run_dir``), so a resumed run can never race a run
that is still going and record a cell twice.

Every file here is opened without following symbolic links (``tlbench.safeio``), and every I/O
error is one line naming the file: exit code 3 for a full or read-only disk, 2 otherwise.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import os
import platform
import secrets
import subprocess
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tlbench import rundir
from tlbench.cache import atomic_write_text
from tlbench.errors import UserError
from tlbench.safeio import (
    fault,
    open_nofollow,
    probe_writable,
    read_bytes_nofollow,
    warn_once,
)

SCHEMA_VERSION = 1
CELLS_FILE, ENV_FILE, LOCK_FILE, PROBE_FILE = rundir.CELLS, rundir.ENV, rundir.LOCK, rundir.PROBE


def new_run_id() -> str:
    return _dt.datetime.now().strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)


def now_iso() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def prepare_run_dir(path: Path) -> Path:
    """Create the run directory and prove it is writable before any work starts."""
    probe_writable(path, "results directory", probe_name=PROBE_FILE)
    return path


@contextmanager
def lock_run_dir(path: Path) -> Iterator[None]:
    """Hold the run directory for this run. The kernel drops a ``flock`` when its holder dies,
    so a run killed with SIGKILL never leaves a stale lock behind."""
    fd = open_nofollow(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, action="lock the run directory")
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            raise UserError(
                f"run directory {str(path)!r} is in use by another tlbench run (pid {holder})"
            ) from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
        except OSError as exc:
            raise fault(path / LOCK_FILE, exc, "write") from None
        yield
    finally:
        os.close(fd)


class ResultsStore:
    def __init__(self, run_dir: Path, filename: str = CELLS_FILE):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / filename

    def append(self, record: dict) -> None:
        """Store ``record`` durably, or raise a one-line ``StorageError``/``UserError`` naming
        the file (nothing of the record is left behind but, at worst, a torn line that readers
        skip and the next append closes)."""
        line = (json.dumps(record, sort_keys=True, default=str) + "\n").encode()
        created = not os.path.lexists(self.path)
        fd = open_nofollow(
            self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, action="append a record"
        )
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            _repair_torn_tail(fd)
            start = os.fstat(fd).st_size
            try:
                _write_all(fd, line)
                os.fsync(fd)
            except OSError:
                # Under the lock nobody else appended: take back the part that landed, so a
                # full disk leaves no torn line behind (truncating needs no space).
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, start)
                raise
        except OSError as exc:
            raise fault(self.path, exc, "append a record") from None
        finally:
            os.close(fd)  # closing drops the flock
        if created:
            try:
                _fsync_dir(self.run_dir)  # the new file's name must survive a crash too
            except OSError as exc:
                raise fault(self.run_dir, exc, "sync the run directory") from None

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
    """The JSON objects of a JSON-lines file, in order. A truncated or garbled line is skipped
    with one warning (once per process, however often the file is read)."""
    return [record for _, record in read_numbered_records(path)]


def read_numbered_records(path: Path) -> list[tuple[int, dict]]:
    """``(line number, record)`` for each JSON object of ``path``; ``[]`` when it does not
    exist. A directory, a symbolic link or an unreadable file is one ``UserError`` line."""
    try:
        data = read_bytes_nofollow(path)
    except FileNotFoundError:
        return []
    records = []
    for number, raw in enumerate(data.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            record = None
        if isinstance(record, dict):
            records.append((number, record))
        else:
            warn_once(f"{path}:{number}: skipped a truncated or garbled record", stacklevel=3)
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


# CPU features that change which kernels torch (oneDNN, MKL) runs, and so the last bits of floats.
_CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16")
# Environment variables that change threading or the BLAS kernel choice.
_ENV_KNOBS = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "OPENBLAS_CORETYPE",
    "ONEDNN_MAX_CPU_ISA",
    "ATEN_CPU_CAPABILITY",
    "TLBENCH_DEPTHWISE_GRAD",
)


def cpu_description() -> dict:
    """The CPU model and the instruction-set features that decide which kernels run."""
    info: dict = {"model": platform.processor() or platform.machine()}
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return info
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name":
            info["model"] = value.strip()
        elif key == "flags":
            flags = set(value.split())
            info["flags"] = [f for f in _CPU_FLAGS if f in flags]
            break
    return info


def hardware() -> dict:
    """What a number's last digits depend on: CPU model and instruction set, the kernels torch
    dispatches to, threads, the GPU, and the environment knobs that change any of these."""
    info = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": cpu_description(),
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "env": {k: os.environ[k] for k in _ENV_KNOBS if k in os.environ},
    }
    try:
        import torch

        from tlbench.engine.depthwise import enabled as depthwise_enabled
    except ImportError:
        return info
    info["torch_threads"] = torch.get_num_threads()
    info["torch_interop_threads"] = torch.get_num_interop_threads()
    info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    info["mkldnn"] = torch.backends.mkldnn.is_available()
    info["depthwise_grad_patch"] = depthwise_enabled()
    if torch.cuda.is_available():
        info["cuda"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info["cuda_version"] = torch.version.cuda
        info["cudnn_version"] = torch.backends.cudnn.version()
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


def read_environment(run_dir: Path) -> dict | None:
    """The run's ``env.json``, or ``None`` when there is none; ``UserError`` when it is not a
    JSON object tlbench could have written (a run directory is never adopted on a guess)."""
    path = Path(run_dir) / ENV_FILE
    try:
        data = read_bytes_nofollow(path)
    except FileNotFoundError:
        return None
    try:
        env = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: damaged, not the JSON tlbench writes ({exc})") from None
    if not isinstance(env, dict):
        raise UserError(f"{path}: damaged, expected a JSON object, found {type(env).__name__}")
    return env


def write_environment(run_dir: Path, env: dict) -> None:
    """The first run writes env.json; a resumed run adds its own environment under ``resumes``,
    so a run assembled from several sessions says what produced each part. Written to a
    temporary file and renamed, which replaces a link rather than writing through it."""
    path = run_dir / ENV_FILE
    existing = read_environment(run_dir)
    if existing is not None:
        existing.setdefault("resumes", []).append(env)
        env = existing
    try:
        atomic_write_text(path, json.dumps(env, indent=2, default=str))
    except OSError as exc:
        raise fault(path, exc, "write") from None
