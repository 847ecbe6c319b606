"""Splits + preprocessing bound to the model's data config: ``prepare(...) -> PreparedData``.

Preprocessing is timm's own (``create_transform`` from the model's data config). The eval
transform (resize shorter side to ``floor(size / crop_pct)``, center crop) is applied once per
image and preprocessing, into an on-disk uint8 NCHW store of the whole image set
(``PreparedData.store``) that every split and seed indexes; ``batches`` reads it batch by batch
and only converts, replicates channels and normalises, on the target device. Memory therefore
does not grow with the number of images. When every step of timm's eval transform accepts
tensors (Resize with bilinear/bicubic/nearest, CenterCrop), it runs batched on uint8 tensors;
otherwise, and for path-based datasets, timm's PIL transform runs per image through DataLoader
workers, once. Augmented batches come from persistent DataLoader workers.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from filelock import FileLock

from tlbench.cache import Cache, stable_hash
from tlbench.components import ImageSet, SourceModel, TargetData
from tlbench.errors import UserError
from tlbench.imagestore import (
    ImageStore,
    mark_rows,
    open_sparse,
    rows_present,
    scratch_dir,
    verify_once,
    warn_corrupted,
    write_rows,
)
from tlbench.splits import Splits, check_split, indices_hash, make_splits

PREP_VERSION = 1  # bump when the stored preprocessing changes
CHUNK = 512  # images per batched-transform call: bounds peak memory of the float intermediate
CHUNK_BYTES = 128 << 20  # ... and so does this, for large source images
# In-memory image sets smaller than this are transformed in the main process (no workers).
WORKERS_MIN_IMAGES = 4096


@dataclass(frozen=True)
class Transforms:
    """timm's eval and train transforms without normalisation (they end in uint8 tensors);
    normalisation happens on the device with ``mean``/``std`` of ``in_chans`` channels."""

    eval: Any
    train: Any
    mean: tuple[float, ...]
    std: tuple[float, ...]
    native_chans: int
    in_chans: int
    batched: bool

    def describe(self) -> dict:
        return {
            "eval": " ".join(repr(self.eval).split()),
            "train": " ".join(repr(self.train).split()),
            "mean": list(self.mean),
            "std": list(self.std),
            "native_chans": self.native_chans,
            "in_chans": self.in_chans,
            "batched": self.batched,
            "version": PREP_VERSION,
        }


@dataclass(frozen=True)
class PreparedData:
    """A target dataset split and preprocessed for one source model; see docs/architecture.md."""

    num_classes: int
    class_names: tuple[str, ...]
    in_chans: int
    input_size: tuple[int, int, int]
    data_config: dict
    split_record: dict
    card: dict
    target: TargetData
    splits: Splits
    transforms: Transforms
    cache: Cache | None = None
    _stored: dict = field(default_factory=dict, repr=False, compare=False)
    # Image sets whose store could not be written in the cache (a full disk): kept in a scratch
    # folder instead, so the cell goes on.
    _spilled: set = field(default_factory=set, repr=False, compare=False)
    _loaders: dict = field(default_factory=dict, repr=False, compare=False)

    # -- what each split is -----------------------------------------------------------------
    def _source(self, split: str) -> tuple[ImageSet, str]:
        if split == "test" and self.splits.test_from == "test":
            return self.target.test, "test"
        return self.target.train, "train"

    def image_set(self, split: str) -> str:
        """Which of the target's image sets ``split`` indexes: ``"train"`` or ``"test"``. Images
        of one set with one row number are the same image in every split and every seed."""
        check_split(split)
        return self._source(split)[1]

    def indices(self, split: str) -> np.ndarray:
        check_split(split)
        return self.splits.trainval if split == "trainval" else self.splits.indices(split)

    def size(self, split: str) -> int:
        return len(self.indices(split))

    def labels(self, split: str) -> torch.Tensor:
        imageset, _ = self._source(split)
        return torch.from_numpy(np.asarray(imageset.labels)[self.indices(split)].astype(np.int64))

    def fingerprint(self, split: str) -> str:
        _, source = self._source(split)
        return stable_hash(
            {
                "target": self.target.fingerprint,
                "from": source,
                "indices": indices_hash(self.indices(split)),
                "transform": self.transforms.describe(),
                "in_chans": self.in_chans,
            }
        )

    # -- batches ------------------------------------------------------------------------------
    def batches(
        self,
        split: str,
        batch_size: int,
        *,
        augment: bool = False,
        shuffle: bool = False,
        seed: int = 0,
        device: torch.device | str | None = None,
        positions: torch.Tensor | None = None,
        memory_format: torch.memory_format = torch.contiguous_format,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(float32 NCHW normalised images, int64 labels), deterministic for a given seed.

        ``augment`` applies timm's train transform; each image's randomness derives from
        (seed, image index), so it does not depend on batch size or order. ``positions`` (int64,
        into the split) yields only those images, in that order (``shuffle`` is then ignored).
        Images come in ``memory_format`` (the model's, e.g. channels-last), written so by the
        normalisation itself rather than by a second copy. On CUDA, uint8 batches are pinned and
        copied one batch ahead on a side stream, then normalised on the device.
        """
        labels = self.labels(split)
        n = len(labels)
        if positions is not None:
            order = positions.to(torch.int64)
        elif shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        else:
            order = torch.arange(n)
        if augment:
            stream = self._augmented(split, order, batch_size, seed)
        else:
            stream = self._eval_stream(split, order, batch_size)
        for images, y in _to_device(stream, device):
            yield self._normalise(images, memory_format), y

    def _normalise(self, images: torch.Tensor, memory_format) -> torch.Tensor:
        std = torch.tensor(self.transforms.std, device=images.device).view(1, -1, 1, 1)
        mean = torch.tensor(self.transforms.mean, device=images.device).view(1, -1, 1, 1)
        # One fused pass from uint8 straight into the model's layout; broadcasting a 1-channel
        # batch against 3-channel stats replicates it.
        out = torch.empty(
            torch.broadcast_shapes(images.shape, std.shape),
            dtype=torch.float32,
            device=images.device,
            memory_format=memory_format,
        )
        return torch.addcmul(-mean / std, images, 1.0 / (255.0 * std), out=out)

    # -- eval preprocessing, computed once per image ----------------------------------------------
    def store(self, image_set: str) -> ImageStore:
        """The eval-preprocessed uint8 NCHW store of one image set (``"train"`` or ``"test"``),
        shared by every split and seed that indexes it: one file per (data, transform) in the
        cache's ``prepared/`` folder (a scratch folder without a cache), filled on demand."""
        if image_set in self._stored:
            return self._stored[image_set]
        imageset = self.target.train if image_set == "train" else self.target.test
        key = {
            "target": self.target.fingerprint,
            "from": image_set,
            "transform": self.transforms.describe()["eval"],
            "batched": self.transforms.batched,
            "native_chans": self.transforms.native_chans,
            "version": PREP_VERSION,
        }
        enabled = self.cache is not None and self.cache.enabled and image_set not in self._spilled
        folder = self.cache.root / "prepared" if enabled else scratch_dir()
        _, height, width = self.input_size
        shape = (len(imageset), self.transforms.native_chans, height, width)
        path = folder / f"{stable_hash(key)}.u8"
        with FileLock(f"{path}.lock"):
            store = open_sparse(path, shape)
            bad = verify_once(store, rows_present(store))
            if len(bad):  # preprocessed again by ``_fill`` when a split needs them
                warn_corrupted(store, len(bad), "preprocessed again")
                mark_rows(store, bad, written=False)
        self._stored[image_set] = store
        return store

    def stored(self, split: str) -> torch.Tensor:
        """The eval-preprocessed uint8 NCHW images of a split, read into memory (small splits,
        tests and benchmarks; ``batches`` reads the store batch by batch instead)."""
        check_split(split)
        rows = self.indices(split)
        store = self._ensure(self.image_set(split), rows)
        return torch.from_numpy(store[rows])

    def _ensure(self, image_set: str, rows: np.ndarray) -> ImageStore:
        """Preprocess the images of ``rows`` not yet in the store (under the store's lock, so
        concurrent workers preprocess an image once). A cache that cannot take the rows (a full
        disk) costs one warning: the set moves to a scratch folder and the cell goes on."""
        store = self.store(image_set)
        try:
            return self._fill(store, rows, image_set)
        except OSError as exc:
            if self.cache is None or not self.cache.enabled or image_set in self._spilled:
                raise  # already in a scratch folder: nowhere else to go
            self.cache.cannot_store(Path(store.path).parent, exc)
            self._spilled.add(image_set)
            del self._stored[image_set]
            return self._fill(self.store(image_set), rows, image_set)

    def _fill(self, store: ImageStore, rows: np.ndarray, image_set: str) -> ImageStore:
        present = rows_present(store)
        if present[rows].all():
            return store
        with FileLock(f"{store.path}.lock"):
            present = rows_present(store)
            missing = np.unique(rows[~present[rows]])
            step = self._chunk_rows(image_set, store)
            for start in range(0, len(missing), step):
                chunk = missing[start : start + step]
                write_rows(store, chunk, self._preprocess(image_set, chunk).numpy())
                mark_rows(store, chunk)
        return store

    def _chunk_rows(self, image_set: str, store: ImageStore) -> int:
        """Images per preprocessing chunk: ``CHUNK``, fewer when the chunk's memory would pass
        ``CHUNK_BYTES``. Batched transforms hold a float intermediate of the source size; the
        per-image path holds only its uint8 output (each image's intermediate lives in a worker),
        and a small chunk there costs a DataLoader start per chunk (42-image chunks of 256 px
        JPEGs halved the first pass)."""
        images = (self.target.train if image_set == "train" else self.target.test).images
        if images is not None and self.transforms.batched:
            per_image = 4 * int(np.prod(images.shape[1:]))
        else:
            per_image = store.row_bytes
        return max(1, min(CHUNK, CHUNK_BYTES // per_image))

    def _preprocess(self, image_set: str, rows: np.ndarray) -> torch.Tensor:
        """timm's eval transform of image-set ``rows``: batched on uint8 tensors when every step
        allows it, else per image with PIL through DataLoader workers."""
        imageset = self.target.train if image_set == "train" else self.target.test
        if imageset.images is not None and self.transforms.batched:
            return apply_batched(self.transforms.eval, to_nchw(imageset.images[rows]))
        dataset = _TransformedImages(
            imageset, rows, self.transforms.eval, self.transforms.native_chans
        )
        items = [(i, None) for i in range(len(rows))]
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=64,
            sampler=items,
            num_workers=preprocess_workers(imageset, len(rows)),
        )
        return torch.cat([images for images, _ in _unwrap_errors(loader)])

    def _eval_stream(self, split: str, order: torch.Tensor, batch_size: int):
        rows = self.indices(split)
        labels = self.labels(split)
        wanted = rows[order.numpy()]
        store = self._ensure(self.image_set(split), wanted)
        for start in range(0, len(order), batch_size):
            chunk = slice(start, start + batch_size)
            yield torch.from_numpy(store[wanted[chunk]]), labels[order[chunk]]

    # -- augmented batches: persistent workers ---------------------------------------------------
    def _augmented(self, split: str, order: torch.Tensor, batch_size: int, seed: int):
        """timm's train transform per image in DataLoader workers that persist across passes
        (one loader per split and batch size; each pass hands it a new order and seed)."""
        key = ("augment", split, batch_size)
        if key not in self._loaders:
            imageset, _ = self._source(split)
            dataset = _TransformedImages(
                imageset, self.indices(split), self.transforms.train, self.transforms.native_chans
            )
            sampler = _Order()
            workers = loader_workers(imageset, self.size(split))
            loader = torch.utils.data.DataLoader(
                dataset,
                batch_size=batch_size,
                sampler=sampler,
                num_workers=workers,
                persistent_workers=workers > 0,
                pin_memory=torch.cuda.is_available(),
            )
            self._loaders[key] = (loader, sampler)
        loader, sampler = self._loaders[key]
        sampler.items = [(i, seed) for i in order.tolist()]
        yield from _unwrap_errors(loader)


def loader_workers(imageset: ImageSet, count: int) -> int:
    """DataLoader workers for per-image transforms: up to 8 (one core left to the model) for
    images read from files or a store, and for in-memory arrays of over ``WORKERS_MIN_IMAGES``
    images; none for small in-memory sets, where starting workers costs more than it saves.
    ``TLBENCH_LOADER_WORKERS`` overrides."""
    if os.environ.get("TLBENCH_LOADER_WORKERS"):
        return int(os.environ["TLBENCH_LOADER_WORKERS"])
    if isinstance(imageset.images, np.ndarray) and count < WORKERS_MIN_IMAGES:
        return 0
    return min(8, max(0, (os.cpu_count() or 1) - 1))


def preprocess_workers(imageset: ImageSet, count: int) -> int:
    """Workers for filling a store: as ``loader_workers``, but one per core, since the model
    waits for the store and leaves its core free (2 workers on 2 cores: 1.25x the first pass of
    5000 JPEGs at 224 px)."""
    workers = loader_workers(imageset, count)
    if workers == 0 or os.environ.get("TLBENCH_LOADER_WORKERS"):
        return workers
    return min(8, os.cpu_count() or 1)


class _Order(torch.utils.data.Sampler):
    """The (position, seed) items of the current pass; a persistent loader reads it anew each
    time it is iterated."""

    def __init__(self):
        self.items: list[tuple[int, int | None]] = []

    def __iter__(self):
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


def _unwrap_errors(loader):
    try:
        yield from loader
    except UserError as exc:
        # A worker's error arrives wrapped in its traceback; the user needs its last line.
        last = str(exc).rstrip().splitlines()[-1] if str(exc).strip() else "UserError"
        raise UserError(last.removeprefix("tlbench.errors.UserError: ")) from None


def _to_device(stream, device):
    """Batches moved to ``device``; on CUDA pinned and copied one batch ahead on a side stream
    (timm's PrefetchLoader), so the copy overlaps the model's work and nothing waits on the host."""
    device = torch.device(device) if device is not None else None
    if device is None or device.type == "cpu":
        yield from stream
        return
    if device.type != "cuda":
        for images, y in stream:
            yield images.to(device), y.to(device)
        return
    side = torch.cuda.Stream(device)
    pending = None
    for images, y in stream:
        with torch.cuda.stream(side):
            images = images.pin_memory().to(device, non_blocking=True)
            y = y.pin_memory().to(device, non_blocking=True)
        if pending is not None:
            yield pending
        torch.cuda.current_stream(device).wait_stream(side)
        images.record_stream(torch.cuda.current_stream(device))
        y.record_stream(torch.cuda.current_stream(device))
        pending = (images, y)
    if pending is not None:
        yield pending


class _TransformedImages(torch.utils.data.Dataset):
    """Per-image timm (PIL) transform of ``rows`` of an image set; items are (position, seed):
    with a seed, each image's randomness is seeded from (seed, row) inside a forked CPU RNG so
    the caller's global RNG state is untouched."""

    def __init__(self, imageset: ImageSet, rows: np.ndarray, transform, channels: int):
        self.imageset, self.rows, self.transform = imageset, rows, transform
        self.mode = "L" if channels == 1 else "RGB"

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, item: tuple[int, int | None]):
        position, seed = item
        row = int(self.rows[position])
        image = self.imageset.load(row).convert(self.mode)
        if seed is None:
            out = self.transform(image)
        else:
            out = _seeded_call(self.transform, image, seed * 1_000_003 + row)
        return out, int(self.imageset.labels[row])


