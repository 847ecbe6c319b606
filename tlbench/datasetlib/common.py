"""Shared machinery for dataset loaders: decode once, fail with the culprit's path, fingerprint."""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tlbench.cache import atomic_write_text
from tlbench.components import ImageSet, TargetData
from tlbench.datasetlib.catalog import default_data_root
from tlbench.errors import UserError
from tlbench.imagestore import ImageStore, StoreWriter, scratch_dir, verify_once, warn_corrupted
from tlbench.splits import SPLIT_OPTIONS

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# Decoded images are held in memory when they all share one size and fit this budget; otherwise
# they stay on disk as paths and are decoded by a DataLoader (see docs/datasets.md).
MEMORY_BUDGET_BYTES = 1 << 30
GRAY_MODES = ("L", "1", "LA", "I;16", "I")
DECODED_VERSION = 1  # bump when what a decoded store holds changes
DECODE_WINDOW = 256  # images decoded at once into a store (threads; bounds the memory held)
DECODE_THREADS_ENV = "TLBENCH_DECODE_THREADS"


def data_root(options: Mapping[str, Any]) -> Path:
    """Where torchvision-style datasets live: option ``root``, else the default data root."""
    return Path(options["root"]).expanduser() if options.get("root") else default_data_root()


def decode_once(loader: Callable) -> Callable:
    """Turn a dataset loader into a dataset factory that decodes once per process.

    ``loader(argument, options)`` (or ``loader(argument, options, context)``) returns a
    ``TargetData``; the result is the factory a ``DatasetSpec`` names,
    ``factory(argument, options, context)``. Decoded data is memoised on the argument and the
    options that change content: split options (``train_size``, ``shots``, ``protocol``, ...) are
    applied later by the core and are not passed to the loader, so cells that differ only in seeds
    or split sizes share one decoded ``TargetData``. A loader that takes ``context`` gets the
    ``BuildContext`` of the first call (for its ``cache`` and ``log``; nothing that changes the
    data). Any other signature is a ``TypeError`` at decoration time, naming the loader.
    """
    takes_context = _takes_context(loader)
    current_context: list = [None]  # the context of the call being decoded

    @functools.lru_cache(maxsize=8)
    def cached(argument, frozen):
        context = (current_context[0],) if takes_context else ()
        return loader(argument, dict(frozen), *context)

    @functools.wraps(loader)
    def factory(argument, options, context=None):
        content = {k: _freeze(v) for k, v in options.items() if k not in SPLIT_OPTIONS}
        current_context[0] = context
        try:
            return cached(argument, tuple(sorted(content.items())))
        finally:
            current_context[0] = None

    del factory.__wrapped__  # its signature is the factory's, not the loader's
    factory.cache_clear = cached.cache_clear
    return factory


def _takes_context(loader: Callable) -> bool:
    """Whether ``loader`` wants ``(argument, options, context)`` rather than
    ``(argument, options)``; ``TypeError`` when it can take neither."""
    import inspect

    name = getattr(loader, "__qualname__", repr(loader))
    try:
        params = list(inspect.signature(loader).parameters.values())
    except (TypeError, ValueError):
        return False  # a builtin or C callable: assume the documented two arguments
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p for p in positional if p.default is p.empty]
    varargs = any(p.kind == p.VAR_POSITIONAL for p in params)
    keyword_only = [p.name for p in params if p.kind == p.KEYWORD_ONLY and p.default is p.empty]
    if len(required) > 3 or keyword_only or (len(positional) < 2 and not varargs):
        raise TypeError(
            f"decode_once wraps load(argument, options) or load(argument, options, context); "
            f"{name}{inspect.signature(loader)} cannot be called that way"
        )
    return varargs or len(positional) >= 3


