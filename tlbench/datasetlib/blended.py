"""Targets where transfer can show, offline: glyphs blended into natural photos (MNIST-M's recipe).

Ganin & Lempitsky (2015) built MNIST-M by blending each MNIST digit into a random patch of a
colour photo: ``out = |patch - digit|`` per channel. On plain grayscale digits and garments a
linear probe on raw pixels or random features matches ImageNet features (the quickstart shows
it), so no transfer claim can be tested there; textured colour backgrounds are what ImageNet
features are built to see through. Here the photos are the ones scikit-learn and scikit-image
ship in their wheels (no download), so the target builds on any machine that has them.

The recipe is deterministic: every image's photo, patch scale and position come from one
generator seeded by the image's index and split, so the same options always give the same
images (and the same fingerprint). Train and test images draw patches from the same photos, as
MNIST-M does; the core's seeded splits are unchanged.
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from tlbench.components import ImageSet, TargetData
from tlbench.datasetlib.common import decode_once, make_target
from tlbench.datasetlib.local import digits, fashion_mnist
from tlbench.errors import UserError

RECIPE_VERSION = "1"
# Natural colour photos and textures; scientific images (cells, micrographs) are left out.
SKIMAGE_PHOTOS = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "brick.png",
    "grass.png",
    "gravel.png",
)
SKLEARN_PHOTOS = ("china.jpg", "flower.jpg")
# A patch's side in photo pixels ranges over [size, short side * MAX_PATCH_SHARE]: large enough
# to hold object parts and textures at several scales, small enough that patches differ.
MAX_PATCH_SHARE = 0.5


def photo_files() -> list[Path]:
    """The photos the blend draws from: scikit-learn's two, plus scikit-image's when installed."""
    files = []
    for package, subdir, names in (
        ("sklearn", "datasets/images", SKLEARN_PHOTOS),
        ("skimage", "data", SKIMAGE_PHOTOS),
    ):
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            continue
        folder = Path(next(iter(spec.submodule_search_locations))) / subdir
        files += [folder / name for name in names if (folder / name).is_file()]
    return files


def availability() -> bool | str:
    if not photo_files():
        return "needs scikit-learn's sample images (pip install scikit-learn; scikit-image adds 9 more photos)"
    return True


def _load_photos(files: list[Path]) -> list[np.ndarray]:
    from PIL import Image

    photos = []
    for path in files:
        with Image.open(path) as img:
            photos.append(np.asarray(img.convert("RGB"), dtype=np.uint8))
    return photos


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    """(N, H, W) uint8 glyphs to (N, size, size), bilinear, in chunks (no float copy of the set)."""
    import torch
    import torch.nn.functional as F

    out = np.empty((len(images), size, size), dtype=np.uint8)
    for start in range(0, len(images), 4096):
        chunk = torch.from_numpy(images[start : start + 4096]).float().unsqueeze(1)
        resized = F.interpolate(chunk, size=(size, size), mode="bilinear", align_corners=False)
        out[start : start + 4096] = resized.squeeze(1).round().clamp(0, 255).byte().numpy()
    return out


PYRAMID_LEVELS = 8


def _pyramid(photo: np.ndarray, size: int) -> list[np.ndarray]:
    """The photo at PYRAMID_LEVELS scales, geometric from full size down to where a size x size
    crop spans MAX_PATCH_SHARE of its short side: patches at many scales become plain slices."""
    from PIL import Image

    short = min(photo.shape[:2])
    largest = max(1.0, short * MAX_PATCH_SHARE / size)  # patch side / size at the coarsest level
    levels = []
    for factor in np.geomspace(1.0, largest, PYRAMID_LEVELS):
        h, w = (max(size, round(n / factor)) for n in photo.shape[:2])
        levels.append(np.asarray(Image.fromarray(photo).resize((w, h), Image.BILINEAR)))
    return levels


def blend(glyphs: np.ndarray, photos: list[np.ndarray], size: int, stream: int) -> np.ndarray:
    """``|patch - glyph|`` for every glyph, each with its own photo, patch scale and position.

    ``stream`` separates the generators of different splits so train and test images differ.
    """
    glyphs = _resize(glyphs, size) if glyphs.shape[1:] != (size, size) else glyphs
    pyramids = [_pyramid(photo, size) for photo in photos]
    rng = np.random.default_rng([stream, len(glyphs), size])
    which = rng.integers(len(photos), size=len(glyphs))
    level = rng.integers(PYRAMID_LEVELS, size=len(glyphs))
    corner = rng.random((len(glyphs), 2))
    out = np.empty((len(glyphs), size, size, 3), dtype=np.uint8)
    for i in range(len(glyphs)):
        scaled = pyramids[which[i]][level[i]]
        y = int(corner[i, 0] * (scaled.shape[0] - size))
        x = int(corner[i, 1] * (scaled.shape[1] - size))
        out[i] = scaled[y : y + size, x : x + size]
    for start in range(0, len(out), 4096):  # in chunks: int16 copies of a chunk, not of the set
        patch = out[start : start + 4096].astype(np.int16)
        glyph = glyphs[start : start + 4096, :, :, None].astype(np.int16)
        out[start : start + 4096] = np.abs(patch - glyph).astype(np.uint8)
    return out


def _blended_target(name: str, source: TargetData, options: Mapping[str, Any]) -> TargetData:
    size = int(options.get("size") or 32)
    if not 8 <= size <= 512:
        raise UserError(f"dataset {name!r}: option size must be 8..512 pixels, got {size}")
    files = photo_files()
    if not files:
        raise UserError(f"dataset {name!r}: {availability()}")
    photos = _load_photos(files)
    train = ImageSet(
        labels=source.train.labels, images=blend(source.train.images, photos, size, stream=0)
    )
    test = None
    if source.test is not None:
        test = ImageSet(
            labels=source.test.labels, images=blend(source.test.images, photos, size, stream=1)
        )
    digest = hashlib.sha256(f"{name}|{RECIPE_VERSION}|{size}|{source.fingerprint}".encode())
    for path in files:
        digest.update(path.name.encode() + hashlib.sha256(path.read_bytes()).digest())
    card = {
        "source": f"{source.name} blended into patches of {len(files)} photos "
        f"({', '.join(p.name for p in files)}), |patch - glyph| per channel "
        "(MNIST-M's recipe, Ganin & Lempitsky 2015)",
        "license": source.card.get("license", "see source"),
        "official_test": source.card.get("official_test", "none"),
        "photos": [p.name for p in files],
        "recipe_version": RECIPE_VERSION,
    }
    return make_target(name, source.class_names, train, test, card, fingerprint=digest.hexdigest())


@decode_once
def fashion_mnist_m(argument: str | None, options: Mapping[str, Any]) -> TargetData:
    source = fashion_mnist(None, {"root": options.get("root")})
    return _blended_target("fashion-mnist-m", source, options)


@decode_once
def digits_m(argument: str | None, options: Mapping[str, Any]) -> TargetData:
    return _blended_target("digits-m", digits(None, {}), options)