def _seeded_call(transform, image, seed: int):
    py_state = random.getstate()
    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        torch.default_generator.manual_seed(seed % (1 << 63))
        try:
            return transform(image)
        finally:
            random.setstate(py_state)


# -- batched eval transform ---------------------------------------------------------------------

_TENSOR_INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "nearest-exact")


def batched_supported(transform) -> bool:
    """True when every step of timm's eval transform can run on a batched uint8 tensor."""
    from timm.data.transforms import MaybePILToTensor
    from torchvision import transforms as T

    for step in getattr(transform, "transforms", [transform]):
        if isinstance(step, T.Resize):
            if step.interpolation.value not in _TENSOR_INTERPOLATIONS or step.max_size is not None:
                return False
        elif not isinstance(step, T.CenterCrop | MaybePILToTensor):
            return False
    return True


def apply_batched(transform, images: torch.Tensor) -> torch.Tensor:
    """Run timm's eval steps on uint8 NCHW; torchvision's Resize/CenterCrop accept batches."""
    for step in transform.transforms:
        images = step(images)
    return images.contiguous()


def to_nchw(images: np.ndarray) -> torch.Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(images))
    return tensor.unsqueeze(1) if tensor.ndim == 3 else tensor.permute(0, 3, 1, 2)


# -- prepare --------------------------------------------------------------------------------------


