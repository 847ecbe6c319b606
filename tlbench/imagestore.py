"""Decoded or preprocessed images as uint8 rows of one file on disk, read by row.

An ``ImageStore`` behaves like a read-only uint8 numpy array (``shape``, ``ndim``, ``len``,
``store[rows]``) whose rows are read from disk when indexed, so a dataset of any size costs the
process only the rows of the batch in hand: each read maps the file, copies the rows out and
unmaps it again, so the pages it touched leave the process's resident set (they stay in the
kernel's page cache, shared by every process that reads the same file). It pickles as its path,
so DataLoader workers open the same file instead of copying the data.

Files are written row by row (``StoreWriter``), never assembled in memory; a store that is filled
on demand (``rows_present``/``write_rows``) keeps a one-byte-per-row mask beside it.

Integrity: every row's CRC-32 is recorded when it is written (``<store>.crc``, 8 bytes a row), and
``verify_once`` checks every written row against it the first time a process opens the store
(a sequential read, of a random sample of ``VERIFY_BYTES`` for larger stores; reads after that
cost nothing extra). Rows that fail are returned so the
caller rebuilds them with one warning; rows written before checksums existed are adopted (their
checksum recorded as they are).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

READ_CHUNK_BYTES = 64 << 20  # bounds a sequential pass (hashing, copying out)
# A recorded checksum: the row's CRC-32 with this bit set (0 means none recorded).
_RECORDED = np.uint64(1 << 32)
# What ``verify_once`` reads of one store per process: all of a store up to this size (3000
# images at 224 px, 431 MiB: 0.4-1.5 s on 2 busy cores, docs/running.md), a random sample of
# rows this size of a larger one (each process samples anew, so damage is found over a run's
# processes).
VERIFY_BYTES = 2 << 30


class ImageStore:
    """A read-only uint8 array of shape ``shape`` in the file ``path`` (C order, no header)."""

    def __init__(self, path: os.PathLike, shape: tuple[int, ...]):
        self.path = str(path)
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(np.uint8)

    # -- array protocol -------------------------------------------------------------------
    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.shape[1:], dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.row_bytes * self.shape[0]

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key):
        if self.shape[0] == 0:
            return np.empty(self.shape, np.uint8)[key]
        # A copy out of a mapping that is dropped on return: CPython unmaps it at once, so
        # the pages read leave this process's resident set.
        mapped = np.memmap(self.path, dtype=np.uint8, mode="r", shape=self.shape)
        return np.array(mapped[key])

    def __array__(self, dtype=None, copy=None):
        whole = self[:]
        return whole if dtype is None else whole.astype(dtype)

    def __reduce__(self):
        return ImageStore, (self.path, self.shape)

    def __repr__(self) -> str:
        return f"ImageStore({self.path!r}, shape={self.shape})"

    # -- sequential reads -----------------------------------------------------------------
    def blocks(self, chunk_bytes: int = READ_CHUNK_BYTES) -> Iterator[bytes]:
        """The file's bytes in order, in blocks of at most ``chunk_bytes`` (plain reads, no map)."""
        with open(self.path, "rb") as fh:
            remaining = self.nbytes
            while remaining > 0:
                block = fh.read(min(chunk_bytes, remaining))
                if not block:
                    raise OSError(f"{self.path}: file shorter than its shape {self.shape}")
                remaining -= len(block)
                yield block

    def update_hash(self, digest) -> None:
        """Feed the store's bytes to ``digest``: the same as ``digest.update(array.tobytes())``."""
        for block in self.blocks():
            digest.update(block)

    def sha256(self) -> str:
        digest = hashlib.sha256()
        self.update_hash(digest)
        return digest.hexdigest()


class StoreWriter:
    """Writes rows in order to ``path`` through a temporary file; ``close()`` renames it into
    place and returns the ``ImageStore`` (of as many rows as were written)."""

    def __init__(self, path: os.PathLike, row_shape: tuple[int, ...]):
        self.path = Path(path)
        self.row_shape = tuple(int(s) for s in row_shape)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        self._fh = open(self._tmp, "wb")
        self.rows = 0
        self._sums: list[np.ndarray] = []

    def append(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=np.uint8)
        if rows.shape[1:] != self.row_shape:
            raise ValueError(f"row shape {rows.shape[1:]} != {self.row_shape}")
        self._fh.write(memoryview(rows).cast("B"))
        self._sums.append(checksums(rows))
        self.rows += len(rows)

    def close(self) -> ImageStore:
        """Rename the rows into place, their checksums first (a store never has checksums of
        other bytes than its own, except when it is damaged)."""
        self._fh.close()
        sums = np.concatenate(self._sums) if self._sums else np.zeros(0, np.uint64)
        _replace_array(_crc_path(self.path), sums)
        os.replace(self._tmp, self.path)
        store = ImageStore(self.path, (self.rows, *self.row_shape))
        _VERIFIED.add(_identity(store))  # written by this process: nothing to check
        return store

    def abort(self) -> None:
        self._fh.close()
        self._tmp.unlink(missing_ok=True)


