"""torchvision classification datasets with their official splits.

Where torchvision offers train/val/test (flowers102, dtd), train+val is the training pool (the
core carves its own validation from it) and test is the test split. Datasets without an official
split (eurosat, caltech101) get the core's fixed, stratified 20% test carve-out.

torchvision reads the files; this module turns its objects into ``ImageSet``s, gives one class
numbering to all official parts of a dataset, and turns every failure of torchvision's readers
into one ``UserError`` line naming the dataset and the file.
"""

from __future__ import annotations

import dataclasses
import functools
import os
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

# torchvision numbers these classes per split file (sorted names present in that file), so
# their parts are aligned by class name; every other dataset numbers classes by official id.
ALIGNED_BY_NAME = ("dtd", "food101")
REFETCH = (
    "delete the dataset's folder under root and set download = true, or point root at a good copy"
)


@decode_once
def read_dataset(name: str, options: Mapping[str, Any]) -> TargetData:
    """Read one dataset (memoised per process on its content options, see ``decode_once``)."""
    return _build(name, options)


def factory_for(name: str) -> Callable:
    """The registered factory of one dataset: ``factory(argument, options, context)``."""

    def factory(argument, options, context=None):
        return read_dataset(name, options)

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


@dataclasses.dataclass(frozen=True)
class Part:
    """One official part as torchvision numbered it: its images and the name of each label."""

    imageset: ImageSet
    names: Mapping[int, str]


def _build(name: str, options: Mapping[str, Any]) -> TargetData:
    spec = TV_SETS[name]
    root = data_root(options)
    download = bool(options.get("download"))
    if not download:
        found = tv_availability(name, root)
        if found is not True:
            raise UserError(f"dataset {name!r}: {found}")
    kwargs = [*spec.train_parts, *(spec.test_parts or ())]
    parts = [_read_part(name, _construct(spec, kw, root, download)) for kw in kwargs]
    class_names, imagesets = align_classes(name, parts)
    n_train = len(spec.train_parts)
    train = _concat(imagesets[:n_train])
    test = _concat(imagesets[n_train:]) if spec.test_parts else None
    for imageset in (train, test):
        if imageset is not None and imageset.paths is not None:
            _require_files(name, imageset.paths)
    card = {**spec.card, "root": str(root)}
    card.pop("classes", None)
    card.pop("image_size", None)
    fingerprint = array_fingerprint(name, class_names, train, test)
    return make_target(name, class_names, train, test, card, fingerprint=fingerprint)


def _construct(spec: TVSet, kwargs: dict, root: Path, download: bool):
    import torchvision.datasets as tvd

    try:
        return getattr(tvd, spec.cls)(root=str(root), download=download, **kwargs)
    except Exception as exc:  # third-party reader: every failure becomes one line
        raise UserError(explain_failure(spec, root, download, exc)) from None


def explain_failure(spec: TVSet, root: Path, download: bool, exc: Exception) -> str:
    """One line saying which file of ``spec`` under ``root`` is wrong and what to do."""
    where = f"dataset {spec.name!r}"
    detail = _one_line(f"{type(exc).__name__}: {exc}")
    if download and isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError):
        return (
            f"{where}: download into {root} failed ({detail}); on a machine with internet, "
            "run once with download = true and copy root here"
        )
    damaged = first_damaged_file(spec, root)
    if damaged is not None:
        return (
            f"{where}: {damaged} is missing or damaged (its md5 is not the one torchvision "
            f"expects); {REFETCH}"
        )
    if isinstance(exc, FileNotFoundError) and exc.filename:
        return f"{where}: {exc.filename} is missing; {REFETCH}"
    return f"{where}: torchvision cannot read the files under {root} ({detail}); {REFETCH}"


def first_damaged_file(spec: TVSet, root: Path) -> Path | None:
    """The first file torchvision verifies by md5 (CIFAR, SVHN, Flowers102) that fails the check."""
    from torchvision.datasets.utils import check_integrity

    try:
        checked = _checksummed_files(spec, root)
    except (AttributeError, KeyError, TypeError):  # another torchvision's private tables
        return None
    for path, md5 in checked:
        if not check_integrity(str(path), md5):
            return path
    return None


