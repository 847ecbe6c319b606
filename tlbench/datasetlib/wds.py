"""``wds:`` datasets: WebDataset tar shards read with the ``webdataset`` library.

The shards are streamed once, by DataLoader workers (one shard each at a time, webdataset's
``split_by_worker``), to learn every sample's key and class (its ``cls`` entry). Images are not
held in memory: each split is an ``ImageSet`` whose items name a tar member (shard, offset,
size) that the loader reads and decodes when needed, so training and evaluation read shards
in parallel too. ``webdataset`` is imported only when a cell needs the data.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import io
import json
import os
import tarfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from tlbench.components import ImageSet
from tlbench.datasetlib.common import GRAY_MODES, data_root, decode_once, make_target
from tlbench.errors import UserError

MISSING_LIBRARY = "the webdataset library is not installed: pip install 'tlbench[wds]'"
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "ppm", "pgm", "bmp", "tif", "tiff")
SIDECARS = ("classes.json", "classes.txt")
MODE_SAMPLE = 16


def expand(pattern: str, root: Path) -> list[Path]:
    """The shard files a brace pattern names (``train-{000..009}.tar``), under ``root``."""
    from braceexpand import braceexpand  # webdataset's own dependency

    return [root / name for name in braceexpand(pattern)]


def available(argument: str, options: Mapping[str, Any]) -> bool | str:
    """Cheap: the library is installed and the first and last shard exist (no import)."""
    if importlib.util.find_spec("webdataset") is None:
        return MISSING_LIBRARY
    if not argument:  # the family itself, as `tlbench list` shows it
        return True
    shards = expand(argument, data_root(options))
    missing = next((s for s in (shards[0], shards[-1]) if not s.is_file()), None)
    return f"shard {str(missing)!r} not found" if missing else True


def _import_webdataset():
    try:
        import webdataset
    except ImportError:
        raise UserError(MISSING_LIBRARY) from None
    return webdataset


def _scan(what: str, shards: list[Path], workers: int | None) -> list[tuple[str, str, int, str]]:
    """(shard, key, class, image extension) of every sample, in shard order, streamed by
    webdataset in DataLoader workers."""
    import torch

    webdataset = _import_webdataset()
    missing = next((s for s in shards if not s.is_file()), None)
    if missing is not None:
        raise UserError(f"{what}: shard {str(missing)!r} not found")
    if workers is None:
        workers = min(len(shards), max(0, (os.cpu_count() or 1) - 1), 8)
    pipeline = webdataset.WebDataset(
        [str(s) for s in shards],
        shardshuffle=False,
        empty_check=False,
        workersplitter=webdataset.split_by_worker,
    ).map(_sample_summary)
    loader = torch.utils.data.DataLoader(pipeline, batch_size=None, num_workers=workers)
    try:
        found = list(loader)
    except UserError as exc:
        last = str(exc).rstrip().splitlines()[-1] if str(exc).strip() else "UserError"
        raise UserError(f"{what}: {last.removeprefix('tlbench.errors.UserError: ')}") from None
    except Exception as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
        raise UserError(
            f"{what}: webdataset cannot read the shards ({type(exc).__name__}: {first})"
        ) from None
    order = {str(s): i for i, s in enumerate(shards)}
    positions = {}
    for shard in shards:  # tar member order: what a sequential reader sees
        with tarfile.open(shard) as tar:
            for position, name in enumerate(tar.getnames()):
                positions.setdefault((str(shard), name.split(".", 1)[0]), position)
    return sorted(found, key=lambda s: (order[s[0]], positions.get((s[0], s[1]), 0)))


def _sample_summary(sample: dict) -> tuple[str, str, int, str]:
    url, key = sample["__url__"], sample["__key__"]
    ext = next((e for e in IMAGE_EXTENSIONS if e in sample), None)
    if ext is None:
        entries = ", ".join(k for k in sample if not k.startswith("__"))
        raise UserError(f"sample {key!r} in {url} has no image (entries: {entries})")
    if "cls" not in sample:
        raise UserError(f"sample {key!r} in {url} has no cls entry (its class index)")
    try:
        label = int(sample["cls"].decode().strip())
    except ValueError:
        raise UserError(f"sample {key!r} in {url}: cls is not an integer") from None
    return url, key, label, ext


def _members(shards: list[Path]) -> dict[tuple[str, str], tuple[int, int]]:
    """(shard, member name) -> (data offset, size): random access to a sample's image."""
    found = {}
    for shard in shards:
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                found[(str(shard), member.name)] = (member.offset_data, member.size)
    return found