_SCRATCH: list[Path] = []


def scratch_dir() -> Path:
    """A folder for this process's stores when no cache directory is given (removed at exit)."""
    if not _SCRATCH:
        import atexit
        import shutil
        import tempfile

        folder = Path(tempfile.mkdtemp(prefix="tlbench-store-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        _SCRATCH.append(folder)
    return _SCRATCH[0]


# -- stores filled on demand ----------------------------------------------------------------


def open_sparse(path: os.PathLike, shape: tuple[int, ...]) -> ImageStore:
    """A store of ``shape`` at ``path``, created empty (sparse: no disk used by unwritten rows)
    with its row mask when missing. Callers serialise writers (a file lock)."""
    path = Path(path)
    store = ImageStore(path, shape)
    for item in (path, _mask_path(path), _crc_path(path)):  # a link to /dev/zero, a folder
        _discard_if_not_regular(item)
    if not path.exists() or path.stat().st_size != store.nbytes:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as fh:
            fh.truncate(store.nbytes)
        _mask_path(path).unlink(missing_ok=True)
        _crc_path(path).unlink(missing_ok=True)
    return store


def _discard_if_not_regular(path: Path) -> None:
    """Remove what sits at ``path`` when it is not a regular file, with one warning: the store
    is then rebuilt (a cache that heals, docs/running.md)."""
    import shutil
    import stat
    import warnings

    from tlbench.safeio import TlbenchWarning

    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return
    if stat.S_ISREG(mode):
        return
    warnings.warn(
        f"cache {path}: not a regular file; discarded and recomputed", TlbenchWarning, stacklevel=3
    )
    if stat.S_ISDIR(mode):
        shutil.rmtree(path, ignore_errors=True)
    else:
        Path(path).unlink(missing_ok=True)


def _mask_path(path: str | os.PathLike) -> Path:
    return Path(f"{path}.rows")


def rows_present(store: ImageStore) -> np.ndarray:
    """Boolean mask of the rows written so far."""
    mask_path = _mask_path(store.path)
    if not mask_path.exists():
        return np.zeros(len(store), dtype=bool)
    mask = np.fromfile(mask_path, dtype=np.uint8)
    if len(mask) != len(store):
        return np.zeros(len(store), dtype=bool)
    return mask.astype(bool)


def write_rows(store: ImageStore, rows: np.ndarray, values: np.ndarray) -> None:
    """Write ``values`` (len(rows), *row shape) at ``rows`` (positioned writes, no map), and
    record their checksums."""
    values = np.ascontiguousarray(values, dtype=np.uint8)
    size = store.row_bytes
    fd = os.open(store.path, os.O_WRONLY)
    try:
        for row, value in zip(rows.tolist(), values, strict=True):
            os.pwrite(fd, memoryview(value).cast("B"), int(row) * size)
    finally:
        os.close(fd)
    record_checksums(store, rows, checksums(values))


def mark_rows(store: ImageStore, rows: np.ndarray, written: bool = True) -> None:
    """Record ``rows`` as written (after their bytes are), or with ``written=False`` as to be
    written again (rows that failed ``verify``): the mask is replaced atomically."""
    mask = rows_present(store)
    mask[rows] = written
    _replace_array(_mask_path(store.path), mask.astype(np.uint8))


# -- integrity --------------------------------------------------------------------------------

# Stores this process has checked (or written): (path, device, inode) of the file.
_VERIFIED: set = set()


def _crc_path(path: str | os.PathLike) -> Path:
    return Path(f"{path}.crc")


def checksums(rows: np.ndarray) -> np.ndarray:
    """The recorded form of each row's CRC-32 (uint64, ``_RECORDED`` set)."""
    rows = np.ascontiguousarray(rows, dtype=np.uint8)
    flat = rows.reshape(len(rows), -1)
    return (
        np.fromiter((zlib.crc32(row.data) for row in flat), dtype=np.uint64, count=len(flat))
        | _RECORDED
    )


def _recorded(store: ImageStore) -> np.ndarray:
    try:
        sums = np.fromfile(_crc_path(store.path), dtype=np.uint64)
    except (OSError, ValueError):
        return np.zeros(len(store), np.uint64)
    return sums if len(sums) == len(store) else np.zeros(len(store), np.uint64)


def _replace_array(path: Path, values: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    values.tofile(tmp)
    os.replace(tmp, path)


def record_checksums(store: ImageStore, rows: np.ndarray, sums: np.ndarray) -> None:
    """Record ``sums`` (from ``checksums``) for ``rows``; the file is replaced atomically.
    Callers serialise writers (a file lock)."""
    recorded = _recorded(store)
    recorded[np.asarray(rows, dtype=np.int64)] = sums
    _replace_array(_crc_path(store.path), recorded)


def _identity(store: ImageStore) -> tuple:
    info = os.stat(store.path)
    return store.path, info.st_dev, info.st_ino


def verify(store: ImageStore, present: np.ndarray | None = None) -> np.ndarray:
    """The rows (of ``present``, a boolean mask; all rows when None) whose bytes differ from
    their recorded checksum. Runs of consecutive rows are read together, in blocks of at most
    ``READ_CHUNK_BYTES``; rows not asked for are not read. Present rows without a checksum (a
    store written before checksums) get one recorded from their bytes as they are now (when the
    cache can be written)."""
    if len(store) == 0:
        return np.zeros(0, np.int64)
    recorded = _recorded(store)
    wanted = np.ones(len(store), bool) if present is None else np.asarray(present, bool)
    size = store.row_bytes
    per_read = max(1, READ_CHUNK_BYTES // max(1, size))
    bad: list[int] = []
    adopted: dict[int, np.uint64] = {}
    fd = os.open(store.path, os.O_RDONLY)
    try:
        for first, stop in _runs(np.flatnonzero(wanted), per_read):
            block = os.pread(fd, (stop - first) * size, first * size)
            view = memoryview(block)
            for row in range(first, stop):
                offset = (row - first) * size
                if offset + size > len(block):  # the file is shorter than its shape
                    bad.append(row)
                    continue
                crc = np.uint64(zlib.crc32(view[offset : offset + size])) | _RECORDED
                if not recorded[row]:
                    adopted[row] = crc
                elif crc != recorded[row]:
                    bad.append(row)
    finally:
        os.close(fd)
    if adopted:
        rows = np.fromiter(adopted, dtype=np.int64, count=len(adopted))
        with contextlib.suppress(OSError):  # a read-only cache: checked next time again
            record_checksums(store, rows, np.fromiter(adopted.values(), np.uint64, len(adopted)))
    return np.asarray(bad, dtype=np.int64)


def _runs(rows: np.ndarray, longest: int) -> Iterator[tuple[int, int]]:
    """(first, stop) of each run of consecutive ``rows`` (sorted), at most ``longest`` long."""
    if not len(rows):
        return
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    for run in np.split(rows, breaks):
        for first in range(int(run[0]), int(run[-1]) + 1, longest):
            yield first, min(first + longest, int(run[-1]) + 1)


def warn_corrupted(store: ImageStore, bad: int, remedy: str) -> None:
    """The one warning a damaged store costs (``remedy``: what is done about it)."""
    from tlbench.safeio import warn_once

    warn_once(
        f"cache {store.path}: {bad} of {len(store)} rows differ from their checksum "
        f"(corrupted on disk); {remedy}",
        stacklevel=3,
    )


def verify_once(store: ImageStore, present: np.ndarray | None = None) -> np.ndarray:
    """``verify`` the first time this process opens ``store`` (the same file: path and inode),
    nothing after that: the bad rows, or none. Of a store over ``VERIFY_BYTES`` a random sample
    of rows that size is checked."""
    try:
        identity = _identity(store)
    except OSError:
        return np.zeros(0, np.int64)
    if identity in _VERIFIED:
        return np.zeros(0, np.int64)
    rows = np.flatnonzero(np.ones(len(store), bool) if present is None else present)
    limit = max(1, VERIFY_BYTES // max(1, store.row_bytes))
    if len(rows) > limit:
        rows = np.random.default_rng().choice(rows, limit, replace=False)
    wanted = np.zeros(len(store), bool)
    wanted[rows] = True
    bad = verify(store, wanted)
    if not len(bad):
        _VERIFIED.add(identity)
    return bad
