"""fashion-mnist's ``test_shift``: a distribution shift built from offline data, applied to the
official test images only, with its own fingerprint so no cache mixes shifted and plain data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tlbench.datasetlib import local
from tlbench.errors import UserError

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
needs_fashion = pytest.mark.skipif(
    not FASHION_DIR.is_dir(), reason="apt-get install dataset-fashion-mnist"
)


def test_shifts_invert_or_turn_the_images():
    images = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    assert (local.shift_images(images, "invert") == 255 - images).all()
    turned = local.shift_images(images, "rotate90")
    assert (turned[0] == np.rot90(images[0])).all() and turned.flags["C_CONTIGUOUS"]
    with pytest.raises(UserError, match="unknown test_shift 'blur'"):
        local.shift_images(images, "blur")


@needs_fashion
def test_only_the_test_images_shift_and_the_fingerprint_says_so():
    plain = local.fashion_mnist(None, {})
    inverted = local.fashion_mnist(None, {"test_shift": "invert"})
    assert (inverted.train.images == plain.train.images).all()
    assert (inverted.test.images == 255 - plain.test.images).all()
    assert (inverted.test.labels == plain.test.labels).all()
    assert inverted.fingerprint != plain.fingerprint
    assert local.fashion_mnist(None, {"test_shift": None}).fingerprint == plain.fingerprint
    assert inverted.card["test_shift"] == "invert, applied to the test images only"
    assert "test_shift" not in plain.card


def test_the_option_is_checked_when_the_suite_is_read():
    from tlbench.plugins import load_plugins
    from tlbench.specs import resolve_options

    registered, _ = load_plugins(load_entrypoints=False).registry.lookup("dataset", "fashion-mnist")
    assert (
        resolve_options(registered.options, {"test_shift": "rotate90"})["test_shift"] == "rotate90"
    )
    with pytest.raises(ValueError, match="'test_shift'.*one of 'invert', 'rotate90'"):
        resolve_options(registered.options, {"test_shift": "upside-down"})
