"""Suite files are validated completely before any work starts; every error names file and field."""

from __future__ import annotations

import pytest

from tlbench import hookimpl
from tlbench.errors import UserError
from tlbench.plugins import load_plugins
from tlbench.specs import DatasetSpec, ModelSpec, Option, StrategySpec
from tlbench.suite import config_hash, expand_cells, load_suite


class Components:
    """A plugin with cheap specs: suite validation never calls factories."""

    @hookimpl
    def register_models(self, register):
        register(ModelSpec("net.a", factory="x:y"))
        register(ModelSpec("scratch", factory="x:y", takes_argument=True, argument_help="arch"))

    @hookimpl
    def register_datasets(self, register):
        register(DatasetSpec("digits", factory="x:y"))
        register(DatasetSpec("fashion", factory="x:y"))

    @hookimpl
    def register_strategies(self, register):
        register(
            StrategySpec(
                "probe",
                factory="x:y",
                options=(Option("lr", float, default=0.1, minimum=0.0, sweep=True),),
            )
        )
        register(
            StrategySpec("tune", factory="x:y", options=(Option("k", int, default=2, minimum=1),))
        )


@pytest.fixture
def registry():
    host = load_plugins(builtins=(), load_entrypoints=False)
    host.manager.register(Components(), name="components")
    from tlbench.plugins import build_registry

    return build_registry(host.manager, host.errors)


GOOD = """
name = "demo"
seeds = [0, 1]
models = ["net.a", "scratch:resnet18"]
[[datasets]]
name = "digits"
train_size = 100
[[strategies]]
name = "probe"
lr = [0.1, 0.01]
[[strategies]]
name = "tune"
[[exclude]]
model = "scratch:resnet18"
strategy = "tune"
"""


def test_valid_suite_expands_to_the_cross_product_minus_excludes(registry, write_suite):
    suite = load_suite(write_suite(GOOD), registry)
    cells = expand_cells(suite)
    # 2 models x 1 dataset x 2 seeds x 2 strategies = 8, minus 2 excluded (scratch x tune x 2 seeds)
    assert len(cells) == 6
    assert {(c.model, c.strategy) for c in cells} == {
        ("net.a", "probe"),
        ("net.a", "tune"),
        ("scratch:resnet18", "probe"),
    }
    probe = next(c for c in cells if c.strategy == "probe")
    assert probe.strategy_options["lr"] == [0.1, 0.01]
    assert probe.dataset_options["train_size"] == 100
    assert probe.dataset_options["protocol"] == "standard"  # a core option's default is filled


def test_cells_sharing_model_and_dataset_are_adjacent(registry, write_suite):
    cells = expand_cells(load_suite(write_suite(GOOD), registry))
    groups = [(c.model, c.dataset, c.seed) for c in cells]
    seen = []
    for group in groups:
        if not seen or seen[-1] != group:
            assert group not in seen, "cells of one (model, dataset, seed) must run back to back"
            seen.append(group)


