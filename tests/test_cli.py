"""The command line: one clear line and exit code 2 for user mistakes, no torch for cheap commands."""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner

from tlbench.cli import cli

NO_TORCH = """
import sys
from tlbench.cli import cli
try:
    cli.main(args={args!r}, prog_name="tlbench", standalone_mode=False)
except SystemExit:
    pass
heavy = sorted(m for m in ("torch", "timm", "torchvision") if m in sys.modules)
print("HEAVY:" + ",".join(heavy))
"""


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["list"],
        ["list", "models"],
        ["list", "--json"],
        ["show", "linear-probe"],
        ["plugins"],
        ["plugins", "--json"],
        ["run", "--help"],
    ],
)
def test_cheap_commands_do_not_import_torch(args, repo_root):
    result = subprocess.run(
        [sys.executable, "-c", NO_TORCH.format(args=args)],
        capture_output=True,
        text=True,
        cwd=repo_root,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("HEAVY:"), result.stdout[-500:]


MISTAKE = """
import sys
from tlbench.cli import cli
try:
    cli.main(args={args!r}, prog_name="tlbench", standalone_mode=True)
except SystemExit as exc:
    code = exc.code
loaded = sorted(m for m in ("torch", "timm", "tlbench.engine") if m in sys.modules)
print("EXIT:" + str(code) + " LOADED:" + ",".join(loaded))
"""


@pytest.mark.parametrize(
    "args",
    [
        ["run", "no-such-suite.toml"],
        ["run", "quickstart", "--device", "banana"],
        ["run", "quickstart", "--no-such-option"],
        ["--no-such-option"],
    ],
    ids=["missing-suite", "bad-device", "bad-run-option", "bad-option"],
)
def test_mistakes_are_answered_before_torch_or_the_engine_load(args, repo_root):
    result = subprocess.run(
        [sys.executable, "-c", MISTAKE.format(args=args)],
        capture_output=True,
        text=True,
        cwd=repo_root,
        timeout=120,
    )
    assert result.stdout.strip().endswith("EXIT:2 LOADED:"), (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr


def test_a_suite_that_does_not_validate_is_answered_before_torch_loads(tmp_path, repo_root):
    suite = tmp_path / "typo.toml"
    suite.write_text(
        'models = ["scratch:resnet18"]\ndatasets = ["digits"]\nstrategies = ["linear-prob"]\n'
    )
    result = subprocess.run(
        [sys.executable, "-c", MISTAKE.format(args=["run", str(suite)])],
        capture_output=True,
        text=True,
        cwd=repo_root,
        timeout=120,
    )
    assert result.stdout.strip().endswith("EXIT:2 LOADED:"), (result.stdout, result.stderr)
    assert "unknown strategy 'linear-prob'" in result.stderr


def test_device_forms_are_spelled_alike_by_the_cli_and_the_resolver(repo_root):
    import ast

    from tlbench import cli as cli_module

    source = (repo_root / "tlbench" / "engine" / "runtime.py").read_text()  # without torch
    assigned = {
        node.targets[0].id: node.value
        for node in ast.parse(source).body
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
    }
    assert ast.literal_eval(assigned["DEVICE_FORMS"]) == cli_module.DEVICE_FORMS


def test_missing_suite_exits_2_with_one_line(tmp_path):
    result = CliRunner().invoke(cli, ["run", str(tmp_path / "missing.toml")])
    assert result.exit_code == 2
    assert result.output.strip().startswith("error: suite file not found")
    assert "Traceback" not in result.output


def test_malformed_suite_exits_2_naming_the_file(tmp_path):
    suite = tmp_path / "bad.toml"
    suite.write_text("models = [\n")
    result = CliRunner().invoke(cli, ["run", str(suite)])
    assert result.exit_code == 2
    assert f"error: {suite}: invalid TOML" in result.output
    assert "Traceback" not in result.output


def test_unknown_strategy_gets_did_you_mean(tmp_path):
    suite = tmp_path / "typo.toml"
    suite.write_text(
        'models = ["scratch:resnet18"]\ndatasets = ["digits"]\nstrategies = ["linear-prob"]\n'
    )
    result = CliRunner().invoke(cli, ["run", str(suite)])
    assert result.exit_code == 2
    assert (
        "strategies[0].name: unknown strategy 'linear-prob'. Did you mean 'linear-probe'"
        in result.output
    )


def test_list_shows_components_with_their_plugin():
    result = CliRunner().invoke(cli, ["list", "strategies"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert "linear-probe" in result.output
    assert "tlbench.builtin.strategies" in result.output


def test_plugins_lists_builtins_with_hooks():
    result = CliRunner().invoke(cli, ["plugins"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert "tlbench.builtin.models" in result.output
    assert "register_models" in result.output
