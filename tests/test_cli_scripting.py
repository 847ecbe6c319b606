"""The command line as a script reads it: plain tab-separated lines when stdout is not a
terminal, ``--json`` everywhere a listing is printed, options visible with ``show``, clashes
shown by ``plugins``, and bad run options refused before anything loads (exit 2, one line)."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from tlbench.cli import cli
from tlbench.specs import Option

CLASH = """
from tlbench.api import StrategySpec, hookimpl

@hookimpl
def register_strategies(register):
    register(StrategySpec("linear-probe", factory="json:loads", description="an impostor"))
"""

LOUD = """
from pathlib import Path
Path({marker!r}).touch()  # imported: the host was loaded
"""


def invoke(*args: str, **kwargs):
    return CliRunner().invoke(cli, list(args), **kwargs)


def lines(output: str) -> list[list[str]]:
    return [line.split("\t") for line in output.splitlines()]


# -- list and show ---------------------------------------------------------------------------


def test_piped_list_prints_one_line_per_component_with_tab_separated_fields():
    result = invoke("list", "models")
    assert result.exit_code == 0, result.output
    matching = [line for line in result.stdout.splitlines() if "efficientnet_lite0.in1k" in line]
    assert len(matching) == 1
    name, kind, plugin, offline, _options, description = matching[0].split("\t")
    assert (name, kind, plugin) == ("efficientnet_lite0.in1k", "model", "tlbench.builtin.models")
    assert offline.startswith(("yes", "no: ")) and "efficientnet" in description
    assert "┃" not in result.stdout and "│" not in result.stdout


def test_list_models_grep_finds_exactly_one_line_in_a_real_pipe(repo_root):
    shell = f"{sys.executable} -m tlbench list models | grep efficientnet_lite0.in1k"
    out = subprocess.run(
        shell, shell=True, capture_output=True, text=True, cwd=repo_root, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.splitlines()) == 1
    assert out.stdout.split("\t")[0] == "efficientnet_lite0.in1k"


def test_list_without_a_kind_lists_every_kind_one_line_each():
    kinds = {fields[1] for fields in lines(invoke("list").stdout)}
    assert kinds == {"model", "dataset", "strategy", "estimator"}


def test_list_strategies_marks_sweepable_options():
    result = invoke("--plugin", "test_runner", "list", "strategies")
    rows = {fields[0]: fields for fields in lines(result.stdout)}
    assert rows["ridge"][4] == "l2 (sweep), work, fail_if_exists, crash_if_exists, touch"


def test_list_json_describes_every_option_of_every_component():
    result = invoke("--plugin", "test_runner", "list", "strategies", "--json")
    assert result.exit_code == 0, result.output
    components = {c["name"]: c for c in json.loads(result.stdout)}
    ridge = components["ridge"]
    assert (ridge["plugin"], ridge["offline"], ridge["version"]) == ("test_runner", True, "1")
    l2, work = ridge["options"][:2]
    every_field = {f.name for f in dataclasses.fields(Option)} | {"expected", "provided_by"}
    assert set(l2) == every_field
    assert {key: l2[key] for key in ("name", "type", "default", "minimum", "maximum", "sweep")} == {
        "name": "l2",
        "type": "float",
        "default": [0.1, 10.0],
        "minimum": 0.0,
        "maximum": None,
        "sweep": True,
    }
    assert l2["expected"] == "a number >= 0.0 (or a list of them to sweep)"
    assert l2["provided_by"] == "component"
    assert work["help"] == "repeat the fit (slower cells for interrupt tests)"
    assert components["linear-probe"]["plugin"] == "tlbench.builtin.strategies"


def test_show_describes_a_component_with_every_option():
    result = invoke("--plugin", "test_runner", "show", "ridge")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[:4] == [
        "ridge  (strategy from plugin test_runner, recipe version 1)",
        "ridge classifier on frozen features (tests)",
        "offline: yes",
        "options:",
    ]
    assert (
        "  l2 (float, default [0.1, 10.0]): a number >= 0.0 (or a list of them to sweep); "
        "sweepable\n  work (int, default 1): an integer >= 1\n"
        "      repeat the fit (slower cells for interrupt tests)\n"
    ) in result.stdout


def test_show_lists_the_options_the_core_gives_every_model():
    info = json.loads(invoke("show", "scratch:resnet18", "--json").stdout)
    assert (info["kind"], info["ref"], info["argument"]) == (
        "model",
        "scratch:resnet18",
        "resnet18",
    )
    core = {o["name"]: o for o in info["options"] if o["provided_by"] == "core"}
    assert core["input_adaptation"]["choices"] == ["replicate", "stem"]
    assert core["input_size"]["minimum"] == 8 and core["input_size"]["maximum"] == 1024


def test_list_kind_name_and_list_name_are_show():
    shown = invoke("show", "linear-probe").stdout
    assert invoke("list", "strategies", "linear-probe").stdout == shown
    assert invoke("list", "linear-probe").stdout == shown


def test_an_unknown_name_gets_did_you_mean():
    result = invoke("show", "linear-prob")
    assert result.exit_code == 2
    assert result.stderr.startswith(
        "error: unknown component 'linear-prob'. Did you mean 'linear-probe'?"
    )
    result = invoke("list", "strategies", "ful-finetune")
    assert result.exit_code == 2
    assert "unknown strategy 'ful-finetune'. Did you mean 'full-finetune'?" in result.stderr


# -- plugins and cache --------------------------------------------------------------------------


@pytest.fixture
def clash_dir(tmp_path):
    directory = tmp_path / "plugins"
    directory.mkdir()
    (directory / "impostor.py").write_text(CLASH)
    return directory


def test_plugins_shows_a_name_clash_in_lines_and_json(clash_dir):
    result = invoke("--plugins-dir", str(clash_dir), "plugins")
    assert result.exit_code == 0, result.output
    rows = {fields[0]: fields for fields in lines(result.stdout)}
    clash = "strategy 'linear-probe': plugin 'tlbench.builtin.strategies' kept, plugin 'impostor' ignored"
    assert rows["impostor"][1:] == [
        "-",
        f"file {clash_dir / 'impostor.py'}",
        "register_strategies",
        clash,
    ]
    assert rows["tlbench.builtin.strategies"][4] == clash
    assert rows["tlbench.builtin.models"][4] == ""

    data = json.loads(invoke("--plugins-dir", str(clash_dir), "plugins", "--json").stdout)
    assert data["clashes"] == [
        {
            "kind": "strategy",
            "name": "linear-probe",
            "kept": "tlbench.builtin.strategies",
            "ignored": "impostor",
        }
    ]
    assert any("registered twice" in error for error in data["errors"])


def test_a_plugin_given_with_plugin_and_already_loaded_is_loaded_once_quietly():
    result = invoke("--plugin", "tlbench.builtin.models", "plugins")
    assert result.exit_code == 0 and result.stderr == ""
    names = [fields[0] for fields in lines(result.stdout)]
    assert names.count("tlbench.builtin.models") == 1


def test_cache_info_prints_lines_and_json(tmp_path):
    entry = tmp_path / "cache" / "features" / "ab"  # the cache's layout: namespace/xx/key.json
    entry.mkdir(parents=True)
    (entry / "abcd.json").write_text("{}")

    plain = invoke("cache", "info", "--cache-dir", str(tmp_path / "cache"))
    assert plain.exit_code == 0, plain.output
    namespace, entries, size = plain.stdout.splitlines()[0].split("\t")
    assert namespace == "features" and int(entries) >= 1 and int(size) > 0

    data = json.loads(
        invoke("cache", "info", "--cache-dir", str(tmp_path / "cache"), "--json").stdout
    )
    assert data["root"] == str(tmp_path / "cache")
    assert data["namespaces"][0]["namespace"] == "features"


# -- run: options checked before any work, JSON alone on stdout ---------------------------------


@pytest.fixture
def loud_plugins(tmp_path):
    """A plugins directory whose one plugin leaves a marker when it is imported."""
    directory = tmp_path / "plugins"
    directory.mkdir()
    marker = tmp_path / "host-loaded"
    (directory / "loud.py").write_text(LOUD.format(marker=str(marker)))
    return directory, marker


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--device", "banana"], "error: --device 'banana': expected one of auto, cpu, cuda"),
        (["--executor", "process", "--workers", "0"], "error: --workers: expected an integer >= 1"),
        (
            ["--executor", "ray", "--cpus-per-cell", "0"],
            "error: --executor-opt cpus_per_cell=0: expected a number > 0",
        ),
    ],
    ids=["device", "workers", "cpus-per-cell"],
)
def test_bad_run_options_exit_2_before_loading_plugins_or_creating_the_run(
    tmp_path, loud_plugins, options, message
):
    directory, marker = loud_plugins
    result = invoke(
        "--plugins-dir",
        str(directory),
        "run",
        "quickstart",
        "--out",
        str(tmp_path / "run"),
        *options,
    )
    assert result.exit_code == 2
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith(message)
    assert "Traceback" not in result.output
    assert not marker.exists(), "nothing was loaded"
    assert not (tmp_path / "run").exists()


def test_help_documents_the_exit_codes():
    text = invoke("--help").stdout
    assert "Exit codes:" in text
    codes = [line.split()[0] for line in text.split("Exit codes:")[1].splitlines() if line.strip()]
    assert {"0", "1", "2", "130", "143"} <= set(codes)
    assert "--fail-on-regression" in text


def test_run_json_prints_only_json_on_stdout_even_when_a_plugin_prints(tmp_path, write_suite):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "chatty.py").write_text(
        "from tlbench import hookimpl\n"
        "@hookimpl\n"
        "def on_cell_finished(record):\n"
        "    print('chatty observer saw', record['strategy'])\n"
    )
    suite = write_suite(
        'models = ["tiny-proj"]\nstrategies = ["ridge"]\n'
        '[[datasets]]\nname = "tiny-digits"\ntrain_size = 300\n'
    )
    result = invoke(
        "--plugin",
        "test_runner",
        "--plugins-dir",
        str(plugins),
        "run",
        str(suite),
        "--out",
        str(tmp_path / "run"),
        "--json",
    )
    assert result.exit_code == 0, result.output
    [record] = json.loads(result.stdout)
    assert record["status"] == "ok" and record["metrics"]["top1"] > 60
    assert "chatty observer saw ridge" in result.stderr


def test_run_into_a_pipe_ends_with_the_reports_csv_lines_not_a_table(tmp_path, write_suite):
    suite = write_suite(
        'models = ["tiny-proj"]\nstrategies = ["ridge"]\n'
        '[[datasets]]\nname = "tiny-digits"\ntrain_size = 300\n'
    )
    result = invoke("--plugin", "test_runner", "run", str(suite), "--out", str(tmp_path / "run"))
    assert result.exit_code == 0, result.output
    assert "┃" not in result.stdout and "│" not in result.stdout
    [row] = list(csv.DictReader(io.StringIO(result.stdout)))
    assert (row["model"], row["strategy"], row["status"]) == ("tiny-proj", "ridge", "ok")
    assert "results:" in result.stderr
