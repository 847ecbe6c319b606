"""The plugin host: discovery, isolation of broken plugins, environment switches, requirements."""

from __future__ import annotations

import importlib
import sys
import textwrap

import pytest

import tlbench
from tlbench.plugins import check_requirements, load_plugins, requirements_lines
from tlbench.specs import EstimatorSpec, ModelSpec, StrategySpec

GOOD_PLUGIN = """
import tlbench
from tlbench.specs import ModelSpec

@tlbench.hookimpl
def register_models(register):
    register(ModelSpec(name="{model}", factory="json:loads"))
"""


@pytest.fixture
def fake_dist(tmp_path, monkeypatch):
    """Install a fake distribution on sys.path: ``fake_dist(name, version, entry_points, modules)``.

    ``entry_points`` maps entry-point names to module names in the ``tlbench`` group; ``modules``
    maps module names to source. importlib.metadata finds it exactly like a pip-installed one.
    """
    created: list[str] = []
    monkeypatch.syspath_prepend(str(tmp_path))

    def install(name: str, version: str, entry_points: dict[str, str], modules: dict[str, str]):
        info = tmp_path / f"{name.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        lines = "".join(f"{ep} = {target}\n" for ep, target in entry_points.items())
        (info / "entry_points.txt").write_text("[tlbench]\n" + lines)
        for module, source in modules.items():
            (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))
            created.append(module)

    yield install
    for module in created:
        sys.modules.pop(module, None)


def _plugin(**hooks):
    """A plugin object whose hooks are the given functions (named after the keyword)."""
    return type(
        "Plugin", (), {name: staticmethod(tlbench.hookimpl(fn)) for name, fn in hooks.items()}
    )


def test_plugin_failing_at_import_is_reported_by_name_and_the_others_still_load(fake_dist):
    fake_dist(
        "tlbench-mixed",
        "1.2",
        {"good": "tp_good", "broken": "tp_broken"},
        {
            "tp_good": GOOD_PLUGIN.format(model="good-model"),
            "tp_broken": "raise RuntimeError('boom')",
        },
    )
    host = load_plugins(builtins=())
    assert host.errors == [
        "plugin 'broken' (entry point tp_broken) failed to import: RuntimeError: boom"
    ]
    assert host.registry.lookup("model", "good-model")[0].plugin == "good"


def test_entry_point_plugin_is_listed_with_its_distribution_version_and_hooks(fake_dist):
    fake_dist(
        "tlbench-good", "1.2", {"good": "tp_listed"}, {"tp_listed": GOOD_PLUGIN.format(model="m")}
    )
    rows = load_plugins(builtins=()).plugin_rows()
    assert [row for row in rows if row["name"] == "good"] == [
        {"name": "good", "version": "1.2", "source": "entry point", "hooks": ["register_models"]}
    ]


def test_disable_autoload_env_skips_installed_plugins(fake_dist, monkeypatch):
    fake_dist(
        "tlbench-good", "1.0", {"good": "tp_auto"}, {"tp_auto": GOOD_PLUGIN.format(model="m")}
    )
    monkeypatch.setenv("TLBENCH_DISABLE_AUTOLOAD", "1")
    assert load_plugins(builtins=()).plugin_rows() == []


def test_plugins_env_limits_which_installed_plugins_load(fake_dist, monkeypatch):
    fake_dist(
        "tlbench-two",
        "1.0",
        {"one": "tp_one", "two": "tp_two"},
        {"tp_one": GOOD_PLUGIN.format(model="m1"), "tp_two": GOOD_PLUGIN.format(model="m2")},
    )
    monkeypatch.setenv("TLBENCH_PLUGINS", "two")
    host = load_plugins(builtins=())
    assert [row["name"] for row in host.plugin_rows()] == ["two"]
    assert host.registry.names("model") == ["m2"]


def test_unknown_hook_is_rejected_at_load_with_a_did_you_mean():
    def register_modles(register):
        pass

    host = load_plugins(
        builtins=(),
        load_entrypoints=False,
        extra=[("typo", _plugin(register_modles=register_modles))],
    )
    assert len(host.errors) == 1
    assert host.errors[0].startswith(
        "plugin 'typo' was rejected: it implements unknown hook 'register_modles'. Did you mean 'register_models'?"
    )
    assert host.plugin_rows() == []


