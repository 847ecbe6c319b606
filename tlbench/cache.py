"""A content-addressed on-disk cache shared by cells, runs and worker processes.

Every entry is keyed by a hash of *everything that changes its content* (weights fingerprint,
dataset fingerprint, split indices, transform, device, ...), written atomically (temp file +
rename) with a small metadata file beside it, and computed under a per-key file lock so
concurrent workers compute it once.

Integrity: the sha256 of the payload is taken once, when it is written; the metadata also keeps
the payload's size and modification time. A read whose file still has that size and time is
trusted without hashing (an entry is never rewritten in place: the rename gives a new time);
any other size or time is hashed, and a mismatch, an entry that does not load, or an entry that
is not a regular file (a symbolic link to ``/dev/zero``) is discarded with one warning and
recomputed. Hits read without a lock; only a miss takes the key's lock, and a lock held longer
than ``TLBENCH_LOCK_TIMEOUT`` seconds (default 3600) is given up on: the value is computed
without the cache. Waiting for a lock is logged.

The cache only ever saves work: a run checks up front that it can write here
(``Cache.check_writable``), and when the disk fills or the directory turns read-only later, the
values are computed and used without being stored (one warning line per cause), never fatal.
Its size may be capped (``TLBENCH_CACHE_MAX_SIZE``, e.g. ``50G``; ``tlbench cache prune
--max-size``): the least recently used entries go first.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import stat
import tempfile
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from tlbench.errors import UserError, typed_first_line
from tlbench.hashing import file_sha256, stable_hash
from tlbench.safeio import (
    TlbenchWarning,
    atomic_write_text,
    describe,
    fault,
    probe_writable,
)

logger = logging.getLogger("tlbench.cache")

MAX_SIZE_ENV = "TLBENCH_CACHE_MAX_SIZE"
LOCK_TIMEOUT_ENV = "TLBENCH_LOCK_TIMEOUT"
DEFAULT_LOCK_TIMEOUT_S = 3600.0
# Metadata and index files are small; anything larger is damage (or /dev/zero behind a link).
MAX_META_BYTES = 1 << 20
MAX_INDEX_BYTES = 256 << 20
# Lock and temporary files left by killed processes: removed by prune once this old.
STALE_AFTER_S = 3600.0
_NAMESPACE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_HEX2 = re.compile(r"^[0-9a-f]{2}$")
_UNITS = {"": 1, "B": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_size(text: str, what: str = "--max-size") -> int:
    """Bytes from ``500M``, ``50G``, ``1.5T`` or a plain number of bytes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(i?B)?\s*", str(text), re.IGNORECASE)
    if not match:
        raise UserError(f"{what} {text!r}: expected a size such as 500M, 50G or 1.5T")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def lock_timeout_s() -> float:
    text = os.environ.get(LOCK_TIMEOUT_ENV)
    try:
        return float(text) if text else DEFAULT_LOCK_TIMEOUT_S
    except ValueError:
        return DEFAULT_LOCK_TIMEOUT_S