def read_member(item: str, mode: str):
    """Decode the image ``item`` names (``shard|offset|size|key``); module level for workers."""
    from PIL import Image

    shard, offset, size, key = item.split("|", 3)
    try:
        with open(shard, "rb") as fh:
            fh.seek(int(offset))
            data = fh.read(int(size))
        with Image.open(io.BytesIO(data)) as img:
            return img.convert(mode)
    except Exception as exc:
        raise UserError(
            f"cannot read image {key} in {shard} ({type(exc).__name__}: {exc})"
        ) from None


def _split(what: str, shards: list[Path], workers: int | None):
    samples = _scan(what, shards, workers)
    if not samples:
        raise UserError(f"{what}: the shards hold no samples")
    members = _members(shards)
    items = []
    for shard, key, _, ext in samples:
        offset, size = members[(shard, f"{key}.{ext}")]
        items.append(f"{shard}|{offset}|{size}|{key}")
    labels = np.asarray([label for _, _, label, _ in samples], dtype=np.int64)
    if labels.min() < 0:
        raise UserError(f"{what}: a cls entry is negative ({labels.min()})")
    return items, labels


def _class_names(what: str, option: str | None, root: Path, shard_dir: Path, largest: int):
    if option and "," not in option and (root / option).is_file():
        return _read_sidecar(what, root / option)
    if option:
        return tuple(n.strip() for n in option.split(",") if n.strip())
    for name in SIDECARS:
        if (shard_dir / name).is_file():
            return _read_sidecar(what, shard_dir / name)
    return tuple(str(i) for i in range(largest + 1))


def _read_sidecar(what: str, path: Path) -> tuple[str, ...]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            names = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(f"{what}: {path} is not JSON ({exc})") from None
        if isinstance(names, dict):  # {"0": "cat", ...} or {"cat": 0, ...}
            pairs = [(int(k), v) if str(k).isdigit() else (int(v), k) for k, v in names.items()]
            names = [name for _, name in sorted(pairs)]
        if not isinstance(names, list):
            raise UserError(f"{what}: {path} must hold a list of class names")
        return tuple(str(n) for n in names)
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def _mode(items: list[str]) -> str:
    from PIL import Image

    modes = []
    for item in items[:MODE_SAMPLE]:
        shard, offset, size, _ = item.split("|", 3)
        with open(shard, "rb") as fh:
            fh.seek(int(offset))
            with Image.open(io.BytesIO(fh.read(int(size)))) as img:
                modes.append(img.mode)
    return "L" if all(m in GRAY_MODES for m in modes) else "RGB"


@decode_once
def wds_dataset(argument: str, options: Mapping[str, Any]):
    what = f"wds:{argument}"
    root = data_root(options)
    workers = options.get("workers")
    train_shards = expand(argument, root)
    items, labels = _split(what, train_shards, workers)
    test_shards = expand(options["test"], root) if options.get("test") else []
    test_items, test_labels = (
        _split(f"{what} test", test_shards, workers) if test_shards else ([], None)
    )
    largest = int(max(labels.max(), test_labels.max() if test_labels is not None else 0))
    classes = _class_names(what, options.get("classes"), root, train_shards[0].parent, largest)
    if largest >= len(classes):
        raise UserError(
            f"{what}: a cls entry is {largest} but there are {len(classes)} class names"
        )
    mode = _mode(items)
    loader = functools.partial(read_member, mode=mode)
    train = ImageSet(labels=labels, paths=tuple(items), loader=loader)
    test = (
        ImageSet(labels=test_labels, paths=tuple(test_items), loader=loader)
        if test_shards
        else None
    )
    digest = hashlib.sha256(repr((what, classes, mode)).encode())
    for shard in train_shards + [None] + test_shards:
        if shard is None:
            digest.update(b"test")
            continue
        stat = shard.stat()
        digest.update(f"{shard}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    card = {
        "source": f"WebDataset shards {argument} in {root} via webdataset",
        "shards": {"train": len(train_shards), "test": len(test_shards)},
        "official_split": f"test = {options['test']}" if test_shards else "none (carved)",
        "storage": "lazy (tar members read on demand)",
    }
    return make_target(what, classes, train, test, card, fingerprint=digest.hexdigest())
