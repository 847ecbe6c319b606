"""Every ``tlbench`` command the README shows parses: its command exists and its options and
arguments are accepted, checked with click's own parser (nothing runs)."""

from __future__ import annotations

import re
import shlex
import warnings
from pathlib import Path

import click
import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_commands() -> list[str]:
    blocks = re.findall(r"```(?:bash|console|sh)\n(.*?)```", README.read_text(), re.S)
    lines = [line.split(" #")[0].strip() for block in blocks for line in block.splitlines()]
    return [
        line.removeprefix("$ ") for line in lines if line.removeprefix("$ ").startswith("tlbench ")
    ]


def parse(args: list[str]) -> click.Context:
    """Parse ``args`` down to the last subcommand, as click does before running anything."""
    from tlbench.cli import cli

    ctx = cli.make_context("tlbench", args)
    while isinstance(ctx.command, click.Group):
        with warnings.catch_warnings():  # click 8.2 deprecates protected_args; 9 merges them
            warnings.simplefilter("ignore", DeprecationWarning)
            remaining = [*ctx.protected_args, *ctx.args]
        name, command, rest = ctx.command.resolve_command(ctx, remaining)
        ctx = command.make_context(name, rest, parent=ctx)
    return ctx


def test_the_readme_shows_commands():
    assert len(readme_commands()) >= 10


@pytest.mark.parametrize("line", readme_commands())
def test_every_readme_command_parses(line):
    try:
        parse(shlex.split(line)[1:])
    except click.UsageError as exc:
        pytest.fail(f"README: {line!r}: {exc.format_message()}")


def test_a_wrong_command_fails_to_parse():
    with pytest.raises(click.UsageError, match="unexpected extra argument"):
        parse(["show", "strategy", "linear-probe"])
