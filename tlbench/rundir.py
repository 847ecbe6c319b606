"""The run directory, owned by one class: ``RunDir``.

    <run_dir>/
        cells.jsonl        one record per line, appended as cells finish (RunDir.cells)
        estimates.jsonl    transferability estimates (RunDir.estimates, tlbench.transferability)
        predictions/       per-example test predictions, one file per cell (tlbench.predictions,
                           which names the folder)
        env.json           environment, suite hash, argv of every session (RunDir.environment)
        suite.toml         the suite as it was when the run started (RunDir.session)
        run.log            one timestamped line per event, across resumes (RunLog)
        .run.lock          held while a run writes here (RunDir.lock)
        .write-probe       made and removed to check the directory is writable (RunDir.probe)

``RunDir`` chooses the directory (``--out``, ``--resume DIR|latest``, a new run id), checks that
it belongs to the suite, proves it writable, locks it, writes ``env.json`` and the suite copy,
and opens ``run.log``; ``session`` does all of it in order. ``env.json`` and the records are read
once per process and kept on the object (re-read only when the file changed on disk), and the
records stores append durably: one JSON line per record, a single ``write`` under an exclusive
``flock`` followed by ``fsync``, so several processes may append to one file without
interleaving lines.

Every file here is opened without following symbolic links (``tlbench.safeio``), and every I/O
error is one line naming the file: exit code 3 for a full or read-only disk, 2 otherwise. Every
module that opens one of these names takes it from here (``predictions/`` from its own module).
"""

from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import fcntl
import json
import logging
import os
import secrets
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from tlbench.errors import UserError
from tlbench.predictions import PREDICTIONS_DIR as PREDICTIONS
from tlbench.safeio import (
    PROBE,
    atomic_write_bytes,
    atomic_write_text,
    describe,
    fault,
    open_nofollow,
    probe_writable,
    read_bytes_nofollow,
    refuse_links,
    warn_once,
)

if TYPE_CHECKING:  # pragma: no cover
    from tlbench.suite import Suite

CELLS = "cells.jsonl"
ESTIMATES = "estimates.jsonl"
ENV = "env.json"
SUITE_COPY = "suite.toml"
RUN_LOG = "run.log"
LOCK = ".run.lock"

# What a run records; a directory holding any of them without an env.json is nobody's.
RECORDS = (CELLS, ESTIMATES, PREDICTIONS)
# Every name tlbench opens inside a run directory; none of them may be a symbolic link.
RUN_FILES = (PROBE, LOCK, CELLS, ENV, RUN_LOG, SUITE_COPY, ESTIMATES, PREDICTIONS)

SCHEMA_VERSION = 1

logger = logging.getLogger(__name__)


def new_run_id() -> str:
    return _dt.datetime.now().strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)


def now_iso() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _signature(path: Path) -> tuple | None:
    """What tells a file we read apart from one changed since (``None``: absent)."""
    try:
        info = os.lstat(path)
    except OSError:
        return None
    return (info.st_ino, info.st_size, info.st_mtime_ns)


