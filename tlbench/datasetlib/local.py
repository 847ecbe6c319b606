"""Datasets read from files on this machine: digits, Fashion-MNIST, image folders, CSV manifests."""

from __future__ import annotations

import csv
import gzip
import hashlib
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from tlbench.components import ImageSet, TargetData
from tlbench.datasetlib.catalog import fashion_mnist_dirs, locate_fashion
from tlbench.datasetlib.common import (
    IMG_EXTENSIONS,
    Decoded,
    decode_files,
    decode_once,
    make_target,
    store_dir_of,
)
from tlbench.errors import UserError

FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


@decode_once
def digits(argument: str | None, options: Mapping[str, Any]) -> TargetData:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # 0..16 intensity levels to the uint8 range every other dataset uses.
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    train = ImageSet(labels=bunch.target.astype(np.int64), images=images)
    card = {
        "source": "scikit-learn load_digits (UCI Optical Recognition of Handwritten Digits)",
        "license": "CC BY 4.0 (UCI ML repository)",
        "official_test": "none: the core carves a fixed stratified 20% test split",
    }
    return make_target("digits", [str(i) for i in range(10)], train, None, card)


# ---- Fashion-MNIST -----------------------------------------------------------------------------

# Shifts of the test images only, for measuring robustness to a train/test distribution shift
# (Kumar et al. 2022's LP-FT question) from offline data.
TEST_SHIFTS = ("invert", "rotate90")


def shift_images(images: np.ndarray, shift: str) -> np.ndarray:
    """``images`` (N, H, W) uint8 after ``shift``: 255 - pixel, or a quarter turn counter-clockwise."""
    if shift == "invert":
        return 255 - images
    if shift == "rotate90":
        return np.ascontiguousarray(np.rot90(images, k=1, axes=(1, 2)))
    raise UserError(f"unknown test_shift {shift!r} (expected one of {', '.join(TEST_SHIFTS)})")


@decode_once
def fashion_mnist(argument: str | None, options: Mapping[str, Any]) -> TargetData:
    root = options.get("root")
    files = locate_fashion(root)
    if files is None:
        looked = ", ".join(str(d) for d in fashion_mnist_dirs(root))
        raise UserError(
            f"fashion-mnist: IDX files not found (looked in {looked}); run `apt-get install dataset-fashion-mnist` "
            "or set the dataset option root to a folder holding train-images-idx3-ubyte(.gz) etc."
        )
    train = ImageSet(
        labels=read_idx(files["train_labels"]).astype(np.int64),
        images=read_idx(files["train_images"]),
    )
    shift = options.get("test_shift")
    test_images = read_idx(files["test_images"])
    test = ImageSet(
        labels=read_idx(files["test_labels"]).astype(np.int64),
        images=shift_images(test_images, shift) if shift else test_images,
    )
    digest = hashlib.sha256()
    for key in sorted(files):
        digest.update(key.encode() + hashlib.sha256(files[key].read_bytes()).digest())
    if shift:  # unshifted data keeps the fingerprint it always had
        digest.update(f"test_shift={shift}".encode())
    card = {
        "source": f"Zalando Fashion-MNIST IDX files in {files['train_images'].parent}",
        "license": "MIT",
        "official_test": "t10k (10000 images)",
    }
    if shift:
        card["test_shift"] = f"{shift}, applied to the test images only"
    return make_target(
        "fashion-mnist", FASHION_CLASSES, train, test, card, fingerprint=digest.hexdigest()
    )


def read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (MNIST format), gzip-compressed or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise UserError(f"{str(path)!r} is not an unsigned-byte IDX file (magic {data[:4].hex()})")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    payload = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if payload.size != int(np.prod(shape)):
        raise UserError(
            f"{str(path)!r} is truncated: expected {int(np.prod(shape))} bytes of data, found {payload.size}"
        )
    return payload.reshape(shape).copy()


# ---- image folders -----------------------------------------------------------------------------


def is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMG_EXTENSIONS


def scan_folder(root: Path, what: str) -> dict[str, list[Path]]:
    """Class name -> sorted image files, checking the layout the way a user needs to hear about it."""
    if not root.is_dir():
        raise UserError(f"{what}: folder {str(root)!r} does not exist")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise UserError(
            f"{what}: folder {str(root)!r} has no class subfolders (expected {root}/<class>/<image>)"
        )
    classes = {}
    for folder in class_dirs:
        files = sorted(p for p in folder.rglob("*") if is_image(p))
        if not files:
            raise UserError(
                f"{what}: class folder {str(folder)!r} holds no images ({', '.join(IMG_EXTENSIONS)})"
            )
        classes[folder.name] = files
    return classes


