"""Shared machinery for dataset loaders: decode once, fail with the culprit's path, fingerprint."""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tlbench.components import ImageSet, TargetData
from tlbench.datasetlib.catalog import default_data_root
from tlbench.errors import UserError
from tlbench.splits import SPLIT_OPTIONS

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# Decoded images are held in memory when they all share one size and fit this budget; otherwise
# they stay on disk as paths and are decoded by a DataLoader (see docs/datasets.md).
MEMORY_BUDGET_BYTES = 1 << 30
GRAY_MODES = ("L", "1", "LA", "I;16", "I")


def data_root(options: Mapping[str, Any]) -> Path:
    """Where torchvision-style datasets live: option ``root``, else the default data root."""
    return Path(options["root"]).expanduser() if options.get("root") else default_data_root()


def decode_once(factory: Callable) -> Callable:
    """Memoise a dataset factory per process on (argument, options that change content).

    Split options and the build context do not change what is decoded, so a grid of cells that
    differ only in seeds, shots or sizes shares one decoded ``TargetData``.
    """

    @functools.lru_cache(maxsize=8)
    def cached(argument, frozen):
        return factory(argument, dict(frozen))

    @functools.wraps(factory)
    def wrapper(argument, options, context=None):
        content = {k: _freeze(v) for k, v in options.items() if k not in SPLIT_OPTIONS}
        return cached(argument, tuple(sorted(content.items())))

    wrapper.cache_clear = cached.cache_clear
    return wrapper


def _freeze(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


@dataclass
class Decoded:
    """Images decoded from files: the ImageSet plus the files that were skipped as unreadable."""

    imageset: ImageSet
    skipped: list[str] = field(default_factory=list)


def decode_files(
    paths: Sequence[Path],
    labels: Sequence[int],
    *,
    on_corrupt: str = "fail",
    decode: str = "auto",
    what: str = "dataset",
) -> Decoded:
    """Read image files into an ``ImageSet``: in memory when uniform and small, else lazily.

    Every file's header is read once here, so unreadable files are found up front; with
    ``on_corrupt = "skip"`` they are dropped and listed, otherwise a ``UserError`` names the file.
    """
    from PIL import Image

    headers, kept, skipped = [], [], []
    for path, label in zip(paths, labels, strict=True):
        try:
            with Image.open(path) as img:
                headers.append((img.size, img.mode))
            kept.append((str(path), int(label)))
        except Exception as exc:
            _corrupt(path, exc, on_corrupt, what)
            skipped.append(str(path))
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
    arrays, good = [], []
    for path, label in kept:
        try:
            arrays.append(load_array(path, mode))
            good.append(label)
        except Exception as exc:  # a truncated file passes the header check, fails here
            _corrupt(path, exc, on_corrupt, what)
            skipped.append(path)
    return Decoded(
        ImageSet(labels=np.asarray(good, dtype=np.int64), images=np.stack(arrays)), skipped
    )


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
        if imageset.images is not None:
            digest.update(repr(imageset.images.shape).encode())
            digest.update(np.ascontiguousarray(imageset.images).tobytes())
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
