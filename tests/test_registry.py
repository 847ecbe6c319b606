"""The registry: names to specs, with the registering plugin, duplicates and suggestions."""

import pytest

from tlbench.errors import UserError
from tlbench.registry import RegistrationError, Registry
from tlbench.specs import DatasetSpec, ModelSpec, Option, StrategySpec


def _registry() -> Registry:
    registry = Registry()
    registry.add("model", ModelSpec(name="resnet-tiny", factory="json:loads"), "core")
    registry.add(
        "model",
        ModelSpec(name="timm", factory="json:loads", takes_argument=True, argument_help="arch.tag"),
        "core",
    )
    registry.add("strategy", StrategySpec(name="linear-probe", factory="json:loads"), "core")
    return registry


def test_lookup_returns_the_spec_and_the_plugin_that_registered_it():
    entry, argument = _registry().lookup("model", "resnet-tiny")
    assert (entry.spec.name, entry.plugin, argument) == ("resnet-tiny", "core", None)


def test_family_lookup_splits_the_argument():
    entry, argument = _registry().lookup("model", "timm:resnet18.a1_in1k")
    assert (entry.spec.name, argument) == ("timm", "resnet18.a1_in1k")


def test_unknown_name_suggests_close_matches_and_lists_the_available():
    with pytest.raises(UserError) as info:
        _registry().lookup("model", "resnet-tiyn")
    assert (
        str(info.value)
        == "unknown model 'resnet-tiyn'. Did you mean 'resnet-tiny'? Available: resnet-tiny, timm."
    )


def test_unknown_name_without_close_match_still_lists_the_available():
    with pytest.raises(UserError, match=r"^unknown strategy 'zzz'\. Available: linear-probe\.$"):
        _registry().lookup("strategy", "zzz")


def test_family_without_argument_says_what_the_argument_is():
    with pytest.raises(UserError, match=r"model 'timm' needs an argument: 'timm:<arch.tag>'"):
        _registry().lookup("model", "timm")


def test_plain_component_refuses_an_argument():
    with pytest.raises(UserError, match="takes no ':argument'"):
        _registry().lookup("model", "resnet-tiny:extra")


def test_duplicate_name_names_both_plugins():
    registry = _registry()
    with pytest.raises(RegistrationError) as info:
        registry.add("model", ModelSpec(name="resnet-tiny", factory="json:loads"), "third-party")
    assert (
        str(info.value)
        == "model 'resnet-tiny' is registered twice: by plugin 'core' and by plugin 'third-party'"
    )


def test_same_name_in_different_kinds_is_allowed():
    registry = _registry()
    registry.add("dataset", DatasetSpec(name="linear-probe", factory="json:loads"), "odd")
    assert registry.names("dataset") == ["linear-probe"]


def test_option_clashing_with_a_common_option_is_refused_naming_the_plugin():
    spec = DatasetSpec(
        name="d", factory="json:loads", options=(Option("train_size", int, default=10),)
    )
    with pytest.raises(
        RegistrationError,
        match=r"plugin 'p': dataset 'd' declares option 'train_size', which the core already provides",
    ):
        Registry().add("dataset", spec, "p")


def test_registered_options_put_the_common_ones_first():
    registry = Registry()
    registry.add(
        "model",
        ModelSpec(name="m", factory="json:loads", options=(Option("depth", int, default=2),)),
        "p",
    )
    names = [o.name for o in registry.lookup("model", "m")[0].options]
    assert names == ["input_size", "input_adaptation", "depth"]


def test_items_come_sorted_by_name():
    registry = Registry()
    for name in ("b", "a", "c"):
        registry.add("strategy", StrategySpec(name=name, factory="json:loads"), "p")
    assert [item.spec.name for item in registry.items("strategy")] == ["a", "b", "c"]