class RunDir:
    """One run directory: where it is, whose it is, and every file tlbench keeps in it."""

    def __init__(self, path: os.PathLike | str):
        self.path = Path(path)
        self.cells = ResultsStore(self.path, CELLS)
        self.estimates = ResultsStore(self.path, ESTIMATES)
        self._env: tuple[tuple | None, dict | None] | None = None  # (signature, env.json)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # ------------------------------------------------------------------ choosing

    @classmethod
    def choose(
        cls,
        suite_name: str,
        *,
        resume: os.PathLike | str | None = None,
        out: os.PathLike | str | None = None,
        results_root: Path = Path("results"),
    ) -> RunDir:
        """``--resume DIR|latest`` names an existing run; ``--out DIR`` wins otherwise (an
        existing one is resumed, never clobbered); by default a new ``results/<suite>/<run-id>``.
        Creates nothing, so a dry run leaves no trace."""
        if resume not in (None, ""):
            if str(resume) == "latest":
                return cls.latest(Path(results_root) / suite_name, suite_name)
            path = Path(resume)  # type: ignore[arg-type]
            if not path.is_dir():
                raise UserError(f"--resume: run directory {str(path)!r} does not exist")
            return cls(path)
        if out is not None:
            return cls(out)
        return cls(Path(results_root) / suite_name / new_run_id())

    @classmethod
    def latest(cls, suite_dir: Path, suite_name: str) -> RunDir:
        """The most recently started run of ``suite_name`` under ``suite_dir``, by the
        ``created_at`` its env.json records (run ids sort by local time, which a clock or
        time-zone change reorders). The run comes back with its env.json already read."""
        started = []
        for path in suite_dir.glob("*") if suite_dir.is_dir() else ():
            if not path.is_dir():
                continue
            run = cls(path)
            try:
                env = run.environment()
            except UserError:
                continue  # damaged: never resumed on a guess (naming it explicitly says why)
            if env is not None and isinstance(env.get("created_at"), str):
                started.append((env["created_at"], path.name, run))
        if not started:
            raise UserError(
                f"--resume latest: no earlier run of suite {suite_name!r} under {suite_dir}"
            )
        return max(started, key=lambda item: item[:2])[2]

    @property
    def exists(self) -> bool:
        return self.path.is_dir()

    # ------------------------------------------------------------------ whose it is

    def check_owner(self, suite_name: str) -> None:
        """A run directory belongs to the suite that started it. Adopt it only when its env.json
        names the same suite; refuse, never rewrite, one whose env.json is damaged, or missing
        next to records. Symbolic links under tlbench's names are refused too. An *edited* suite
        (one more seed, a new model) is adopted: cells are keyed by their config hash, so only
        cells whose configuration changed run again (``suite_changed`` says so). Nothing is
        created or changed here (the dry run calls it as well)."""
        if not self.exists:
            return
        refuse_links(self.path, RUN_FILES)
        env = self.environment()
        where = f"run directory {str(self.path)!r}"
        if env is None:
            records = [name for name in RECORDS if os.path.lexists(self.path / name)]
            if records:
                raise UserError(
                    f"{where} holds {', '.join(records)} but no {ENV}: tlbench cannot tell which "
                    "suite produced them and will not adopt them; choose another --out"
                )
            return
        owner = env.get("suite_name")
        if owner is not None and owner != suite_name:
            raise UserError(
                f"{where} holds suite {owner!r}, not {suite_name!r}; choose another --out"
            )
        # env.json is the directory's own say-so (an edit to {} erases it): the records must agree
        others = sorted(self._recorded_suites() - {suite_name})
        if others:
            shown = ", ".join(repr(name) for name in others[:3])
            raise UserError(
                f"{where} holds records of suite {shown}, not {suite_name!r}; choose another --out"
            )

    def _recorded_suites(self) -> set[str]:
        """The suite names the cell records carry (an unreadable cells.jsonl is left to the
        records store, which says so with its own line)."""
        try:
            records = self.cells.read()
        except UserError:
            return set()
        return {str(r["suite"]) for r in records if "suite" in r}

    def suite_changed(self, suite_hash: str) -> str | None:
        """A line for the user when the run directory was started from another version of the
        suite file, else ``None``."""
        env = self.environment() if self.exists else None
        recorded = _recorded_suite_hash(env) if env else None
        if env is None or recorded is None or recorded == suite_hash:
            return None
        return (
            f"the suite file changed since this run started ({env.get('created_at', '?')}): cells "
            "whose configuration changed run again, recorded cells that still match are kept; "
            "env.json keeps every version of the suite"
        )

    # ------------------------------------------------------------------ env.json

    def environment(self) -> dict | None:
        """The run's ``env.json``, or ``None`` when there is none; ``UserError`` when it is not
        a JSON object tlbench could have written (a run directory is never adopted on a guess).
        Read once; read again only when the file changed on disk."""
        path = self.path / ENV
        signature = _signature(path)
        if self._env is not None and self._env[0] == signature:
            return self._env[1]
        try:
            data = read_bytes_nofollow(path)
        except FileNotFoundError:
            self._env = (None, None)
            return None
        try:
            env = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UserError(f"{path}: damaged, not the JSON tlbench writes ({exc})") from None
        if not isinstance(env, dict):
            raise UserError(f"{path}: damaged, expected a JSON object, found {type(env).__name__}")
        self._env = (signature, env)
        return env

    def write_environment(self, env: dict) -> None:
        """The first run writes env.json; a resumed run adds its own environment under
        ``resumes``, so a run assembled from several sessions says what produced each part.
        Written to a temporary file and renamed, which replaces a link rather than writing
        through it."""
        path = self.path / ENV
        existing = self.environment()
        if existing is not None:
            existing = copy.deepcopy(existing)
            existing.setdefault("resumes", []).append(env)
            env = existing
        try:
            atomic_write_text(path, json.dumps(env, indent=2, default=str))
        except OSError as exc:
            raise fault(path, exc, "write") from None
        self._env = (_signature(path), env)

    # ------------------------------------------------------------------ a session

    def probe(self) -> None:
        """Create the run directory and prove it is writable before any work starts."""
        probe_writable(self.path, "results directory", probe_name=PROBE)

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the run directory for this run. The kernel drops a ``flock`` when its holder
        dies, so a run killed with SIGKILL never leaves a stale lock behind."""
        path = self.path / LOCK
        fd = open_nofollow(path, os.O_RDWR | os.O_CREAT, action="lock the run directory")
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
                raise UserError(
                    f"run directory {str(self.path)!r} is in use by another tlbench run (pid {holder})"
                ) from None
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, str(os.getpid()).encode(), 0)
            except OSError as exc:
                raise fault(path, exc, "write") from None
            yield
        finally:
            os.close(fd)

    @contextmanager
    def session(
        self,
        suite: Suite,
        *,
        plugins: list[dict],
        argv: list[str] | None = None,
        recorded: dict | None = None,
    ) -> Iterator[RunLog]:
        """Everything a run does to its directory before its first cell, in order: the owner
        check (before anything is written there), the write probe, the lock, the owner check
        again (now that no other run can change it), the "suite changed" note, the records'
        schema, ``env.json`` (with ``recorded`` added to the environment) and the suite copy.
        Yields the open ``run.log``; the lock is held until the block ends."""
        from tlbench.suite import suite_hash

        self.check_owner(suite.name)
        self.probe()
        with self.lock():
            self.check_owner(suite.name)
            digest = suite_hash(suite)
            changed = self.suite_changed(digest)
            if changed:
                logger.warning(changed, extra={"prefix": "note: "})
            self.cells.check_schema()
            env = environment(plugins, suite.text, str(suite.path), argv)
            env["suite_name"] = suite.name
            env["suite_hash"] = digest
            env.update(recorded or {})
            self.write_environment(env)
            self._copy_suite(Path(suite.path))
            with RunLog(self.path) as log:
                yield log

    def _copy_suite(self, source: Path) -> None:
        copy_path = self.path / SUITE_COPY
        if not os.path.lexists(copy_path) and source.is_file():
            try:  # written to a temporary name and renamed: never through a planted link
                atomic_write_bytes(copy_path, source.read_bytes())
            except OSError as exc:
                raise fault(copy_path, exc, "write") from None


def environment(
    plugin_rows: list[dict], suite_text: str, suite_path: str, argv: list[str] | None = None
) -> dict:
    """What ``env.json`` records about a session: when, how it was started, the plugins, the
    suite, and ``tlbench.provenance``'s package versions, git revision and hardware."""
    from tlbench.provenance import capture

    machine = capture()
    return {
        "schema": SCHEMA_VERSION,
        "created_at": now_iso(),
        "argv": argv if argv is not None else sys.argv,
        "packages": machine["packages"],
        "plugins": plugin_rows,
        "git_revision": machine["git_revision"],
        "hardware": machine["hardware"],
        "suite_path": suite_path,
        "suite": suite_text,
    }