def native_channels(target: TargetData) -> int:
    images = target.train.images
    if images is not None:
        return 1 if images.ndim == 3 else int(images.shape[3])
    return 1 if target.train.load(0).mode == "L" else 3


def adapt_stats(values, in_chans: int) -> tuple[float, ...]:
    """Mean/std for ``in_chans`` channels: one channel gets the average (timm sums the RGB stem
    filters for in_chans=1, so the average keeps inputs on the scale the weights saw); more
    channels cycle through RGB the way timm's adapt_input_conv repeats filters."""
    values = tuple(float(v) for v in values)
    if in_chans == len(values):
        return values
    if in_chans == 1:
        return (sum(values) / len(values),)
    return tuple(values[i % len(values)] for i in range(in_chans))


def make_transforms(data_config: Mapping[str, Any], native: int, in_chans: int) -> Transforms:
    from timm.data import create_transform

    mean = adapt_stats(data_config.get("mean", (0.485, 0.456, 0.406)), in_chans)
    std = adapt_stats(data_config.get("std", (0.229, 0.224, 0.225)), in_chans)
    common = {
        "input_size": tuple(data_config["input_size"]),
        "interpolation": data_config.get("interpolation", "bilinear"),
        "mean": mean,
        "std": std,
        "crop_pct": data_config.get("crop_pct"),
        "crop_mode": data_config.get("crop_mode"),
        "normalize": False,
    }
    eval_tf = create_transform(is_training=False, **common)
    train_tf = create_transform(is_training=True, **common)
    return Transforms(eval_tf, train_tf, mean, std, native, in_chans, batched_supported(eval_tf))


