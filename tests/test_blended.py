"""MNIST-M-style targets: glyphs blended into natural photos, deterministic and fingerprinted."""

from __future__ import annotations

import numpy as np
import pytest

from tlbench.datasetlib import blended


@pytest.fixture(scope="module")
def digits_m():
    blended.digits_m.cache_clear()
    return blended.digits_m(None, {"size": 16})


def test_digits_m_is_rgb_at_the_requested_size_with_the_digits_labels(digits_m):
    from tlbench.datasetlib.local import digits

    source = digits(None, {})
    assert digits_m.train.images.shape == (1797, 16, 16, 3)
    assert digits_m.train.images.dtype == np.uint8
    np.testing.assert_array_equal(digits_m.train.labels, source.train.labels)
    assert digits_m.class_names == source.class_names
    assert digits_m.card["channels"] == 3
    assert "MNIST-M" in digits_m.card["source"]


def test_the_blend_is_the_absolute_difference_of_patch_and_glyph():
    photo = np.full((64, 64, 3), 200, dtype=np.uint8)
    glyphs = np.zeros((3, 8, 8), dtype=np.uint8)
    glyphs[:, 2:6, 2:6] = 255
    out = blended.blend(glyphs, [photo], size=8, stream=0)
    assert (out[:, 2:6, 2:6] == 55).all()  # |200 - 255|
    assert (out[:, 0, 0] == 200).all()  # |200 - 0|


def test_the_same_options_give_the_same_images_and_fingerprint(digits_m):
    blended.digits_m.cache_clear()
    again = blended.digits_m(None, {"size": 16})
    np.testing.assert_array_equal(again.train.images, digits_m.train.images)
    assert again.fingerprint == digits_m.fingerprint
    blended.digits_m.cache_clear()
    other = blended.digits_m(None, {"size": 24})
    assert other.fingerprint != digits_m.fingerprint


def test_backgrounds_come_from_several_photos_and_differ_between_images(digits_m):
    corners = digits_m.train.images[:200, 0, 0].astype(int)  # digits' corner pixels are blank
    assert len({tuple(c) for c in corners}) > 50
    assert len(blended.photo_files()) >= 2


def test_train_and_test_draws_are_independent_streams():
    glyphs = np.zeros((50, 8, 8), dtype=np.uint8)
    photo = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    train = blended.blend(glyphs, [photo], size=8, stream=0)
    test = blended.blend(glyphs, [photo], size=8, stream=1)
    assert not np.array_equal(train, test)


def test_a_size_out_of_range_is_one_clear_error():
    from tlbench.errors import UserError

    blended.digits_m.cache_clear()
    with pytest.raises(UserError, match="size must be 8..512"):
        blended.digits_m(None, {"size": 4})
