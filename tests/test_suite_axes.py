"""Options declared ``axis=True``: a list value expands one suite entry into one cell per value
(the layer-transfer curve from one entry), ids naming the values, excludes and resume by id."""

from __future__ import annotations

from pathlib import Path

import pytest

from tlbench import hookimpl
from tlbench.errors import UserError
from tlbench.plugins import build_registry, load_plugins
from tlbench.specs import DatasetSpec, ModelSpec, Option, StrategySpec
from tlbench.suite import config_hash, expand_cells, parse_suite


class Components:
    """Cheap specs: suite parsing never calls factories."""

    @hookimpl
    def register_models(self, register):
        register(ModelSpec("net", factory="x:y"))

    @hookimpl
    def register_datasets(self, register):
        register(DatasetSpec("digits", factory="x:y"))

    @hookimpl
    def register_strategies(self, register):
        register(
            StrategySpec(
                "study",
                factory="x:y",
                options=(
                    Option("keep", int, default=0, minimum=0, axis=True),
                    Option(
                        "mode", str, default="finetune", choices=("frozen", "finetune"), axis=True
                    ),
                    Option("flag", bool, default=False, axis=True),
                    Option("lr", float, default=[0.1], minimum=0.0, sweep=True),
                ),
            )
        )


@pytest.fixture
def registry():
    host = load_plugins(builtins=(), load_entrypoints=False)
    host.manager.register(Components(), name="components")
    return build_registry(host.manager, host.errors)


def suite(registry, *strategies, exclude=()):
    raw = {"models": ["net"], "datasets": ["digits"], "strategies": list(strategies)}
    if exclude:
        raw["exclude"] = list(exclude)
    return parse_suite(raw, Path("s.toml"), registry)


def test_axis_lists_expand_one_entry_into_one_cell_per_combination(registry):
    parsed = suite(registry, {"name": "study", "keep": [0, 2, 5], "mode": ["frozen", "finetune"]})
    cells = expand_cells(parsed)
    assert [c.strategy for c in cells] == [
        f"study[keep={k},mode={m}]" for k in (0, 2, 5) for m in ("frozen", "finetune")
    ]
    assert [(c.strategy_options["keep"], c.strategy_options["mode"]) for c in cells[:2]] == [
        (0, "frozen"),
        (0, "finetune"),
    ]
    assert len({config_hash(c) for c in cells}) == 6


def test_a_single_value_keeps_the_plain_id_and_sweeps_stay_candidates(registry):
    parsed = suite(registry, {"name": "study", "keep": 3, "lr": [0.1, 0.01]})
    (cell,) = expand_cells(parsed)
    assert cell.strategy == "study" and cell.strategy_options["keep"] == 3
    assert cell.strategy_options["lr"] == [0.1, 0.01]  # a sweep is one cell choosing on val


def test_ids_name_values_the_toml_way_and_follow_an_explicit_id(registry):
    parsed = suite(registry, {"name": "study", "id": "curve", "flag": [True, False]})
    assert [e.id for e in parsed.strategies] == ["curve[flag=true]", "curve[flag=false]"]


def test_excludes_name_expanded_ids(registry):
    parsed = suite(
        registry,
        {"name": "study", "keep": [0, 1], "mode": ["frozen", "finetune"]},
        exclude=[{"strategy": "study[keep=0,mode=frozen]"}],
    )
    assert "study[keep=0,mode=frozen]" not in {c.strategy for c in expand_cells(parsed)}
    assert len(expand_cells(parsed)) == 3


def test_axis_values_must_be_distinct_and_valid(registry):
    with pytest.raises(UserError, match=r"strategies\[0\]: .*'keep'.*distinct values"):
        suite(registry, {"name": "study", "keep": [1, 1]})
    with pytest.raises(UserError, match=r"strategies\[0\]: .*'mode'.*one of 'frozen', 'finetune'"):
        suite(registry, {"name": "study", "mode": ["frozen", "sideways"]})


def test_an_expanded_id_colliding_with_another_entry_is_reported(registry):
    with pytest.raises(UserError, match=r"strategies\[1\]\.id: .*'study\[keep=1\]' is also"):
        suite(
            registry,
            {"name": "study", "id": "study[keep=1]", "keep": 4},
            {"name": "study", "keep": [1, 2]},
        )


def test_describe_says_a_list_gives_one_cell_each():
    option = Option("keep", int, default=0, minimum=0, axis=True)
    assert "(or a list of them: one cell each)" in option.describe()
    assert option.coerce(2) == 2 and option.coerce([2, 3]) == [2, 3]