def _freeze(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


@dataclass
class Decoded:
    """What ``decode_files`` returns: ``imageset``, the ``ImageSet`` to put in a ``TargetData``
    (decoded arrays in memory, or paths decoded lazily), and ``skipped``, the paths dropped as
    unreadable (only with ``on_corrupt = "skip"``; worth recording in the dataset's card)."""

    imageset: ImageSet
    skipped: list[str] = field(default_factory=list)


def decode_files(
    paths: Sequence[Path],
    labels: Sequence[int],
    *,
    on_corrupt: str = "fail",
    decode: str = "auto",
    what: str = "dataset",
    store_dir: os.PathLike | None = None,
) -> Decoded:
    """Read image files into a ``Decoded``: its ``imageset`` holds the images in memory when
    they share one size and fit 1 GiB (``decode = "auto"``; ``"memory"`` insists, ``"lazy"``
    keeps paths), else their paths, decoded when needed.

    ``paths`` and ``labels`` (class indices) are aligned. Every file's header is read once here,
    so unreadable files are found up front; with ``on_corrupt = "skip"`` they are dropped and
    listed in ``Decoded.skipped``, otherwise a ``UserError`` names the file (``what`` prefixes
    the message, usually the dataset's name). Images "in memory" are an ``ImageStore``: decoded
    once into a file in ``store_dir`` (the cache's ``decoded/`` folder; a scratch folder when
    None), read back by row, so memory does not grow with the number of images.
    """
    headers, kept, skipped = [], [], []
    pairs = list(zip(paths, labels, strict=True))
    # Opening files waits on the disk: threads read a window of headers at once, in order.
    with ThreadPoolExecutor(decode_threads()) as pool:
        for start in range(0, len(pairs), 16 * DECODE_WINDOW):
            window = pairs[start : start + 16 * DECODE_WINDOW]
            for (path, label), header in zip(
                window, pool.map(_header, [p for p, _ in window]), strict=True
            ):
                if isinstance(header, Exception):
                    _corrupt(path, header, on_corrupt, what)
                    skipped.append(str(path))
                    continue
                headers.append(header)
                kept.append((str(path), int(label)))
    if not kept:
        raise UserError(f"{what}: no readable images")
    mode = "L" if all(m in GRAY_MODES for _, m in headers) else "RGB"
    sizes = {s for s, _ in headers}
    channels = 1 if mode == "L" else 3
    nbytes = sum(w * h * channels for (w, h), _ in headers)
    in_memory = decode == "memory" or (
        decode == "auto" and len(sizes) == 1 and nbytes <= MEMORY_BUDGET_BYTES
    )
    if decode == "memory" and len(sizes) > 1:
        raise UserError(
            f"{what}: decode = 'memory' needs images of one size, found {len(sizes)} sizes (use decode = 'lazy' or 'auto')"
        )
    if not in_memory:
        file_list, label_list = zip(*kept, strict=True)
        return Decoded(
            ImageSet(
                labels=np.asarray(label_list, dtype=np.int64),
                paths=tuple(file_list),
                loader=functools.partial(load_image, mode=mode),
            ),
            skipped,
        )
    imageset, late = _decode_to_store(kept, mode, headers[0][0], on_corrupt, what, store_dir)
    return Decoded(imageset, skipped + late)


def decode_threads() -> int:
    """Threads that open and decode image files: ``TLBENCH_DECODE_THREADS``, else one per core
    up to 8 (Pillow decodes without holding the GIL)."""
    if os.environ.get(DECODE_THREADS_ENV):
        return max(1, int(os.environ[DECODE_THREADS_ENV]))
    return min(8, os.cpu_count() or 1)


def _header(path) -> tuple | Exception:
    """(size, mode) from an image file's header, or the exception that reading it raised."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.size, img.mode
    except Exception as exc:
        return exc


def _decode_to_store(kept, mode: str, size, on_corrupt: str, what: str, store_dir):
    """Decode ``kept`` (path, label) pairs row by row into an ``ImageStore`` file in
    ``store_dir``, never holding more than one image: the same bytes ``np.stack`` of the decoded
    arrays would hold. A store written earlier from the same files (path, size, mtime) is reused."""
    import json

    store_dir = Path(store_dir) if store_dir is not None else scratch_dir()
    width, height = size
    row_shape = (height, width) if mode == "L" else (height, width, 3)
    digest = hashlib.sha256(repr((DECODED_VERSION, mode, on_corrupt)).encode())
    for path, label in kept:
        stat = os.stat(path)
        digest.update(f"{path}|{label}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    base = store_dir / digest.hexdigest()
    meta_path = Path(f"{base}.json")
    if meta_path.exists():
        try:
            meta = json.loads(meta_path.read_text())
            store = ImageStore(f"{base}.u8", (len(meta["labels"]), *row_shape))
            if os.path.getsize(store.path) == store.nbytes:
                bad = verify_once(store)  # checksums, the first time this process reads it
                if not len(bad):
                    labels = np.asarray(meta["labels"], np.int64)
                    return ImageSet(labels=labels, images=store), meta["skipped"]
                warn_corrupted(store, len(bad), "decoded again")
        except (OSError, ValueError, KeyError):
            pass  # unreadable or partial: decode again
    writer = StoreWriter(f"{base}.u8", row_shape)
    good, skipped = [], []

    def decode(path):
        try:
            return load_array(path, mode)
        except Exception as exc:  # a truncated file passes the header check, fails here
            return exc

    # Pillow decodes without the GIL: threads decode a window of files at once, rows are written
    # in order, and at most one window of decoded images is held.
    try:
        with ThreadPoolExecutor(decode_threads()) as pool:
            for start in range(0, len(kept), DECODE_WINDOW):
                window = kept[start : start + DECODE_WINDOW]
                for (path, label), array in zip(
                    window, pool.map(decode, [p for p, _ in window]), strict=True
                ):
                    if isinstance(array, Exception):
                        _corrupt(path, array, on_corrupt, what)
                        skipped.append(path)
                        continue
                    writer.append(array[None])
                    good.append(label)
    except BaseException:
        writer.abort()
        raise
    store = writer.close()
    atomic_write_text(meta_path, json.dumps({"labels": good, "skipped": skipped}))
    return ImageSet(labels=np.asarray(good, dtype=np.int64), images=store), skipped


def store_dir_of(context) -> Path | None:
    """Where a loader given ``context`` keeps decoded stores: the cache's ``decoded/`` folder,
    or None (a scratch folder) without an enabled cache."""
    cache = getattr(context, "cache", None)
    return cache.root / "decoded" if cache is not None and cache.enabled else None


def _corrupt(path, exc: Exception, on_corrupt: str, what: str) -> None:
    if on_corrupt != "skip":
        raise UserError(
            f'{what}: cannot read image {str(path)!r} ({type(exc).__name__}: {exc}); fix or remove it, or set on_corrupt = "skip"'
        ) from None


def load_array(path: str, mode: str) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert(mode), dtype=np.uint8)


def load_image(path: str, mode: str = "RGB"):
    """Lazy loader for path-based ImageSets (module level so DataLoader workers can pickle it)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.convert(mode)
    except Exception as exc:
        raise UserError(f"cannot read image {path!r} ({type(exc).__name__}: {exc})") from None


def array_fingerprint(name: str, class_names: Sequence[str], *sets: ImageSet | None) -> str:
    digest = hashlib.sha256(repr((name, tuple(class_names))).encode())
    for imageset in sets:
        if imageset is None:
            digest.update(b"none")
            continue
        digest.update(np.ascontiguousarray(imageset.labels, dtype=np.int64).tobytes())
        if isinstance(imageset.images, ImageStore):  # the same bytes, read block by block
            digest.update(repr(imageset.images.shape).encode())
            imageset.images.update_hash(digest)
        elif imageset.images is not None:
            digest.update(repr(imageset.images.shape).encode())
            digest.update(memoryview(np.ascontiguousarray(imageset.images)).cast("B"))
        else:
            for path in imageset.paths:  # path, size and mtime: cheap and changes when a file does
                stat = os.stat(path)
                digest.update(f"{path}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def image_geometry(imageset: ImageSet) -> dict:
    if imageset.images is not None:
        shape = imageset.images.shape
        return {
            "image_size": [int(shape[1]), int(shape[2])],
            "channels": 1 if len(shape) == 3 else int(shape[3]),
            "storage": "memory",
        }
    return {
        "image_size": "varies",
        "channels": 1 if _mode_of(imageset) == "L" else 3,
        "storage": "lazy",
    }


def _mode_of(imageset: ImageSet) -> str:
    loader = imageset.loader
    return loader.keywords.get("mode", "RGB") if isinstance(loader, functools.partial) else "RGB"


def make_target(
    name: str,
    class_names: Sequence[str],
    train: ImageSet,
    test: ImageSet | None,
    card: Mapping[str, Any],
    fingerprint: str | None = None,
) -> TargetData:
    """Assemble a ``TargetData`` and complete its card with what is measurable from the data."""
    full_card = {
        "name": name,
        "classes": len(class_names),
        "splits": {"train": len(train), "test": len(test) if test is not None else None},
        **image_geometry(train),
        **dict(card),
    }
    fp = fingerprint or array_fingerprint(name, class_names, train, test)
    return TargetData(
        name=name,
        class_names=tuple(class_names),
        train=train,
        test=test,
        fingerprint=fp,
        card=full_card,
    )
