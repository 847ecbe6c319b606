"""``tlbench.api.FeatureModel``: a plain ``torch.nn.Module`` (images -> features) runs with every
built-in strategy, on scikit-learn's digits, through the real runner."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tlbench.api import FeatureModel, ModelSpec, SourceModel, hookimpl
from tlbench.testing import run_tiny_suite

WIDTH = 32


def plain_body() -> nn.Module:
    """The kind of module a researcher has: no timm, images in, a feature vector out."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)  # the "pretrained" weights: the same in every cell
        return nn.Sequential(
            nn.Flatten(),
            nn.Linear(3 * 8 * 8, 64),
            nn.Tanh(),
            nn.Linear(64, WIDTH),
            nn.Tanh(),
        )


def plain_model(argument, options, context):
    def build(num_classes: int, in_chans: int = 3, seed: int = 0) -> nn.Module:
        return FeatureModel(plain_body(), WIDTH, num_classes, seed=seed)

    config = {
        "input_size": (3, 8, 8),
        "interpolation": "bilinear",
        "mean": (0.5, 0.5, 0.5),
        "std": (0.5, 0.5, 0.5),
        "crop_pct": 1.0,
        "crop_mode": "center",
    }
    return SourceModel("plain", "plain-cnn", "seed-7", "plain-cnn:seed7", config, build)


class PlainPlugin:
    @staticmethod
    @hookimpl
    def register_models(register):
        register(ModelSpec("plain-cnn", factory=plain_model))


FAST = {"epochs": 3, "lr": [1e-2], "batch_size": 32}
# lp-ft has its own, slow test: its probe searches the full l2 grid.
STRATEGIES = {
    "linear-probe": {"l2": [1e-2], "refine_steps": 0},
    "partial-unfreeze": {"k": 1, **FAST},
    "full-finetune": FAST,
    "bitfit": FAST,
}


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("plain")
    suite = {
        "models": ["plain-cnn"],
        "datasets": [{"name": "digits", "train_size": 400, "test_size": 300}],
        "strategies": [{"name": name, **options} for name, options in STRATEGIES.items()],
    }
    found = run_tiny_suite(tmp_path, suite, [("plain", PlainPlugin)])
    return {r["strategy"]: r for r in found}


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_a_plain_module_runs_with_every_built_in_strategy(records, strategy):
    record = records[strategy]
    assert record["status"] == "ok"
    assert record["metrics"]["top1"] > 40, "10 classes: far above chance"


def test_a_plain_module_runs_lp_ft(tmp_path):
    suite = {
        "models": ["plain-cnn"],
        "datasets": [{"name": "digits", "train_size": 400, "test_size": 300}],
        "strategies": [{"name": "lp-ft", **FAST}],
    }
    [record] = run_tiny_suite(tmp_path, suite, [("plain", PlainPlugin)])
    assert record["metrics"]["top1"] > 40 and record["hparams"]["probe_l2"] > 0


def test_partial_unfreeze_trains_the_last_layer_group_and_caches_the_frozen_prefix(records):
    cost = records["partial-unfreeze"]["cost"]
    last_layer = (64 + 1) * WIDTH
    head = (WIDTH + 1) * 10
    assert cost["trainable_params"] == last_layer + head
    assert cost["prefix_cache"] is True


def test_the_adapter_is_shaped_like_a_timm_model():
    model = FeatureModel(plain_body(), WIDTH, 10, seed=0)
    x = torch.zeros(2, 3, 8, 8)
    assert model(x).shape == (2, 10)
    assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (2, WIDTH)
    assert isinstance(model.get_classifier(), nn.Linear) and model.num_features == WIDTH
    model.reset_classifier(0)
    assert model(x).shape == (2, WIDTH), "no head: features out"
    again = FeatureModel(plain_body(), WIDTH, 10, seed=0)
    assert torch.equal(again.head.weight, FeatureModel(plain_body(), WIDTH, 10, seed=0).head.weight)


def test_layer_groups_are_the_bodys_children_with_parameters_then_the_head():
    from tlbench.weights import layer_groups

    groups = layer_groups(FeatureModel(plain_body(), WIDTH, 10))
    assert groups == [
        ["body.1.weight", "body.1.bias"],
        ["body.3.weight", "body.3.bias"],
        ["head.weight", "head.bias"],
    ]


def test_a_module_that_returns_maps_instead_of_vectors_gets_a_clear_error():
    model = FeatureModel(nn.Conv2d(3, 4, 1), 4, 10)  # no pooling: (N, 4, H, W) out
    with pytest.raises(
        ValueError, match=r"returned shape \(2, 4, 8, 8\); expected \(N, 4\)"
    ) as info:
        model(torch.zeros(2, 3, 8, 8))
    assert info.value.kind == "model"  # a cell's failure blames the model, not the strategy
