"""Splits: deterministic per seed, stratified, disjoint, recorded."""

import numpy as np
import pytest

from tlbench.components import ImageSet, TargetData
from tlbench.datasetlib.local import digits
from tlbench.errors import UserError
from tlbench.splits import make_splits


@pytest.fixture(scope="module")
def digits_data() -> TargetData:
    return digits(None, {})


@pytest.fixture(scope="module")
def with_official_test() -> TargetData:
    """Digits with its first 1297 images as train and the rest as an official test split."""
    full = digits(None, {})
    images, labels = full.train.images, full.train.labels
    return TargetData(
        name="digits-official",
        class_names=full.class_names,
        train=ImageSet(labels=labels[:1297], images=images[:1297]),
        test=ImageSet(labels=labels[1297:], images=images[1297:]),
        fingerprint="digits-official",
    )


def _class_fractions(labels, indices, num_classes=10):
    return np.bincount(labels[indices], minlength=num_classes) / len(indices)


def test_same_seed_gives_identical_splits_and_hash(digits_data):
    a = make_splits(digits_data, {}, seed=3)
    b = make_splits(digits_data, {}, seed=3)
    for name in ("train", "val", "test"):
        np.testing.assert_array_equal(a.indices(name), b.indices(name))
    assert a.record["hash"] == b.record["hash"]


def test_other_seed_changes_train_and_val_but_not_the_carved_test(digits_data):
    a = make_splits(digits_data, {}, seed=0)
    b = make_splits(digits_data, {}, seed=1)
    assert not np.array_equal(a.val, b.val)
    assert not np.array_equal(a.train, b.train)
    np.testing.assert_array_equal(a.test, b.test)
    assert a.record["hash"] != b.record["hash"]
    assert a.record["hashes"]["test"] == b.record["hashes"]["test"]


def test_carved_splits_are_disjoint_and_cover_the_data(digits_data):
    s = make_splits(digits_data, {}, seed=0)
    assert s.test_from == "train"
    sets = [set(s.train.tolist()), set(s.val.tolist()), set(s.test.tolist())]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    assert len(sets[0] | sets[1] | sets[2]) == len(digits_data.train)
    assert s.record["sizes"]["test"] == round(0.2 * 1797)
    assert s.record["sizes"]["val"] == round(0.2 * (1797 - 359))


def test_splits_keep_class_proportions(digits_data):
    labels = digits_data.train.labels
    overall = _class_fractions(labels, np.arange(len(labels)))
    s = make_splits(digits_data, {}, seed=0)
    for part in (s.train, s.val, s.test):
        assert np.abs(_class_fractions(labels, part) - overall).max() < 0.01


def test_official_test_split_is_used_whole_and_validation_comes_from_train(with_official_test):
    s = make_splits(with_official_test, {}, seed=0)
    assert s.test_from == "test"
    np.testing.assert_array_equal(s.test, np.arange(500))
    assert len(s.train) + len(s.val) == 1297
    assert not set(s.train.tolist()) & set(s.val.tolist())


def test_train_size_caps_the_labelled_pool_and_val_is_carved_from_it(digits_data):
    s = make_splits(digits_data, {"train_size": 500}, seed=0)
    assert s.record["sizes"] == {"train": 400, "val": 100, "trainval": 500, "test": 359}
    assert np.bincount(digits_data.train.labels[s.trainval], minlength=10).min() >= 48


def test_val_size_overrides_the_default_fraction(digits_data):
    s = make_splits(digits_data, {"val_size": 37}, seed=0)
    assert len(s.val) == 37


def test_test_size_caps_the_test_split_without_depending_on_the_seed(with_official_test):
    a = make_splits(with_official_test, {"test_size": 100}, seed=0)
    b = make_splits(with_official_test, {"test_size": 100}, seed=5)
    assert len(a.test) == 100
    np.testing.assert_array_equal(a.test, b.test)


def test_vtab1k_protocol_draws_800_train_and_200_val(with_official_test):
    s = make_splits(with_official_test, {"protocol": "vtab1k"}, seed=0)
    assert s.record["sizes"] == {"train": 800, "val": 200, "trainval": 1000, "test": 500}
    assert s.record["protocol"] == "vtab1k"
    assert len(set(s.trainval.tolist())) == 1000
    counts = np.bincount(with_official_test.train.labels[s.trainval], minlength=10)
    assert counts.min() >= 95 and counts.max() <= 105


def test_vtab1k_subsets_differ_across_seeds(with_official_test):
    a = make_splits(with_official_test, {"protocol": "vtab1k"}, seed=0)
    b = make_splits(with_official_test, {"protocol": "vtab1k"}, seed=1)
    assert not np.array_equal(a.trainval, b.trainval)


def test_shots_take_exactly_n_per_class_and_coop_sized_validation(digits_data):
    s = make_splits(digits_data, {"shots": 5}, seed=0)
    labels = digits_data.train.labels
    assert np.bincount(labels[s.train], minlength=10).tolist() == [5] * 10
    assert np.bincount(labels[s.val], minlength=10).tolist() == [4] * 10
    assert not set(s.train.tolist()) & set(s.test.tolist())
    assert s.record["protocol"] == "shots" and s.record["options"]["shots"] == 5


def test_more_shots_than_a_class_has_names_dataset_class_and_counts(digits_data):
    with pytest.raises(UserError, match=r"'digits'.*shots = 200.*class '0' has only \d+"):
        make_splits(digits_data, {"shots": 200}, seed=0)


def test_vtab1k_rejects_a_pool_smaller_than_1000(digits_data):
    small = TargetData(
        "small", digits_data.class_names, ImageSet(labels=digits_data.train.labels[:900]), None, "s"
    )
    with pytest.raises(
        UserError,
        match="'small': protocol 'vtab1k' needs 1000 training examples, the training pool outside the source reserve has 576",
    ):
        make_splits(small, {"protocol": "vtab1k"}, seed=0)


def test_conflicting_split_options_are_user_errors(digits_data):
    with pytest.raises(UserError, match="'shots' or 'train_size'"):
        make_splits(digits_data, {"shots": 2, "train_size": 100}, seed=0)
    with pytest.raises(UserError, match="'train_size' cannot be combined with protocol = 'vtab1k'"):
        make_splits(digits_data, {"protocol": "vtab1k", "train_size": 100}, seed=0)


def test_unknown_split_name_is_a_user_error(digits_data):
    with pytest.raises(UserError, match="unknown split 'validation'"):
        make_splits(digits_data, {}, seed=0).indices("validation")


def test_record_holds_what_shaped_the_split(digits_data):
    record = make_splits(digits_data, {"train_size": 300, "protocol": "standard"}, seed=7).record
    assert record["seed"] == 7 and record["test_seed"] == 0 and record["test_from"] == "train"
    assert record["options"] == {"train_size": 300, "protocol": "standard"}
    assert len(record["hash"]) == 64
