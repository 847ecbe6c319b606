"""A content-addressed on-disk cache shared by cells, runs and worker processes.

Every entry is keyed by a hash of *everything that changes its content* (weights fingerprint,
dataset fingerprint, split indices, transform, ...), stored with the sha256 of its payload so a
corrupted entry is detected and recomputed, written atomically (temp file + rename) and computed
under a per-key file lock so concurrent workers compute it once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from filelock import FileLock


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
        payload.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(payload) + ".lock"):
            value = self._read(payload, load)
            if value is not _MISS:
                self.hits += 1
                return self._remember(memo, value)
            self.misses += 1
            value = compute()
            self._write(payload, value, save, key_parts)
        return self._remember(memo, value)

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
            # Corrupted or half-written by a killed process: drop it and recompute.
            payload.unlink(missing_ok=True)
            meta_path.unlink(missing_ok=True)
            return _MISS

    def _write(
        self,
        payload: Path,
        value: Any,
        save: Callable[[Any, Path], None],
        key_parts: Mapping[str, Any],
    ) -> None:
        fd, tmp = tempfile.mkstemp(dir=payload.parent, prefix=".tmp-", suffix=payload.suffix)
        os.close(fd)
        tmp_path = Path(tmp)
        try:
            save(value, tmp_path)
            meta = {
                "sha256": file_sha256(tmp_path),
                "bytes": tmp_path.stat().st_size,
                "created": time.time(),
                "key": json.loads(json.dumps(key_parts, default=str)),
            }
            os.replace(tmp_path, payload)
            atomic_write_text(payload.with_suffix(".json"), json.dumps(meta, sort_keys=True))
        finally:
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
