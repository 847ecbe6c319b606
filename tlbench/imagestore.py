"""Decoded or preprocessed images as uint8 rows of one file on disk, read by row.

An ``ImageStore`` behaves like a read-only uint8 numpy array (``shape``, ``ndim``, ``len``,
``store[rows]``) whose rows are read from disk when indexed, so a dataset of any size costs the
process only the rows of the batch in hand: each read maps the file, copies the rows out and
unmaps it again, so the pages it touched leave the process's resident set (they stay in the
kernel's page cache, shared by every process that reads the same file). It pickles as its path,
so DataLoader workers open the same file instead of copying the data.

Files are written row by row (``StoreWriter``), never assembled in memory; a store that is filled
on demand (``rows_present``/``write_rows``) keeps a one-byte-per-row mask beside it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

READ_CHUNK_BYTES = 64 << 20  # bounds a sequential pass (hashing, copying out)


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

    def append(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=np.uint8)
        if rows.shape[1:] != self.row_shape:
            raise ValueError(f"row shape {rows.shape[1:]} != {self.row_shape}")
        self._fh.write(memoryview(rows).cast("B"))
        self.rows += len(rows)

    def close(self) -> ImageStore:
        self._fh.close()
        os.replace(self._tmp, self.path)
        return ImageStore(self.path, (self.rows, *self.row_shape))

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
    for item in (path, _mask_path(path)):  # a link to /dev/zero, a folder: never read
        _discard_if_not_regular(item)
    if not path.exists() or path.stat().st_size != store.nbytes:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as fh:
            fh.truncate(store.nbytes)
        _mask_path(path).unlink(missing_ok=True)
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


def _mask_path(path: os.PathLike) -> Path:
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
    """Write ``values`` (len(rows), *row shape) at ``rows`` (positioned writes, no map)."""
    values = np.ascontiguousarray(values, dtype=np.uint8)
    size = store.row_bytes
    fd = os.open(store.path, os.O_WRONLY)
    try:
        for row, value in zip(rows.tolist(), values, strict=True):
            os.pwrite(fd, memoryview(value).cast("B"), int(row) * size)
    finally:
        os.close(fd)


def mark_rows(store: ImageStore, rows: np.ndarray) -> None:
    """Record ``rows`` as written (after their bytes are): the mask is replaced atomically."""
    mask = rows_present(store)
    mask[rows] = True
    mask_path = _mask_path(store.path)
    tmp = mask_path.with_name(f".{mask_path.name}.{os.getpid()}.tmp")
    mask.astype(np.uint8).tofile(tmp)
    os.replace(tmp, mask_path)