def test_config_hash_is_stable_and_distinguishes_options(registry, write_suite):
    cells = expand_cells(load_suite(write_suite(GOOD), registry))
    again = expand_cells(load_suite(write_suite(GOOD, "again.toml"), registry))
    assert [config_hash(c) for c in cells] == [config_hash(c) for c in again]
    assert len({config_hash(c) for c in cells}) == len(cells)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("models = [", "invalid TOML"),
        (
            'models = ["net.b"]\ndatasets = ["digits"]\nstrategies = ["probe"]',
            "models[0].name: unknown model 'net.b'. Did you mean 'net.a'?",
        ),
        (
            'models = ["net.a"]\ndatasets = ["digts"]\nstrategies = ["probe"]',
            "datasets[0].name: unknown dataset 'digts'. Did you mean 'digits'?",
        ),
        (
            'models = ["net.a"]\ndatasets = ["digits"]\nstrategies = ["prob"]',
            "Did you mean 'probe'?",
        ),
        (
            'models = ["net.a"]\ndatasets = ["digits"]\n[[strategies]]\nname = "tune"\nk = "two"',
            "strategies[0]: strategy 'tune': option 'k': expected an integer >= 1, got 'two'",
        ),
        (
            'models = ["net.a"]\ndatasets = ["digits"]\n[[strategies]]\nname = "probe"\nlr = -1.0',
            "option 'lr': expected a number >= 0.0",
        ),
        (
            'models = ["net.a"]\ndatasets = ["digits"]\n[[strategies]]\nname = "tune"\nkk = 1',
            "unknown option 'kk' (known options: k)",
        ),
        (
            'models = ["net.a"]\ndatasets = ["digits"]\nstrategies = ["probe"]\nseeds = ["x"]',
            "seeds: expected a non-empty list of non-negative integers",
        ),
        (
            'models = []\ndatasets = ["digits"]\nstrategies = ["probe"]',
            "models: expected a non-empty list",
        ),
        (
            'models = ["scratch"]\ndatasets = ["digits"]\nstrategies = ["probe"]',
            "model 'scratch' needs an argument: 'scratch:<arch>'",
        ),
        (
            'models = ["net.a"]\ndatasets = ["digits"]\nstrategies = ["probe"]\n[[exclude]]\nmodel = "nope"',
            "exclude[0].model: expected one of the suite's model ids",
        ),
        (
            'models = ["net.a"]\ndatasets = ["digits"]\nstrategies = ["probe"]\nmodle = 1',
            "modle: unknown field",
        ),
        (
            'models = ["net.a", "net.a"]\ndatasets = ["digits"]\nstrategies = ["probe"]',
            "duplicate model id 'net.a'",
        ),
        (
            'models = ["net.a"]\ndatasets = ["digits"]\nstrategies = ["probe"]\nseeds = [4294967296]',
            "seeds: expected a non-empty list of non-negative integers below 2**32",
        ),
        (
            'models = ["net.a"]\ndatasets = ["digits"]\n[[strategies]]\nname = "probe"\nlr = inf',
            "option 'lr': expected a number >= 0.0 (or a list of them to sweep), got inf, which is not finite",
        ),
        (
            'models = ["net.a"]\ndatasets = ["digits"]\n[[strategies]]\nname = "probe"\nlr = [0.1, nan]',
            "got nan, which is not finite",
        ),
        (
            'name = "../../x"\nmodels = ["net.a"]\ndatasets = ["digits"]\nstrategies = ["probe"]',
            "name: expected a name, not a path (no '/', '\\', '.' or '..'), got '../../x'",
        ),
        (
            'name = "/tmp/x"\nmodels = ["net.a"]\ndatasets = ["digits"]\nstrategies = ["probe"]',
            "name: expected a name, not a path",
        ),
        (
            'name = "a\\u0007b"\nmodels = ["net.a"]\ndatasets = ["digits"]\nstrategies = ["probe"]',
            "name: expected a name without control characters",
        ),
        (
            'models = ["net.a"]\ndatasets = ["digits"]\n[[strategies]]\nname = "probe"\nid = "../p"',
            "strategies[0].id: expected a name, not a path",
        ),
        (
            'models = ["scratch:../../etc/passwd"]\ndatasets = ["digits"]\nstrategies = ["probe"]',
            "models[0].name: model reference 'scratch:../../etc/passwd' looks like a file path",
        ),
        (
            'models = ["net.a"]\ndatasets = ["/data/digits"]\nstrategies = ["probe"]',
            "datasets[0].name: dataset reference '/data/digits' looks like a file path",
        ),
    ],
)
def test_bad_suites_name_file_field_and_expectation(registry, write_suite, text, expected):
    path = write_suite(text)
    with pytest.raises(UserError) as info:
        load_suite(path, registry)
    message = str(info.value)
    assert expected in message
    assert str(path) in message


def test_every_problem_is_reported_in_one_pass(registry, write_suite):
    path = write_suite(
        'models = ["net.x"]\ndatasets = ["digitz"]\nstrategies = ["probe"]\nseeds = [-1]'
    )
    with pytest.raises(UserError) as info:
        load_suite(path, registry)
    lines = str(info.value).splitlines()
    assert len(lines) == 3
    assert all(line.startswith(str(path)) for line in lines)


def test_every_problem_of_one_table_is_reported_at_once(registry, write_suite):
    path = write_suite(
        'models = ["net.a"]\ndatasets = ["digits"]\n'
        '[[strategies]]\nname = "tune"\nk = 0\ntemprature = 1.0\n'
        '[[strategies]]\nname = "probe"\nlr = [-1.0, inf]\nepochs = 2\nwarmup = 1\n'
    )
    with pytest.raises(UserError) as info:
        load_suite(path, registry)
    assert str(info.value).splitlines() == [
        f"{path}: strategies[0]: strategy 'tune': unknown option 'temprature' (known options: k)",
        f"{path}: strategies[0]: strategy 'tune': option 'k': expected an integer >= 1, got 0",
        f"{path}: strategies[1]: strategy 'probe': unknown option 'epochs' (known options: lr)",
        f"{path}: strategies[1]: strategy 'probe': unknown option 'warmup' (known options: lr)",
        f"{path}: strategies[1]: strategy 'probe': option 'lr': expected a number >= 0.0 (or a list of them to sweep), got -1.0",
    ]


def test_a_utf8_byte_order_mark_is_accepted(registry, tmp_path):
    path = tmp_path / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbf" + GOOD.encode())
    assert load_suite(path, registry).name == "demo"


def test_missing_suite_file_is_a_user_error(tmp_path):
    from tlbench.suite import find_suite

    with pytest.raises(UserError, match="suite file not found"):
        find_suite(str(tmp_path / "nope.toml"))