def test_hook_argument_typo_is_rejected_naming_plugin_and_hook():
    def register_models(regster):
        pass

    host = load_plugins(
        builtins=(),
        load_entrypoints=False,
        extra=[("typo", _plugin(register_models=register_models))],
    )
    [error] = host.errors
    assert error.startswith("plugin 'typo' was rejected:")
    assert "register_models" in error and "regster" in error and "\n" not in error


def test_malformed_spec_error_names_the_plugin_and_the_field():
    def register_models(register):
        register(ModelSpec(name="has space", factory="json:loads"))

    host = load_plugins(
        builtins=(),
        load_entrypoints=False,
        extra=[("sloppy", _plugin(register_models=register_models))],
    )
    [error] = host.errors
    assert error.startswith("plugin 'sloppy' failed in register_models: ValueError: name must be")
    assert "'has space'" in error


def test_registering_the_wrong_spec_kind_names_the_plugin():
    def register_strategies(register):
        register(ModelSpec(name="not-a-strategy", factory="json:loads"))

    host = load_plugins(
        builtins=(),
        load_entrypoints=False,
        extra=[("mixup", _plugin(register_strategies=register_strategies))],
    )
    [error] = host.errors
    assert error.startswith("plugin 'mixup' registered ModelSpec(name='not-a-strategy'")
    assert host.registry.names("strategy") == []


def test_a_failing_registration_hook_does_not_stop_other_plugins():
    def failing(register):
        raise KeyError("missing")

    def fine(register):
        register(StrategySpec(name="fine", factory="json:loads"))

    host = load_plugins(
        builtins=(),
        load_entrypoints=False,
        extra=[
            ("bad", _plugin(register_strategies=failing)),
            ("ok", _plugin(register_strategies=fine)),
        ],
    )
    assert host.errors == ["plugin 'bad' failed in register_strategies: KeyError: 'missing'"]
    assert host.registry.names("strategy") == ["fine"]


def test_duplicate_component_names_fail_naming_both_plugins():
    def register_models(register):
        register(ModelSpec(name="twin", factory="json:loads"))

    host = load_plugins(
        builtins=(),
        load_entrypoints=False,
        extra=[
            ("first", _plugin(register_models=register_models)),
            ("second", _plugin(register_models=register_models)),
        ],
    )
    assert host.errors == [
        "model 'twin' is registered twice: by plugin 'first' and by plugin 'second'"
    ]
    assert host.registry.lookup("model", "twin")[0].plugin == "first"


def test_register_estimators_hook_records_the_registering_plugin():
    def register_estimators(register):
        register(EstimatorSpec(name="my-score", factory="json:loads"))

    host = load_plugins(
        builtins=(),
        load_entrypoints=False,
        extra=[("scores", _plugin(register_estimators=register_estimators))],
    )
    assert host.registry.lookup("estimator", "my-score")[0].plugin == "scores"


def test_a_hook_implementation_may_omit_arguments_it_does_not_use():
    calls = []
    host = load_plugins(
        builtins=(),
        load_entrypoints=False,
        extra=[("quiet", _plugin(register_datasets=lambda: calls.append(1)))],
    )
    assert host.errors == [] and calls == [1]


def test_the_same_plugin_object_twice_is_loaded_once_without_a_warning():
    # `--plugin X` while X is also installed: the user asked for X, and X is loaded.
    calls = []
    plugin = _plugin(register_models=lambda register: calls.append(1))
    host = load_plugins(builtins=(), load_entrypoints=False, extra=[("a", plugin), ("b", plugin)])
    assert host.errors == [] and calls == [1]
    assert [row["name"] for row in host.plugin_rows()] == ["a"]


def test_a_plugin_name_already_taken_is_one_clear_line():
    first = _plugin(register_models=lambda register: None)
    second = _plugin(register_models=lambda register: None)
    host = load_plugins(
        builtins=(), load_entrypoints=False, extra=[("same", first), ("same", second)]
    )
    assert host.errors == [
        "plugin 'same' (object) was not loaded: a plugin of that name is already loaded (object)"
    ]