def read_environment(run_dir: os.PathLike | str) -> dict | None:
    """``RunDir(run_dir).environment()``: the run's ``env.json``, or ``None``."""
    return RunDir(run_dir).environment()


def _recorded_suite_hash(env: dict) -> str | None:
    """The suite hash env.json records; for runs written before it was recorded, the hash of
    the suite text it kept."""
    import tomllib

    from tlbench.hashing import stable_hash

    if isinstance(env.get("suite_hash"), str):
        return env["suite_hash"]
    text = env.get("suite")
    if not isinstance(text, str) or not text.strip():
        return None
    try:
        return stable_hash(tomllib.loads(text))
    except tomllib.TOMLDecodeError:
        return None


# ---------------------------------------------------------------------- the records stores


class ResultsStore:
    """An append-only JSON-lines file of records (``cells.jsonl``, ``estimates.jsonl``).

    Read once per process and kept; read again only when the file changed on disk (another
    process appended). What this object appends is added to what it keeps."""

    def __init__(self, run_dir: os.PathLike | str, filename: str = CELLS):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / filename
        # (signature of the file read, its numbered records, its number of lines)
        self._kept: tuple[tuple | None, list[tuple[int, dict]], int] | None = None

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
            before = os.fstat(fd)
            start = before.st_size
            try:
                _write_all(fd, line)
                os.fsync(fd)
            except OSError:
                # Under the lock nobody else appended: take back the part that landed, so a
                # full disk leaves no torn line behind (truncating needs no space).
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, start)
                raise
            self._kept_append(before, os.fstat(fd), line)
        except OSError as exc:
            raise fault(self.path, exc, "append a record") from None
        finally:
            os.close(fd)  # closing drops the flock
        if created:
            try:
                _fsync_dir(self.run_dir)  # the new file's name must survive a crash too
            except OSError as exc:
                raise fault(self.run_dir, exc, "sync the run directory") from None

    def _kept_append(self, before: os.stat_result, after: os.stat_result, line: bytes) -> None:
        """Add the line just written to what is kept, when what is kept was the whole file."""
        kept = self._kept
        was_absent = kept is not None and kept[0] is None and before.st_size == 0
        if kept is None or not (
            was_absent or kept[0] == (before.st_ino, before.st_size, before.st_mtime_ns)
        ):
            self._kept = None
            return
        number = kept[2] + 1
        signature = (after.st_ino, after.st_size, after.st_mtime_ns)
        self._kept = (signature, [*kept[1], (number, json.loads(line))], number)

    def numbered(self) -> list[tuple[int, dict]]:
        """``(line number, record)`` for each record, in order (see ``read_numbered_records``)."""
        signature = _signature(self.path)
        if self._kept is None or self._kept[0] != signature:
            try:
                data = read_bytes_nofollow(self.path)
            except FileNotFoundError:
                data = None
            numbered, lines = _parse_records(self.path, data or b"")
            self._kept = (signature if data is not None else None, numbered, lines)
        return list(self._kept[1])

    def read(self) -> list[dict]:
        return [record for _, record in self.numbered()]

    def latest_by_hash(self) -> dict[str, dict]:
        """The last record per config hash (a retried cell supersedes its failure)."""
        latest: dict[str, dict] = {}
        for record in self.read():
            latest[record.get("config_hash", "")] = record
        return latest

    def check_schema(self) -> None:
        """Refuse to resume a run written by a newer tlbench: its records may mean other things."""
        newer = {
            r["schema"]
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
    return _parse_records(path, data)[0]


def _parse_records(path: Path, data: bytes) -> tuple[list[tuple[int, dict]], int]:
    records = []
    lines = data.splitlines()
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            record = None
        if isinstance(record, dict):
            records.append((number, record))
        else:
            warn_once(f"{path}:{number}: skipped a truncated or garbled record", stacklevel=4)
    return records, len(lines)


# ---------------------------------------------------------------------- run.log


class _IsoFormatter(logging.Formatter):
    def formatTime(self, record, datefmt=None):  # noqa: N802 (logging's name)
        moment = _dt.datetime.fromtimestamp(record.created, _dt.UTC)
        return moment.isoformat(timespec="seconds")


class _LogHandler(logging.StreamHandler):
    """A line that cannot be written (a full disk) costs one warning, not logging's traceback
    for every line; the run goes on."""

    def __init__(self, stream, path: Path):
        super().__init__(stream)
        self.path, self.failed = path, False

    def handleError(self, record) -> None:  # noqa: N802 (logging's name)
        if not self.failed:
            self.failed = True
            cause = describe(sys.exc_info()[1] or OSError("unknown error"))
            logger.warning("%s: cannot write the run log: %s", self.path, cause)


class RunLog:
    """``run.log``: one timestamped line per event of the run, appended across resumes. Opened
    without following a symbolic link planted under its name."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / RUN_LOG
        self.logger = logging.getLogger(f"tlbench.run.{os.getpid()}.{id(self)}")
        self.logger.propagate = False
        self.logger.setLevel(logging.INFO)

    def __enter__(self) -> RunLog:
        fd = open_nofollow(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, action="write")
        self.stream = os.fdopen(fd, "a", encoding="utf-8")
        self.handler = _LogHandler(self.stream, self.path)
        self.handler.setFormatter(_IsoFormatter("%(asctime)s %(message)s"))
        self.logger.addHandler(self.handler)
        self.write(f"run started pid={os.getpid()}")
        return self

    def write(self, message: str) -> None:
        self.logger.info(message)

    def interrupt_requested(self, signal_name: str = "SIGINT") -> None:
        if signal_name == "SIGINT":
            message = "interrupt: finishing the cells in flight, starting no more (Ctrl-C again stops at once)"
        else:
            message = f"interrupt: {signal_name} received; finishing the cells in flight, starting no more (a second signal stops at once)"
        self.write(message)
        logging.getLogger("tlbench.runner").warning(message, extra={"prefix": ""})

    def __exit__(self, *exc) -> None:
        self.write("run stopped" if exc[0] is None else f"run stopped: {exc[0].__name__}")
        self.logger.removeHandler(self.handler)
        self.handler.close()
        with contextlib.suppress(OSError):  # closing flushes, and a full disk refuses that too
            self.stream.close()
