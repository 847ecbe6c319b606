"""torchvision classification datasets with their official splits.

Where torchvision offers train/val/test (flowers102, dtd), train+val is the training pool (the
core carves its own validation from it) and test is the test split. Datasets without an official
split (eurosat, caltech101) get the core's fixed, stratified 20% test carve-out.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from tlbench.components import ImageSet, TargetData
from tlbench.datasetlib.catalog import TV_SETS, TVSet, tv_availability
from tlbench.datasetlib.common import (
    array_fingerprint,
    data_root,
    decode_once,
    load_image,
    make_target,
)
from tlbench.errors import UserError


@decode_once
def _load(name: str, options: Mapping[str, Any]) -> TargetData:
    return _build(name, options)


def factory_for(name: str) -> Callable:
    """The registered factory of one dataset: ``factory(argument, options, context)``."""

    def factory(argument, options, context=None):
        return _load(name, options)

    factory.__name__ = factory.__qualname__ = name.replace("-", "_")
    return factory


cifar10 = factory_for("cifar10")
cifar100 = factory_for("cifar100")
svhn = factory_for("svhn")
flowers102 = factory_for("flowers102")
pets = factory_for("pets")
dtd = factory_for("dtd")
eurosat = factory_for("eurosat")
food101 = factory_for("food101")
caltech101 = factory_for("caltech101")


def _build(name: str, options: Mapping[str, Any]) -> TargetData:
    spec = TV_SETS[name]
    root = data_root(options)
    download = bool(options.get("download"))
    if not download and tv_availability(name, root) is not True:
        raise UserError(f"dataset {name!r}: {tv_availability(name, root)}")
    train_parts = [_construct(spec, kw, root, download) for kw in spec.train_parts]
    test_parts = (
        [_construct(spec, kw, root, download) for kw in spec.test_parts]
        if spec.test_parts
        else None
    )
    class_names = _class_names(name, train_parts[0])
    train = _concat([_imageset(name, ds) for ds in train_parts])
    test = _concat([_imageset(name, ds) for ds in test_parts]) if test_parts else None
    card = {**spec.card, "root": str(root)}
    card.pop("classes", None)
    card.pop("image_size", None)
    fingerprint = array_fingerprint(name, class_names, train, test)
    return make_target(name, class_names, train, test, card, fingerprint=fingerprint)


def _construct(spec: TVSet, kwargs: dict, root: Path, download: bool):
    import torchvision.datasets as tvd

    try:
        return getattr(tvd, spec.cls)(root=str(root), download=download, **kwargs)
    except RuntimeError as exc:
        if "download" not in str(exc).lower():
            raise
        raise UserError(
            f"dataset {spec.name!r}: not found or corrupted in {root} ({exc}); set the dataset option download = true, or root"
        ) from None
    except OSError as exc:  # download attempted without network
        raise UserError(
            f"dataset {spec.name!r}: download into {root} failed ({type(exc).__name__}: {exc}); fetch the files by hand into root"
        ) from None


def _class_names(name: str, ds) -> list[str]:
    if name == "svhn":
        return [str(i) for i in range(10)]
    if name == "caltech101":
        return list(ds.categories)
    return list(ds.classes)


def _imageset(name: str, ds) -> ImageSet:
    """Arrays where torchvision holds them decoded; otherwise paths, decoded lazily as RGB."""
    if name in ("cifar10", "cifar100"):
        return ImageSet(
            labels=np.asarray(ds.targets, dtype=np.int64), images=np.ascontiguousarray(ds.data)
        )
    if name == "svhn":
        return ImageSet(
            labels=np.asarray(ds.labels, dtype=np.int64),
            images=np.ascontiguousarray(ds.data.transpose(0, 2, 3, 1)),
        )
    if name == "eurosat":
        paths, labels = zip(*ds.samples, strict=True)
    elif name == "caltech101":
        folder = Path(ds.root) / "101_ObjectCategories"
        paths = [
            str(folder / ds.categories[y] / f"image_{i:04d}.jpg")
            for i, y in zip(ds.index, ds.y, strict=True)
        ]
        labels = ds.y
    elif name == "pets":
        paths, labels = ds._images, ds._labels
    else:  # flowers102, dtd, food101
        paths, labels = ds._image_files, ds._labels
    return ImageSet(
        labels=np.asarray(labels, dtype=np.int64),
        paths=tuple(str(p) for p in paths),
        loader=functools.partial(load_image, mode="RGB"),
    )


def _concat(sets: list[ImageSet]) -> ImageSet:
    if len(sets) == 1:
        return sets[0]
    labels = np.concatenate([s.labels for s in sets])
    if all(s.images is not None for s in sets):
        return ImageSet(labels=labels, images=np.concatenate([s.images for s in sets]))
    return ImageSet(
        labels=labels, paths=tuple(p for s in sets for p in s.paths), loader=sets[0].loader
    )