def prepare(
    target: TargetData,
    source: SourceModel,
    dataset_options: Mapping[str, Any],
    model_options: Mapping[str, Any],
    seed: int,
    cache: Cache | None,
) -> PreparedData:
    """Split ``target`` and bind it to ``source``'s preprocessing (see module docstring)."""
    splits = make_splits(target, dataset_options, seed)
    native = native_channels(target)
    adaptation = model_options.get("input_adaptation") or "replicate"
    in_chans = 3 if adaptation == "replicate" and native == 1 else native
    transforms = make_transforms(source.data_config, native, in_chans)
    _, height, width = source.data_config["input_size"]
    data_config = {
        **source.data_config,
        "input_size": (in_chans, height, width),
        "mean": transforms.mean,
        "std": transforms.std,
    }
    card = {
        **dict(target.card),
        "split": splits.record,
        "preprocessing": {
            "eval": transforms.describe()["eval"],
            "input_adaptation": adaptation,
            "native_channels": native,
            "in_chans": in_chans,
            "batched_eval": transforms.batched,
        },
    }
    return PreparedData(
        num_classes=target.num_classes,
        class_names=tuple(target.class_names),
        in_chans=in_chans,
        input_size=(in_chans, height, width),
        data_config=data_config,
        split_record=splits.record,
        card=card,
        target=target,
        splits=splits,
        transforms=transforms,
        cache=cache,
    )
