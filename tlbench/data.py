"""Splits + preprocessing bound to the model's data config: ``prepare(...) -> PreparedData``.

Preprocessing is timm's own (``create_transform`` from the model's data config). The eval
transform (resize shorter side to ``floor(size / crop_pct)``, center crop) is applied once per
(data, split indices, transform) and kept as uint8 NCHW tensors in memory and in the on-disk
cache; ``batches`` then only converts, replicates channels and normalises, on the target device.
When every step of timm's eval transform accepts tensors (Resize with bilinear/bicubic/nearest,
CenterCrop), it runs batched on uint8 tensors; otherwise, and for path-based datasets, timm's
PIL transform runs per image through a DataLoader, once.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from tlbench.cache import Cache, stable_hash
from tlbench.components import ImageSet, SourceModel, TargetData
from tlbench.errors import UserError
from tlbench.splits import Splits, check_split, indices_hash, make_splits

PREP_VERSION = 1  # bump when the stored preprocessing changes
# Eval-preprocessed splits larger than this are transformed batch by batch instead of stored.
MATERIALIZE_MAX_BYTES = int(os.environ.get("TLBENCH_PREP_MAX_MB", "1024")) << 20
CHUNK = 512  # images per batched-transform call: bounds peak memory of the float intermediate


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
        normalisation itself rather than by a second copy.
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
            stream = self._loader(split, order, batch_size, self.transforms.train, seed)
        else:
            stored = self.stored(split)
            if stored is not None:
                stream = ((stored[chunk], labels[chunk]) for chunk in order.split(batch_size))
            else:
                stream = self._eval_stream(split, order, batch_size)
        for images, y in stream:
            images = self._normalise(images, device, memory_format)
            yield images, y.to(device) if device is not None else y

    def _normalise(self, images: torch.Tensor, device, memory_format) -> torch.Tensor:
        if device is not None:
            images = images.to(device, non_blocking=True)  # move uint8: 4x fewer bytes than float
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

    # -- eval preprocessing, computed once ------------------------------------------------------
    def stored(self, split: str) -> torch.Tensor | None:
        """The eval-preprocessed uint8 NCHW tensor of a split, or None when it is too big to keep."""
        check_split(split)
        if split in self._stored:
            return self._stored[split]
        if split == "trainval":
            parts = [self.stored("train"), self.stored("val")]
            if parts[0] is None or parts[1] is None:
                return None
            self._stored[split] = torch.cat(parts)
            return self._stored[split]
        _, height, width = self.input_size
        if self.size(split) * self.transforms.native_chans * height * width > MATERIALIZE_MAX_BYTES:
            return None
        _, source = self._source(split)
        key = {
            "target": self.target.fingerprint,
            "from": source,
            "indices": indices_hash(self.indices(split)),
            "transform": self.transforms.describe()["eval"],
            "batched": self.transforms.batched,
            "native_chans": self.transforms.native_chans,
            "version": PREP_VERSION,
        }
        compute = lambda: self._preprocess_all(split)  # noqa: E731
        value = (
            self.cache.get_or_compute("prep", key, compute) if self.cache is not None else compute()
        )
        self._stored[split] = value
        return value

    def _preprocess_all(self, split: str) -> torch.Tensor:
        order = torch.arange(self.size(split))
        return torch.cat([images for images, _ in self._eval_stream(split, order, CHUNK)])

    def _eval_stream(self, split: str, order: torch.Tensor, batch_size: int):
        imageset, _ = self._source(split)
        if imageset.images is None or not self.transforms.batched:
            yield from self._loader(split, order, batch_size, self.transforms.eval, None)
            return
        rows = self.indices(split)
        labels = self.labels(split)
        for chunk in order.split(batch_size):
            batch = to_nchw(imageset.images[rows[chunk.numpy()]])
            yield apply_batched(self.transforms.eval, batch), labels[chunk]

    def _loader(
        self, split: str, order: torch.Tensor, batch_size: int, transform, seed: int | None
    ):
        imageset, _ = self._source(split)
        dataset = _TransformedImages(
            imageset, self.indices(split), transform, self.transforms.native_chans, seed
        )
        workers = 0 if imageset.images is not None else min(8, max(0, (os.cpu_count() or 1) - 1))
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=order.tolist(),
            num_workers=workers,
            pin_memory=torch.cuda.is_available(),
        )
        try:
            yield from loader
        except UserError as exc:
            # A worker's error arrives wrapped in its traceback; the user needs its last line.
            last = str(exc).rstrip().splitlines()[-1] if str(exc).strip() else "UserError"
            raise UserError(last.removeprefix("tlbench.errors.UserError: ")) from None


class _TransformedImages(torch.utils.data.Dataset):
    """Per-image timm (PIL) transform; with a seed, each image's randomness is seeded from
    (seed, index) inside a forked CPU RNG so the caller's global RNG state is untouched."""

    def __init__(
        self, imageset: ImageSet, rows: np.ndarray, transform, channels: int, seed: int | None
    ):
        self.imageset, self.rows, self.transform, self.seed = imageset, rows, transform, seed
        self.mode = "L" if channels == 1 else "RGB"

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, position: int):
        row = int(self.rows[position])
        image = self.imageset.load(row).convert(self.mode)
        if self.seed is None:
            out = self.transform(image)
        else:
            out = _seeded_call(self.transform, image, self.seed * 1_000_003 + row)
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
