"""A content-addressed on-disk cache shared by cells, runs and worker processes.

Every entry is keyed by a hash of *everything that changes its content* (weights fingerprint,
dataset fingerprint, split indices, transform, ...), stored with the sha256 of its payload so a
corrupted entry is detected and recomputed, written atomically (temp file + rename) and computed
under a per-key file lock so concurrent workers compute it once.

The cache only ever saves work: a run checks up front that it can write here
(``Cache.check_writable``), and when the disk fills or the directory turns read-only later, the
values are computed and used without being stored (one warning line per cause), never fatal.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from filelock import FileLock

from tlbench.safeio import TlbenchWarning, describe, probe_writable


def default_cache_dir() -> Path:
    if os.environ.get("TLBENCH_CACHE"):
        return Path(os.environ["TLBENCH_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tlbench"


def stable_hash(parts: Any) -> str:
    """sha256 of a JSON rendering with sorted keys: equal inputs give equal keys across runs."""
    blob = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def file_sha256(path: os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


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
    """

    def __init__(
        self, root: os.PathLike | None = None, memory_items: int = 8, enabled: bool = True
    ):
        self.root = Path(root) if root is not None else default_cache_dir()
        self.enabled = enabled
        self._memory: OrderedDict[str, Any] = OrderedDict()
        self._memory_items = memory_items
        self.hits = 0
        self.misses = 0
        self._unstorable: set[str] = set()  # causes already warned about

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
        lock = self._lock(payload)
        try:
            value = self._read(payload, load)
            if value is not _MISS:
                self.hits += 1
                return self._remember(memo, value)
            self.misses += 1
            value = compute()
            if lock is not None:
                self._write(payload, value, save, key_parts)
        finally:
            if lock is not None:
                lock.release()
        return self._remember(memo, value)

    def _lock(self, payload: Path) -> FileLock | None:
        """The key's lock, held; ``None`` when the cache cannot be written here any more (the
        value is then computed without a lock and not stored)."""
        try:
            payload.parent.mkdir(parents=True, exist_ok=True)
            lock = FileLock(str(payload) + ".lock")
            lock.acquire()
        except OSError as exc:
            self._cannot_store(payload.parent, exc)
            return None
        return lock

    def _cannot_store(self, where: Path, exc: BaseException) -> None:
        cause = describe(exc)
        if cause not in self._unstorable:
            self._unstorable.add(cause)
            warnings.warn(
                f"cache {where}: cannot store entries ({cause}); computing without caching them",
                TlbenchWarning,
                stacklevel=4,
            )

    def contains(self, namespace: str, key_parts: Mapping[str, Any]) -> bool:
        key = stable_hash({"namespace": namespace, **key_parts})
        return self.path(namespace, key).with_suffix(".json").exists()

    def _remember(self, memo: str, value: Any) -> Any:
        self._memory[memo] = value
        while len(self._memory) > self._memory_items:
            self._memory.popitem(last=False)
        return value

    def _read(self, payload: Path, load: Callable[[Path], Any]) -> Any:
        meta_path = payload.with_suffix(".json")
        if not (payload.exists() and meta_path.exists()):
            return _MISS
        try:
            meta = json.loads(meta_path.read_text())
            if file_sha256(payload) != meta["sha256"]:
                raise ValueError("sha256 mismatch")
            return load(payload)
        except Exception:
            # Corrupted or half-written by a killed process: drop it and recompute. A read-only
            # cache keeps the damaged entry; it is recomputed every time instead.
            for path in (payload, meta_path):
                with contextlib.suppress(OSError):
                    path.unlink(missing_ok=True)
            return _MISS

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
            meta = {
                "sha256": file_sha256(tmp_path),
                "bytes": tmp_path.stat().st_size,
                "created": time.time(),
                "key": json.loads(json.dumps(key_parts, default=str)),
            }
            os.replace(tmp_path, payload)
            atomic_write_text(payload.with_suffix(".json"), json.dumps(meta, sort_keys=True))
        except Exception as exc:
            # A full disk surfaces from torch.save as RuntimeError and from safetensors as
            # SafetensorError, not only as OSError. The value is good; only storing it failed.
            self._cannot_store(payload.parent, exc)
        finally:
            if tmp_path is not None:
                with contextlib.suppress(OSError):
                    tmp_path.unlink(missing_ok=True)

    def info(self) -> list[dict]:
        """One row per namespace: entries and bytes on disk."""
        rows = []
        if not self.root.exists():
            return rows
        for ns_dir in sorted(p for p in self.root.iterdir() if p.is_dir()):
            metas = list(ns_dir.glob("*/*.json"))
            size = sum(p.stat().st_size for p in ns_dir.rglob("*") if p.is_file())
            rows.append({"namespace": ns_dir.name, "entries": len(metas), "bytes": size})
        return rows

    def clear(self, namespace: str | None = None) -> None:
        self._memory.clear()
        target = self.root / namespace if namespace else self.root
        if target.exists():
            shutil.rmtree(target)


_MISS = object()


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same directory, fsync, then rename over ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
