"""Registration specs: validated at construction, options coerced with messages that name them."""

import json

import pytest

from tlbench.specs import (
    COMMON_OPTIONS,
    ModelSpec,
    Option,
    OptionErrors,
    StrategySpec,
    resolve_options,
)


@pytest.mark.parametrize("name", ["", "has space", "family:arg", None])
def test_spec_refuses_a_bad_name(name):
    with pytest.raises(ValueError, match="name must be a non-empty string"):
        ModelSpec(name=name, factory="json:loads")


@pytest.mark.parametrize("factory", ["json.loads", 42, None])
def test_spec_refuses_a_factory_that_is_neither_callable_nor_module_attr(factory):
    with pytest.raises(ValueError, match="factory must be a callable or a 'module:attr' string"):
        ModelSpec(name="m", factory=factory)


def test_spec_refuses_options_that_are_not_option_instances():
    with pytest.raises(ValueError, match="options must be tlbench.specs.Option instances"):
        StrategySpec(name="s", factory="json:loads", options=({"name": "lr"},))


def test_lazy_factory_string_is_imported_on_first_use():
    assert ModelSpec(name="m", factory="json:loads").load_factory() is json.loads


def test_spec_kind_follows_its_class():
    assert (ModelSpec(name="m", factory=len).kind, StrategySpec(name="s", factory=len).kind) == (
        "model",
        "strategy",
    )


def test_availability_probe_failure_becomes_a_reason_not_an_exception():
    def probe():
        raise OSError("disk gone")

    spec = ModelSpec(name="m", factory=len, available=probe)
    assert spec.availability() == "availability check failed: disk gone"


def test_family_availability_probe_receives_the_argument():
    spec = ModelSpec(
        name="m", factory=len, takes_argument=True, available=lambda arg: arg == "ok" or f"no {arg}"
    )
    assert (spec.availability("ok"), spec.availability("x")) == (True, "no x")


def test_resolve_fills_defaults_and_coerces_ints_to_floats():
    options = (Option("lr", float, default=0.1), Option("epochs", int, default=3))
    assert resolve_options(options, {"lr": 1}) == {"lr": 1.0, "epochs": 3}


def test_resolve_names_an_unknown_option_lists_the_known_and_suggests_one():
    with pytest.raises(
        ValueError, match=r"unknown option 'lrr' \(known options: epochs, lr\); did you mean 'lr'\?"
    ):
        resolve_options(
            (Option("lr", float, default=0.1), Option("epochs", int, default=3)), {"lrr": 1}
        )


def test_resolve_reports_every_problem_of_one_component_at_once():
    options = (
        Option("lr", float, default=0.1, exclusive_minimum=0.0),
        Option("epochs", int, default=3, minimum=1),
        Option("path", str, required=True),
    )
    with pytest.raises(OptionErrors) as info:
        resolve_options(options, {"lr": 0, "epochs": 0, "temprature": 1.0})
    assert info.value.problems == (
        "unknown option 'temprature' (known options: epochs, lr, path)",
        "option 'lr': expected a number > 0.0, got 0.0",
        "option 'epochs': expected an integer >= 1, got 0",
        "option 'path' is required (a string)",
    )


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        (Option("epochs", int, default=1), True, "expected an integer, got True"),
        (Option("epochs", int, default=1, minimum=1), 0, "expected an integer >= 1, got 0"),
        (
            Option("mode", str, default="a", choices=("a", "b")),
            "c",
            "expected one of 'a', 'b', got 'c'",
        ),
        (
            Option("p", float, default=0.5, minimum=0.0, maximum=1.0),
            2.0,
            "expected a number in [0.0, 1.0], got 2.0",
        ),
        (
            Option("l2", float, default=1.0, exclusive_minimum=0.0),
            0.0,
            "expected a number > 0.0, got 0.0",
        ),
        (
            Option("l2", float, default=1.0, exclusive_minimum=0.0),
            float("inf"),
            "expected a number > 0.0, got inf, which is not finite",
        ),
        (
            Option("l2", float, default=1.0, minimum=0.0, sweep=True),
            [1.0, float("nan")],
            "expected a number >= 0.0 (or a list of them to sweep), got nan, which is not finite",
        ),
    ],
)
def test_resolve_rejects_a_bad_value_naming_the_option(option, value, expected):
    with pytest.raises(ValueError) as info:
        resolve_options((option,), {option.name: value})
    assert str(info.value) == f"option {option.name!r}: {expected}"


def test_sweep_option_accepts_one_value_or_a_list_and_always_gives_a_list():
    lr = Option("lr", float, default=0.1, sweep=True)
    assert resolve_options((lr,), {}) == {"lr": [0.1]}
    assert resolve_options((lr,), {"lr": 0.5}) == {"lr": [0.5]}
    assert resolve_options((lr,), {"lr": [1, 0.01]}) == {"lr": [1.0, 0.01]}


def test_sweep_option_refuses_an_empty_list():
    with pytest.raises(ValueError, match="got an empty list"):
        resolve_options((Option("lr", float, default=0.1, sweep=True),), {"lr": []})


def test_required_option_missing_is_an_error():
    with pytest.raises(ValueError, match=r"option 'path' is required \(a string\)"):
        resolve_options((Option("path", str, default=None, required=True),), {})


def test_every_kind_has_its_common_options():
    assert set(COMMON_OPTIONS) == {"model", "dataset", "strategy", "estimator"}
    assert {o.name for o in COMMON_OPTIONS["dataset"]} >= {
        "train_size",
        "val_size",
        "shots",
        "protocol",
    }
