"""No source may ever train on its target's images: the check, by image content.

A source model that was trained inside tlbench (``self-pretrained:``) carries ``TrainingImages``:
a digest of every image it trained on. Before any training, the runner compares them with the
digests of each cell's target train, val and test images and refuses an overlapping pair with one
line naming both. Digests are of the decoded pixels for datasets held in memory, and of the
resolved file path for datasets read from disk, so the check holds across dataset options,
subsets and seeds (a fingerprint comparison would miss the same images under another option).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from tlbench.errors import UserError

DIGEST_BYTES = 8


@dataclass(frozen=True)
class TrainingImages:
    """The images a source model trained on: ``digests`` (uint64, sorted) and a description
    for messages and cards ("2400 images of fashion-mnist's source reserve")."""

    dataset: str
    description: str
    digests: np.ndarray


def image_digests(imageset, rows: np.ndarray) -> np.ndarray:
    """Sorted uint64 digests of ``imageset``'s items at ``rows``."""
    out = np.empty(len(rows), dtype=np.uint64)
    for position, row in enumerate(np.asarray(rows, dtype=np.int64)):
        if imageset.images is not None:
            payload = np.ascontiguousarray(imageset.images[row]).tobytes()
        else:
            payload = str(imageset.paths[row]).encode()
        digest = hashlib.blake2b(payload, digest_size=DIGEST_BYTES).digest()
        out[position] = int.from_bytes(digest, "little")
    return np.sort(out)


def training_images(dataset: str, description: str, imageset, rows) -> TrainingImages:
    return TrainingImages(dataset, description, image_digests(imageset, rows))


class _SplitDigests:
    """Digests of a prepared target's splits, kept for the cells that share them."""

    def __init__(self, size: int = 16):
        self.size = size
        self.kept: OrderedDict[str, np.ndarray] = OrderedDict()

    def get(self, data, split: str) -> np.ndarray:
        key = data.split_record["hashes"][split]
        if key not in self.kept:
            imageset, _ = data._source(split)
            self.kept[key] = image_digests(imageset, data.indices(split))
            while len(self.kept) > self.size:
                self.kept.popitem(last=False)
        return self.kept[key]


_DIGESTS = _SplitDigests()


def check_disjoint(cell, source, data) -> None:
    """Raise ``UserError`` when ``source`` trained on any image of ``cell``'s target splits."""
    seen = getattr(source, "training_images", None)
    if seen is None or not len(seen.digests):
        return
    for split in ("train", "val", "test"):
        shared = np.intersect1d(seen.digests, _DIGESTS.get(data, split), assume_unique=False)
        if len(shared):
            raise UserError(
                f"{cell.label}: source {cell.model!r} was trained on {len(shared)} of the "
                f"{data.size(split)} {split} images of dataset {cell.dataset!r} "
                f"({seen.description}); a source must never see its target's images: give the "
                f"target a train_size (capped splits never draw from the source reserve) or "
                f"pretrain the source on another dataset"
            )