def _checksummed_files(spec: TVSet, root: Path) -> list[tuple[Path, str]]:
    import torchvision.datasets as tvd

    cls = getattr(tvd, spec.cls)
    if spec.cls in ("CIFAR10", "CIFAR100"):
        listed = [*cls.train_list, *cls.test_list, (cls.meta["filename"], cls.meta["md5"])]
        return [(root / cls.base_folder / file, md5) for file, md5 in listed]
    if spec.cls == "SVHN":
        splits = [kw["split"] for kw in (*spec.train_parts, *(spec.test_parts or ()))]
        return [(root / cls.split_list[s][1], cls.split_list[s][2]) for s in splits]
    if spec.cls == "Flowers102":
        return [
            (root / "flowers-102" / cls._file_dict[key][0], cls._file_dict[key][1])
            for key in ("label", "setid")
        ]
    return []


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _read_part(name: str, ds) -> Part:
    """Arrays where torchvision holds them decoded; otherwise paths, decoded lazily as RGB."""
    if name in ("cifar10", "cifar100"):
        images = ImageSet(
            labels=np.asarray(ds.targets, dtype=np.int64), images=np.ascontiguousarray(ds.data)
        )
        return Part(images, dict(enumerate(ds.classes)))
    if name == "svhn":  # torchvision already maps SVHN's label 10 to digit 0
        images = ImageSet(
            labels=np.asarray(ds.labels, dtype=np.int64).reshape(-1),
            images=np.ascontiguousarray(ds.data.transpose(0, 2, 3, 1)),
        )
        return Part(images, {d: str(d) for d in range(10)})
    if name == "eurosat":
        paths, labels = zip(*ds.samples, strict=True)  # ImageFolder refuses an empty folder
        names = dict(enumerate(ds.classes))
    elif name == "caltech101":
        folder = Path(ds.root) / "101_ObjectCategories"
        paths = [
            folder / ds.categories[y] / f"image_{i:04d}.jpg"
            for i, y in zip(ds.index, ds.y, strict=True)
        ]
        labels, names = ds.y, dict(enumerate(ds.categories))
    elif name == "pets":
        paths, labels = ds._images, ds._labels
        names = {label: pet_breed(Path(p).stem) for p, label in zip(paths, labels, strict=True)}
    else:  # flowers102, dtd, food101
        paths, labels, names = ds._image_files, ds._labels, dict(enumerate(ds.classes))
    images = ImageSet(
        labels=np.asarray(labels, dtype=np.int64),
        paths=tuple(str(p) for p in paths),
        loader=functools.partial(read_rgb, dataset=name, mode="RGB"),
    )
    return Part(images, names)


def pet_breed(image_id: str) -> str:
    """torchvision's breed name of an Oxford-IIIT Pet image id: ``great_pyrenees_12`` -> ``Great Pyrenees``."""
    return " ".join(part.title() for part in image_id.rsplit("_", 1)[0].split("_"))


def align_classes(name: str, parts: list[Part]) -> tuple[list[str], list[ImageSet]]:
    """One class numbering for all parts of a dataset.

    torchvision numbers DTD and Food-101 classes per split file and derives Pets' class list from
    the trainval file alone, so a split lacking a class would shift every later label. Classes
    are matched by official id (by name for ``ALIGNED_BY_NAME``) and numbered in that order;
    Pets keeps only ids that occur, fixed name tables (CIFAR, SVHN, Flowers102) keep all.
    """
    if name in ALIGNED_BY_NAME:
        class_names = sorted({n for part in parts for n in part.names.values()})
        index = {n: i for i, n in enumerate(class_names)}
        maps = [{label: index[n] for label, n in part.names.items()} for part in parts]
    else:
        by_id: dict[int, str] = {}
        for part in parts:
            for label, n in part.names.items():
                if by_id.setdefault(label, n) != n:
                    raise UserError(
                        f"dataset {name!r}: class id {label + 1} is named both {by_id[label]!r} and {n!r} in the official split files; {REFETCH}"
                    )
        position = {label: i for i, label in enumerate(sorted(by_id))}
        class_names = [by_id[label] for label in sorted(by_id)]
        maps = [{label: position[label] for label in part.names} for part in parts]
    return class_names, [_relabel(name, p.imageset, m) for p, m in zip(parts, maps, strict=True)]


def _relabel(name: str, imageset: ImageSet, mapping: Mapping[int, int]) -> ImageSet:
    unnamed = sorted(set(np.unique(imageset.labels).tolist()) - set(mapping))
    if unnamed:
        raise UserError(
            f"dataset {name!r}: label {unnamed[0]} has no class name in the official files; {REFETCH}"
        )
    if all(k == v for k, v in mapping.items()):
        return imageset
    table = np.zeros(max(mapping) + 1, dtype=np.int64)
    table[list(mapping)] = list(mapping.values())
    return dataclasses.replace(imageset, labels=table[imageset.labels])


def read_rgb(path: str, dataset: str, mode: str = "RGB"):
    """Lazy loader (module level so DataLoader workers can pickle it). RGB like torchvision's own
    loaders, since Caltech-101 and Pets hold some grayscale JPEGs; a bad file names its dataset."""
    try:
        return load_image(path, mode)
    except UserError as exc:
        raise UserError(f"dataset {dataset!r}: {exc}; {REFETCH}") from None


def _require_files(name: str, paths: tuple[str, ...]) -> None:
    """Every image the official split files name must exist (checked up front: cheap stats)."""
    missing = [p for p in paths if not os.path.isfile(p)]
    if not missing:
        return
    hint = (
        " (torchvision numbers each category's images image_0001.jpg, ... by counting the files"
        " in its folder: remove any file that is not one of them)"
        if name == "caltech101"
        else ""
    )
    raise UserError(
        f"dataset {name!r}: {len(missing)} image file(s) named by the official split files are missing, "
        f"first {missing[0]!r}{hint}; {REFETCH}"
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