def test_trace_hooks_env_traces_hook_calls_and_registrations_to_stderr(monkeypatch, capfd):
    def register_models(register):
        register(ModelSpec(name="traced", factory="json:loads"))

    monkeypatch.setenv("TLBENCH_TRACE_HOOKS", "1")
    load_plugins(
        builtins=(),
        load_entrypoints=False,
        extra=[("tracer", _plugin(register_models=register_models))],
    )
    err = capfd.readouterr().err
    assert "register_models [tracer]" in err
    assert "tracer registered model 'traced'" in err


def test_no_trace_output_without_the_env_var(monkeypatch, capfd):
    monkeypatch.delenv("TLBENCH_TRACE_HOOKS", raising=False)
    load_plugins(
        builtins=(),
        load_entrypoints=False,
        extra=[("p", _plugin(register_models=lambda register: None))],
    )
    assert capfd.readouterr().err == ""


def test_plugins_dir_loads_single_file_plugins_and_reports_a_broken_one(tmp_path):
    (tmp_path / "local_models.py").write_text(GOOD_PLUGIN.format(model="local-model"))
    (tmp_path / "broken.py").write_text("import does_not_exist_anywhere\n")
    (tmp_path / "notes.txt").write_text("not a plugin")
    try:
        host = load_plugins(plugins_dir=tmp_path, builtins=(), load_entrypoints=False)
    finally:
        sys.modules.pop("tlbench_local_local_models", None)
    assert host.registry.lookup("model", "local-model")[0].plugin == "local_models"
    [error] = host.errors
    assert error.startswith(
        f"plugin file {str(tmp_path / 'broken.py')!r} failed to import: ModuleNotFoundError"
    )
    assert [row["source"] for row in host.plugin_rows()] == [f"file {tmp_path / 'local_models.py'}"]


def test_missing_plugins_dir_is_reported(tmp_path):
    host = load_plugins(plugins_dir=tmp_path / "nope", builtins=(), load_entrypoints=False)
    assert host.errors == [f"plugins directory {str(tmp_path / 'nope')!r} does not exist"]


def test_plugin_module_that_cannot_be_imported_is_reported_by_name():
    host = load_plugins(["no_such_module_xyz"], builtins=(), load_entrypoints=False)
    assert host.errors == [
        "plugin 'no_such_module_xyz' failed to import: ModuleNotFoundError: No module named 'no_such_module_xyz'"
    ]


def test_each_call_builds_an_independent_manager():
    plugin = _plugin(
        register_models=lambda register: register(ModelSpec(name="solo", factory="json:loads"))
    )
    first = load_plugins(builtins=(), load_entrypoints=False, extra=[("p", plugin)])
    second = load_plugins(builtins=(), load_entrypoints=False)
    assert first.registry.names("model") == ["solo"]
    assert second.registry.names("model") == []


@pytest.fixture
def demo_plugin(tmp_path, monkeypatch):
    """The plugin ``tlbench new-plugin demo`` writes, imported from a temp dir."""
    from tlbench.scaffold import create_plugin

    monkeypatch.syspath_prepend(str(create_plugin("demo", tmp_path / "src")))
    yield importlib.import_module("tlbench_demo")
    for name in [m for m in sys.modules if m.split(".")[0] == "tlbench_demo"]:
        del sys.modules[name]


TINY_SUITE = {
    "models": ["demo-tiny"],
    "datasets": [{"name": "demo-digits", "train_size": 100, "test_size": 100}],
    "strategies": [{"name": "demo-nearest-centroid", "metric": "euclidean"}],
}


def test_on_cell_finished_observers_get_each_record_after_it_is_written(
    demo_plugin, tlbench_run, tmp_path
):
    seen = []

    def on_cell_finished(record):
        written = (tmp_path / "run" / "cells.jsonl").read_text()
        seen.append((record["seed"], record["status"], record["config_hash"] in written))

    observer = ("observer", _plugin(on_cell_finished=on_cell_finished))
    tlbench_run({**TINY_SUITE, "seeds": [0, 1]}, plugins=[demo_plugin, observer])
    assert seen == [(0, "ok", True), (1, "ok", True)]