@decode_once
def imagefolder(argument: str | None, options: Mapping[str, Any], context=None) -> TargetData:
    root = Path(options["root"]).expanduser()
    what = f"imagefolder {str(root)!r}"
    train_classes = scan_folder(root, what)
    class_names = list(train_classes)
    train = _decode_classes(train_classes, class_names, options, what, store_dir_of(context))
    test = None
    if options.get("test_root"):
        test_root = Path(options["test_root"]).expanduser()
        test_what = f"imagefolder test_root {str(test_root)!r}"
        test_classes = scan_folder(test_root, test_what)
        unknown = sorted(set(test_classes) - set(class_names))
        if unknown:
            raise UserError(
                f"{test_what}: class folder {unknown[0]!r} is not a class of root {str(root)!r} (classes: {', '.join(class_names)})"
            )
        test = _decode_classes(test_classes, class_names, options, test_what, store_dir_of(context))
    return _target_from_decoded(
        f"imagefolder:{root}", class_names, train, test, f"image folder {root}"
    )


def _decode_classes(
    classes: dict[str, list[Path]], class_names: list[str], options, what: str, store_dir=None
) -> Decoded:
    paths = [p for name in classes for p in classes[name]]
    labels = [class_names.index(name) for name in classes for _ in classes[name]]
    return decode_files(
        paths,
        labels,
        on_corrupt=options.get("on_corrupt", "fail"),
        decode=options.get("decode", "auto"),
        what=what,
        store_dir=store_dir,
    )


def _target_from_decoded(
    name, class_names, train: Decoded, test: Decoded | None, source: str
) -> TargetData:
    skipped = train.skipped + (test.skipped if test else [])
    card = {
        "source": source,
        "license": "as licensed by the owner of the files",
        "official_test": "given"
        if test
        else "none: the core carves a fixed stratified 20% test split",
        "skipped_files": len(skipped),
        "skipped": skipped[:100],
    }
    return make_target(name, class_names, train.imageset, test.imageset if test else None, card)


# ---- CSV manifests -----------------------------------------------------------------------------


@decode_once
def manifest(argument: str | None, options: Mapping[str, Any], context=None) -> TargetData:
    csv_path = Path(options["path"]).expanduser()
    what = f"manifest {str(csv_path)!r}"
    rows = _read_manifest(csv_path, what)
    class_names, label_of = _label_mapping(rows, options, what)
    parts: dict[str, tuple[list[Path], list[int]]] = {"train": ([], []), "test": ([], [])}
    for line, row in rows:
        part = _split_of(row, line, what)
        path = Path(row["path"]).expanduser()
        parts[part][0].append(path if path.is_absolute() else csv_path.parent / path)
        parts[part][1].append(label_of(row["label"], line))
    if not parts["train"][0]:
        raise UserError(f"{what}: no training rows")
    kw = {
        "on_corrupt": options.get("on_corrupt", "fail"),
        "decode": options.get("decode", "auto"),
        "what": what,
        "store_dir": store_dir_of(context),
    }
    train = decode_files(*parts["train"], **kw)
    test = decode_files(*parts["test"], **kw) if parts["test"][0] else None
    return _target_from_decoded(
        f"manifest:{csv_path}", class_names, train, test, f"CSV manifest {csv_path}"
    )


def _read_manifest(csv_path: Path, what: str) -> list[tuple[int, dict]]:
    if not csv_path.is_file():
        raise UserError(f"{what}: file does not exist")
    with open(csv_path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"path", "label"} - set(reader.fieldnames or ())
        if missing:
            raise UserError(
                f"{what}: needs a header with columns path,label[,split]; missing {', '.join(sorted(missing))}"
            )
        rows = [
            (line, row)
            for line, row in enumerate(reader, start=2)
            if any((v or "").strip() for v in row.values())
        ]
    if not rows:
        raise UserError(f"{what}: has no rows")
    return rows


def _split_of(row: dict, line: int, what: str) -> str:
    value = (row.get("split") or "train").strip().lower()
    if value in ("train", "val", "trainval"):
        return "train"  # a given validation split joins the pool; the core carves val itself
    if value == "test":
        return "test"
    raise UserError(f"{what} line {line}: split {value!r} is not one of train, val, test")


def _label_mapping(rows, options, what: str):
    raw = [row["label"].strip() for _, row in rows]
    given_classes = (
        [c.strip() for c in options["classes"].split(",")] if options.get("classes") else None
    )
    if given_classes is None and all(_is_int(v) for v in raw):
        ints = [int(v) for v in raw]
        count = options.get("num_classes") or max(ints) + 1
        names = [str(i) for i in range(count)]

        def label_of(value: str, line: int) -> int:
            if not _is_int(value) or not 0 <= int(value) < count:
                raise UserError(
                    f"{what} line {line}: label {value.strip()!r} is out of range for num_classes = {count} (expected 0..{count - 1})"
                )
            return int(value)

        return names, label_of
    names = given_classes or sorted(set(raw))
    index = {name: i for i, name in enumerate(names)}

    def label_of(value: str, line: int) -> int:
        if value.strip() not in index:
            raise UserError(
                f"{what} line {line}: unknown label {value.strip()!r} (classes: {', '.join(names)})"
            )
        return index[value.strip()]

    return names, label_of


def _is_int(value: str) -> bool:
    return value.strip().lstrip("-").isdigit()
