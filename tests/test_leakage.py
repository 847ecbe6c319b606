"""No source ever trains on its target's images: the source reserve, and the runner's refusal."""

from __future__ import annotations

import numpy as np
import pytest

from tlbench.leakage import check_disjoint, image_digests, training_images
from tlbench.splits import make_splits
from tlbench.testing import make_host, run_tiny_suite


@pytest.fixture(scope="module")
def fashion():
    from tlbench.datasetlib.local import fashion_mnist

    return fashion_mnist(None, {})


def _options(**given):
    keys = ("train_size", "val_size", "test_size", "shots", "protocol")
    return {k: given.get(k) for k in keys}


@pytest.mark.parametrize(
    "target_options",
    [
        {"train_size": 1000},
        {"train_size": 1000, "test_size": 2000},
        {"protocol": "vtab1k"},
        {"shots": 10},
    ],
)
def test_a_self_pretraining_pool_never_meets_a_capped_target_split(fashion, target_options):
    for source_seed in (0, 1):
        source = make_splits(
            fashion, _options(train_size=3000, protocol="source-reserve"), source_seed
        )
        seen = set(source.trainval.tolist()) | set(source.test.tolist())
        for seed in (0, 1, 2):
            target = make_splits(fashion, _options(**target_options), seed)
            assert not seen & set(target.trainval.tolist())
            assert target.test_from == "test"  # fashion-mnist's official test images


def test_the_reserve_is_fixed_and_recorded(fashion):
    a = make_splits(fashion, _options(train_size=1000), 0)
    b = make_splits(fashion, _options(train_size=1000), 7)
    assert a.record["reserve"] == b.record["reserve"]
    assert a.record["reserve"]["size"] == 12_000 and a.record["reserve"]["excluded"]


def test_an_uncapped_split_keeps_the_whole_pool(fashion):
    full = make_splits(fashion, _options(), 0)
    assert full.record["sizes"]["trainval"] == 60_000
    assert not full.record["reserve"]["excluded"]


def test_split_hashes_change_with_the_dataset_content(fashion):
    import dataclasses

    other = dataclasses.replace(fashion, fingerprint="something-else")
    assert (
        make_splits(fashion, _options(train_size=500), 0).record["hash"]
        != make_splits(other, _options(train_size=500), 0).record["hash"]
    )


def _digits_source_plugin(rows: np.ndarray):
    """A model plugin whose weights 'trained' on digits images ``rows`` (declared, not trained)."""
    from tlbench.api import ModelSpec, hookimpl

    class Plugin:
        @hookimpl
        def register_models(self, register):
            def factory(argument, options, context):
                from tlbench.builtin.model_sources import scratch_model
                from tlbench.datasetlib.local import digits

                model = scratch_model("test_resnet", options, context)
                model.training_images = training_images(
                    "digits", f"{len(rows)} digits images", digits(None, {}).train, rows
                )
                return model

            register(ModelSpec("seen-digits", factory=factory))

    return Plugin()


def _digits_reserve() -> np.ndarray:
    from tlbench.datasetlib.local import digits

    source = make_splits(digits(None, {}), _options(protocol="source-reserve"), 0)
    return np.concatenate([source.trainval, source.test])


def _suite(**dataset_options):
    return {
        "models": [{"name": "seen-digits", "input_size": 16}],
        "datasets": [{"name": "digits", "test_size": 60, **dataset_options}],
        "strategies": [{"name": "linear-probe", "l2": [1e-2]}],
    }


def test_the_runner_refuses_a_source_that_trained_on_its_targets_images(tmp_path):
    from tlbench.errors import UserError

    plugin = _digits_source_plugin(_digits_reserve())
    with pytest.raises(UserError) as info:
        run_tiny_suite(tmp_path, _suite(), [plugin])  # uncapped: the whole pool, reserve included
    message = str(info.value)
    assert len(message.splitlines()) == 1
    assert "source 'seen-digits' was trained on" in message and "dataset 'digits'" in message
    assert not (tmp_path / "run" / "cells.jsonl").exists()


def test_a_source_trained_on_the_reserve_runs_with_a_capped_target(tmp_path):
    plugin = _digits_source_plugin(_digits_reserve())
    records = run_tiny_suite(tmp_path, _suite(train_size=300), [plugin])
    assert [r["status"] for r in records] == ["ok"]
    assert records[0]["split"]["reserve"]["excluded"]


def test_digests_compare_pixels_not_positions():
    from tlbench.components import ImageSet

    images = np.arange(4 * 2 * 2, dtype=np.uint8).reshape(4, 2, 2)
    shuffled = ImageSet(labels=np.zeros(4), images=images[::-1].copy())
    original = ImageSet(labels=np.zeros(4), images=images)
    assert (image_digests(original, np.arange(4)) == image_digests(shuffled, np.arange(4))).all()


def test_check_disjoint_ignores_sources_without_known_images():
    class Source:
        training_images = None

    check_disjoint(None, Source(), None)  # nothing known, nothing to refuse


_ = make_host  # the fixture module's host factory is what run_tiny_suite uses