def test_an_observer_that_raises_never_breaks_the_run(demo_plugin, tlbench_run):
    def on_cell_finished(record):
        raise RuntimeError("observer bug")

    records = tlbench_run(
        TINY_SUITE, plugins=[demo_plugin, ("broken", _plugin(on_cell_finished=on_cell_finished))]
    )
    assert [r["status"] for r in records] == ["ok"]


def test_requirements_pin_tlbench_and_every_installed_plugin_distribution(fake_dist, monkeypatch):
    fake_dist(
        "tlbench-extra", "0.3.1", {"extra": "tp_req"}, {"tp_req": GOOD_PLUGIN.format(model="r")}
    )
    monkeypatch.setenv("TLBENCH_DISABLE_AUTOLOAD", "1")  # installed counts, loaded or not
    lines = requirements_lines(load_plugins(builtins=()))
    assert "tlbench-extra==0.3.1" in lines
    assert f"tlbench=={tlbench.__version__}" in lines
    assert lines == sorted(lines, key=lambda line: line.split("==")[0])


def test_requirements_mark_plugins_no_installer_can_reproduce(tmp_path):
    (tmp_path / "mine.py").write_text(GOOD_PLUGIN.format(model="mine"))
    try:
        host = load_plugins(plugins_dir=tmp_path, builtins=(), load_entrypoints=False)
    finally:
        sys.modules.pop("tlbench_local_mine", None)
    assert requirements_lines(host)[-1] == (
        f"# plugin 'mine' (file {tmp_path / 'mine.py'}) is not an installed distribution"
    )


def test_check_requirements_reports_missing_and_wrong_versions(fake_dist):
    fake_dist("tlbench-old", "0.1.0", {"old": "tp_old"}, {"tp_old": GOOD_PLUGIN.format(model="o")})
    problems = check_requirements(["tlbench-old>=0.2", "tlbench-absent-xyz>=1", "tlbench-old>=0.1"])
    assert problems == [
        "requires 'tlbench-old>=0.2', but tlbench-old 0.1.0 is installed (pip install 'tlbench-old>=0.2')",
        "requires 'tlbench-absent-xyz>=1', which is not installed (pip install 'tlbench-absent-xyz>=1')",
    ]


def test_check_requirements_skips_requirements_whose_marker_does_not_apply():
    assert check_requirements(['tlbench-absent-xyz; python_version < "3"']) == []


def test_check_requirements_reports_an_unparseable_requirement_on_one_line():
    [problem] = check_requirements(["not a requirement!"])
    assert problem.startswith("invalid requirement 'not a requirement!': ") and "\n" not in problem


# -- register_commands ---------------------------------------------------------------------------

COMMANDS = """
import click
from tlbench.api import hookimpl

@hookimpl
def register_commands(cli):
    @cli.command(name="{name}")
    @click.argument("who")
    def greet(who):
        '''Greet WHO.'''
        click.echo("{greeting} " + who)
"""


def test_a_plugin_adds_a_subcommand_and_the_first_registration_of_a_name_wins(tmp_path):
    from click.testing import CliRunner

    from tlbench.cli import cli

    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "a_greeter.py").write_text(COMMANDS.format(name="greet", greeting="hello"))
    (plugins / "b_greeter.py").write_text(COMMANDS.format(name="greet", greeting="hi"))
    (plugins / "c_hijacker.py").write_text(COMMANDS.format(name="run", greeting="hijacked"))

    result = CliRunner().invoke(cli, ["--plugins-dir", str(plugins), "greet", "you"])

    assert result.exit_code == 0, result.output
    assert result.stdout == "hello you\n"
    assert sorted(line for line in result.stderr.splitlines() if line.startswith("warning")) == [
        "warning: plugin 'b_greeter': command 'greet' is already registered by plugin "
        "'a_greeter'; the first registration wins",
        "warning: plugin 'c_hijacker': command 'run' is one of tlbench's own; ignored",
    ]


def test_an_unknown_command_is_still_refused_with_plugins_loaded():
    from click.testing import CliRunner

    from tlbench.cli import cli

    result = CliRunner().invoke(cli, ["no-such-command"])
    assert result.exit_code == 2 and "No such command 'no-such-command'" in result.output