def default_cache_dir() -> Path:
    if os.environ.get("TLBENCH_CACHE"):
        return Path(os.environ["TLBENCH_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tlbench"


def _torch_save(value: Any, path: Path) -> None:
    import torch

    torch.save(value, path)


def _torch_load(path: Path) -> Any:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


class Cache:
    """``get_or_compute(namespace, key_parts, compute)`` is the one call most code needs.

    Values must be loadable with ``torch.load(weights_only=True)``: tensors, and dicts, lists,
    tuples and scalars of them. The in-memory layer keeps the most recent ``memory_items``.
    ``max_bytes`` caps the size on disk (default: ``$TLBENCH_CACHE_MAX_SIZE``, else no cap).
    """

    def __init__(
        self,
        root: os.PathLike | None = None,
        memory_items: int = 8,
        enabled: bool = True,
        max_bytes: int | None = None,
    ):
        self.root = Path(root) if root is not None else default_cache_dir()
        self.enabled = enabled
        self._memory: OrderedDict[str, Any] = OrderedDict()
        self._memory_items = memory_items
        self.hits = 0
        self.misses = 0
        self._unstorable: set[str] = set()  # causes already warned about
        self._damaged: set[str] = set()  # entries already warned about
        if max_bytes is None and os.environ.get(MAX_SIZE_ENV):
            max_bytes = parse_size(os.environ[MAX_SIZE_ENV], f"${MAX_SIZE_ENV}")
        self.max_bytes = max_bytes
        self._size: int | None = None  # bytes on disk as this process last counted them

    def check_writable(self) -> None:
        """Prove the cache directory can be written before any work depends on it
        (``StorageError``, exit code 3, when the disk is full or read-only)."""
        if self.enabled:
            probe_writable(
                self.root, "cache directory", " (choose another with --cache-dir or $TLBENCH_CACHE)"
            )

    def path(self, namespace: str, key: str, suffix: str = ".pt") -> Path:
        return self.root / namespace / key[:2] / f"{key}{suffix}"

    def get_or_compute(
        self,
        namespace: str,
        key_parts: Mapping[str, Any],
        compute: Callable[[], Any],
        *,
        save: Callable[[Any, Path], None] = _torch_save,
        load: Callable[[Path], Any] = _torch_load,
    ) -> Any:
        key = stable_hash({"namespace": namespace, **key_parts})
        memo = f"{namespace}/{key}"
        if memo in self._memory:
            self._memory.move_to_end(memo)
            self.hits += 1
            return self._memory[memo]
        if not self.enabled:
            self.misses += 1
            return self._remember(memo, compute())
        payload = self.path(namespace, key)
        value = self._read(payload, load)  # a hit needs no lock: entries appear by rename
        if value is not _MISS:
            self.hits += 1
            return self._remember(memo, value)
        with self.lock(payload, f"{namespace} entry {key[:12]}") as held:
            value = self._read(payload, load)  # computed by whoever held the lock before us
            if value is not _MISS:
                self.hits += 1
                return self._remember(memo, value)
            self.misses += 1
            value = compute()
            if held:
                self._write(payload, value, save, key_parts)
        return self._remember(memo, value)

    @contextlib.contextmanager
    def lock(self, path: Path, what: str) -> Iterator[bool]:
        """Hold ``path``'s lock file (``<path>.lock``) for the block; yields whether it is held.

        Waiting is logged (one line naming ``what``); after ``TLBENCH_LOCK_TIMEOUT`` seconds,
        or when the lock file cannot be created (a full or read-only disk), the block runs
        without the lock (yields False): the caller computes without storing, never waits
        forever on a worker that died holding it on a filesystem without working locks."""
        lock = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            lock = FileLock(str(path) + ".lock")
            try:
                lock.acquire(blocking=False)
            except Timeout:
                timeout = lock_timeout_s()
                logger.info(
                    "waiting for %s: another worker is computing it (lock %s.lock, up to %.0f s)",
                    what,
                    path,
                    timeout,
                )
                lock.acquire(timeout=timeout)
        except Timeout:
            warnings.warn(
                f"cache {path}.lock: still held after {lock_timeout_s():.0f} s "
                f"(${LOCK_TIMEOUT_ENV}); computing {what} without the cache",
                TlbenchWarning,
                stacklevel=3,
            )
            lock = None
        except OSError as exc:
            self.cannot_store(path.parent, exc)
            lock = None
        try:
            yield lock is not None
        finally:
            if lock is not None:
                lock.release()

    def cannot_store(self, where: Path, exc: BaseException) -> None:
        """One warning per cause that entries under ``where`` cannot be stored (a full disk):
        the caller goes on computing without the cache."""
        cause = describe(exc)
        if cause not in self._unstorable:
            self._unstorable.add(cause)
            warnings.warn(
                f"cache {where}: cannot store entries ({cause}); computing without caching them",
                TlbenchWarning,
                stacklevel=4,
            )

    def discard(self, path: Path, why: str, *companions: Path) -> None:
        """Remove a damaged entry (and its companion files) with one warning; a read-only cache
        keeps it, and it is recomputed every time instead."""
        if str(path) not in self._damaged:
            self._damaged.add(str(path))
            warnings.warn(
                f"cache {path}: {why}; discarded and recomputed", TlbenchWarning, stacklevel=4
            )
        for item in (path, *companions):
            with contextlib.suppress(OSError):
                if item.is_dir() and not item.is_symlink():
                    shutil.rmtree(item)  # a folder planted under an entry's name
                else:
                    item.unlink(missing_ok=True)

    def contains(self, namespace: str, key_parts: Mapping[str, Any]) -> bool:
        key = stable_hash({"namespace": namespace, **key_parts})
        return _regular(self.path(namespace, key).with_suffix(".json"))

    def _remember(self, memo: str, value: Any) -> Any:
        self._memory[memo] = value
        while len(self._memory) > self._memory_items:
            self._memory.popitem(last=False)
        return value

    def _read(self, payload: Path, load: Callable[[Path], Any]) -> Any:
        meta_path = payload.with_suffix(".json")
        found = [p for p in (payload, meta_path) if os.path.lexists(p)]
        if not found:
            return _MISS
        odd = [p for p in found if not _regular(p)]
        if odd:
            self.discard(odd[0], "not a regular file", payload, meta_path)
            return _MISS
        if len(found) < 2:  # a payload without metadata: its writer was killed in between
            return _MISS
        try:
            meta = json.loads(read_bytes_at_most(meta_path, MAX_META_BYTES))
            info = payload.stat()
            if (info.st_size, info.st_mtime_ns) != (meta.get("bytes"), meta.get("mtime_ns")):
                if info.st_size != meta["bytes"] or file_sha256(payload) != meta["sha256"]:
                    raise ValueError("its contents do not match the sha256 taken when written")
                self._refresh(meta_path, meta, info)  # same bytes, touched: trust the new time
            value = load(payload)
        except Exception as exc:
            # Corrupted or half-written by a killed process: drop it and recompute.
            self.discard(payload, f"damaged ({typed_first_line(exc)})", meta_path)
            return _MISS
        _touch(meta_path)  # last use, for eviction under a size cap
        return value

    def _refresh(self, meta_path: Path, meta: dict, info: os.stat_result) -> None:
        with contextlib.suppress(OSError):
            meta["mtime_ns"] = info.st_mtime_ns
            atomic_write_text(meta_path, json.dumps(meta, sort_keys=True))

    def _write(
        self,
        payload: Path,
        value: Any,
        save: Callable[[Any, Path], None],
        key_parts: Mapping[str, Any],
    ) -> None:
        tmp_path = None
        try:
            fd, tmp = tempfile.mkstemp(dir=payload.parent, prefix=".tmp-", suffix=payload.suffix)
            os.close(fd)
            tmp_path = Path(tmp)
            save(value, tmp_path)
            digest = file_sha256(tmp_path)
            os.replace(tmp_path, payload)
            info = payload.stat()
            meta = {
                "sha256": digest,
                "bytes": info.st_size,
                "mtime_ns": info.st_mtime_ns,
                "created": time.time(),
                "key": json.loads(json.dumps(key_parts, default=str)),
            }
            atomic_write_text(payload.with_suffix(".json"), json.dumps(meta, sort_keys=True))
            self._grew(info.st_size)
        except Exception as exc:
            # A full disk surfaces from torch.save as RuntimeError and from safetensors as
            # SafetensorError, not only as OSError. The value is good; only storing it failed.
            self.cannot_store(payload.parent, exc)
        finally:
            if tmp_path is not None:
                with contextlib.suppress(OSError):
                    tmp_path.unlink(missing_ok=True)

    # -- files beside the entries: indexes one line per record ------------------------------------
    def read_lines(self, path: Path) -> list[dict]:
        """The JSON records of an append-only index file; a damaged index (undecodable bytes, a
        special file, absurdly large) is discarded with one warning and reads as empty, so
        what it listed is recomputed. A torn last line is skipped."""
        if not os.path.lexists(path):
            return []
        if not _regular(path):
            self.discard(path, "not a regular file")
            return []
        try:
            text = read_bytes_at_most(path, MAX_INDEX_BYTES).decode("utf-8")
        except (OSError, ValueError) as exc:
            self.discard(path, f"damaged ({typed_first_line(exc)})")
            return []
        records = []
        for line in text.splitlines():
            try:
                record = json.loads(line)
            except ValueError:  # a line torn by a killed writer: what it names is not known
                continue
            if isinstance(record, dict):
                records.append(record)
        return records

    def append_line(self, path: Path, record: Mapping) -> bool:
        """Append one JSON record to an index file; a full or read-only disk costs one warning
        (the entry it names is simply not known to later readers), never the cell."""
        try:
            with open(path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")
        except OSError as exc:
            self.cannot_store(path.parent, exc)
            return False
        return True

    # -- size ---------------------------------------------------------------------------------
    def _grew(self, added: int) -> None:
        if self.max_bytes is None:
            return
        if self._size is None:
            self._size = self.size()
        else:
            self._size += added
        if self._size > self.max_bytes:
            self._size = self.prune(int(self.max_bytes * 0.9))["bytes_after"]

    def size(self) -> int:
        return sum(info.st_size for _, info in self._files())

    def _files(self) -> Iterator[tuple[Path, os.stat_result]]:
        """Every regular file under the root, never following a symbolic link."""
        if not self.root.is_dir():
            return
        for folder, _dirs, files in os.walk(self.root, followlinks=False, onerror=lambda e: None):
            for name in files:
                path = Path(folder) / name
                with contextlib.suppress(OSError):
                    info = path.lstat()
                    if stat.S_ISREG(info.st_mode):
                        yield path, info

    def prune(self, max_bytes: int | None = None, *, stale_after_s: float = STALE_AFTER_S) -> dict:
        """Remove lock and temporary files left by killed processes, then, with ``max_bytes``,
        the least recently used entries until the cache holds at most that many bytes."""
        now = time.time()
        removed_stale = 0
        entries: dict[Path, list] = {}  # payload stem -> [last use, bytes, files]
        total = 0
        for path, info in list(self._files()):
            name = path.name
            if name.endswith(".lock") or name.startswith(".tmp-"):
                if now - info.st_mtime > stale_after_s and _unlink_if_unlocked(path):
                    removed_stale += 1
                else:
                    total += info.st_size
                continue
            total += info.st_size
            # Entries live at <root>/<namespace>/<2 hex>/<key>.{pt,json}; indexes and prepared
            # stores (read by path while a cell runs) are not evicted.
            if path.parent.parent.parent != self.root or not _HEX2.match(path.parent.name):
                continue
            if name.startswith("."):
                continue
            entry = entries.setdefault(path.with_suffix(""), [0.0, 0, []])
            if name.endswith(".json"):
                entry[0] = info.st_mtime  # touched on every hit: the last use
            entry[1] += info.st_size
            entry[2].append(path)
        evicted = 0
        if max_bytes is not None and total > max_bytes:
            for _, size, files in sorted(entries.values(), key=lambda e: e[0]):
                if total <= max_bytes:
                    break
                for path in sorted(files, key=lambda p: p.suffix != ".json"):  # metadata first
                    with contextlib.suppress(OSError):
                        path.unlink()
                total -= size
                evicted += 1
        return {"stale_removed": removed_stale, "evicted": evicted, "bytes_after": total}

    # -- commands -----------------------------------------------------------------------------
    def check_root(self) -> None:
        """``UserError`` in one line unless the root is a directory (or does not exist yet)."""
        if os.path.lexists(self.root) and not self.root.is_dir():
            raise UserError(f"cache directory {self.root}: not a directory")

    def namespace_dir(self, namespace: str) -> Path:
        """The folder of ``namespace``, a name inside the root: ``../x``, ``/abs/dir``, links
        and anything else that would resolve outside it are refused in one line."""
        self.check_root()
        folder = self.root / namespace
        inside = _NAMESPACE.match(namespace) and namespace not in (".", "..")
        if not inside or os.path.islink(folder):
            raise UserError(
                f"cache namespace {namespace!r}: expected the name of a folder inside {self.root} "
                f"({', '.join(self.namespaces()) or 'none yet'})"
            )
        return folder

    def namespaces(self) -> list[str]:
        if not self.root.is_dir():
            return []
        with contextlib.suppress(OSError):
            return sorted(
                p.name
                for p in self.root.iterdir()
                if p.is_dir() and not p.is_symlink() and _NAMESPACE.match(p.name)
            )
        return []

    def info(self) -> list[dict]:
        """One row per namespace: entries and bytes on disk (never following a link)."""
        self.check_root()
        rows = []
        for name in self.namespaces():
            folder = self.root / name
            entries = size = 0
            for dirpath, _dirs, files in os.walk(folder, followlinks=False, onerror=lambda e: None):
                for file in files:
                    with contextlib.suppress(OSError):
                        info = os.lstat(os.path.join(dirpath, file))
                        if stat.S_ISREG(info.st_mode):
                            size += info.st_size
                            entries += file.endswith(".json") and dirpath != str(folder)
            rows.append({"namespace": name, "entries": entries, "bytes": size})
        return rows

    def clear_matching(self, marker: str) -> int:
        """Delete every entry whose key holds a string containing ``marker`` (a model's cache
        fingerprint part, ``|model NAME|``: ``tlbench cache clear --component``); returns how
        many. Never follows a link, never leaves the root."""
        self.check_root()
        self._memory.clear()
        removed = 0
        for name in self.namespaces():
            for dirpath, _dirs, files in os.walk(self.root / name, followlinks=False):
                for file in files:
                    meta = Path(dirpath) / file
                    if not file.endswith(".json") or not _regular(meta):
                        continue
                    try:
                        text = read_bytes_at_most(meta, 1 << 20).decode("utf-8", "replace")
                    except OSError:
                        continue
                    if marker not in text:
                        continue
                    for companion in Path(dirpath).glob(meta.stem + ".*"):
                        if _regular(companion):
                            with contextlib.suppress(OSError):
                                companion.unlink()
                    removed += 1
        return removed

    def clear(self, namespace: str | None = None) -> None:
        """Delete one namespace, or every namespace; never anything outside the root, and never
        through a link."""
        self.check_root()
        self._memory.clear()
        targets = (
            [self.namespace_dir(namespace)]
            if namespace
            else [self.root / name for name in self.namespaces()]
        )
        for target in targets:
            if target.is_dir() and not target.is_symlink():
                try:
                    shutil.rmtree(target)
                except OSError as exc:  # one line (exit 3 or 2), not a traceback
                    raise fault(Path(exc.filename or target), exc, "delete") from None


_MISS = object()


def _regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _touch(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.utime(path)


def _unlink_if_unlocked(path: Path) -> bool:
    """Remove an old lock (or temporary) file nobody holds right now."""
    if path.name.endswith(".lock"):
        lock = FileLock(str(path))
        try:
            lock.acquire(blocking=False)
        except (Timeout, OSError):
            return False
        try:
            path.unlink(missing_ok=True)
        except OSError:
            return False
        finally:
            lock.release()
        return True
    try:
        path.unlink(missing_ok=True)
    except OSError:
        return False
    return True


def read_bytes_at_most(path: Path, limit: int) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes (``ValueError`` otherwise), opened
    without following a link: a link to ``/dev/zero`` is refused, not read until memory ends."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise ValueError("not a regular file")
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"larger than {limit} bytes")
    return data
