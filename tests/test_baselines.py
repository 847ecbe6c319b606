"""Trivial baselines are source models like any other: raw pixels and random features."""

import pytest
import torch

from tlbench.builtin.baselines import pixels_model, random_features_model
from tlbench.cache import Cache
from tlbench.components import BuildContext


def _context(tmp_path, seed=0):
    return BuildContext(cache=Cache(tmp_path), device="cpu", seed=seed)


def test_pixel_features_are_the_normalised_image_itself(tmp_path):
    source = pixels_model(None, {"input_size": 8}, _context(tmp_path))
    backbone = source.build(0, in_chans=1)
    images = torch.rand(5, 1, 8, 8)
    assert torch.equal(backbone(images), images.flatten(1))
    assert source.card["trivial_baseline"] and source.card["num_features"] == 3 * 8 * 8


def test_random_features_are_fixed_by_the_seed_and_never_trained(tmp_path):
    first = random_features_model(None, {"input_size": 8, "dim": 64}, _context(tmp_path, seed=1))
    again = random_features_model(None, {"input_size": 8, "dim": 64}, _context(tmp_path, seed=1))
    other = random_features_model(None, {"input_size": 8, "dim": 64}, _context(tmp_path, seed=2))
    x = torch.rand(3, 3, 8, 8)
    a, b, c = (s.build(0)(x) for s in (first, again, other))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert first.fingerprint != other.fingerprint
    assert not any(p.requires_grad for p in first.build(0).parameters())


def test_a_new_head_is_seeded_and_sized_for_the_target(tmp_path):
    source = pixels_model(None, {"input_size": 8}, _context(tmp_path))
    one, two = source.build(10, seed=3), source.build(10, seed=3)
    assert one.get_classifier().out_features == 10
    assert torch.equal(one.get_classifier().weight, two.get_classifier().weight)


@pytest.mark.parametrize("model", [{"name": "pixels"}, {"name": "random-features", "dim": 256}])
def test_the_linear_probe_runs_on_a_trivial_baseline(tlbench_run, model):
    suite = {
        "models": [{**model, "input_size": 8}],
        "datasets": [{"name": "digits", "train_size": 400, "test_size": 200}],
        "strategies": [{"name": "linear-probe", "l2": [1e-3, 1e-1]}],
    }
    (record,) = tlbench_run(suite)
    assert record["status"] == "ok" and record["metrics"]["top1"] > 85
    assert record["model_card"]["trivial_baseline"] is True
