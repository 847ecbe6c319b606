"""tlbench's messages go through the ``tlbench`` logger; the CLI shows them as plain lines."""

from __future__ import annotations

import logging
import warnings

import click
from click.testing import CliRunner

from tlbench import log
from tlbench.components import BuildContext
from tlbench.safeio import TlbenchWarning, warnings_as_lines


def _cli_showing(emit, quiet: bool = False):
    @click.command()
    def command():
        log.configure(quiet=quiet)
        emit()

    return CliRunner().invoke(command, [])


def test_the_cli_shows_library_messages_as_one_line_each_on_stderr():
    def emit():
        logging.getLogger("tlbench.runner").info("checking 4 cells")
        logging.getLogger("tlbench.runner").warning("cache full")
        logging.getLogger("tlbench.runner").error("cannot store records")
        logging.getLogger("tlbench.runner").warning("suite changed", extra={"prefix": "note: "})

    result = _cli_showing(emit)
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "checking 4 cells",
        "warning: cache full",
        "error: cannot store records",
        "note: suite changed",
    ]


def test_quiet_keeps_warnings_and_errors_only():
    def emit():
        logging.getLogger("tlbench.cell").info("epoch 1")
        logging.getLogger("tlbench.cell").warning("slow disk")

    assert _cli_showing(emit, quiet=True).stderr.splitlines() == ["warning: slow disk"]


def test_configuring_twice_shows_each_message_once():
    def emit():
        log.configure()
        logging.getLogger("tlbench").warning("once")

    assert _cli_showing(emit).stderr.splitlines() == ["warning: once"]


def test_tlbench_warnings_become_one_logged_line_each(caplog):
    with caplog.at_level(logging.WARNING, logger="tlbench"), warnings_as_lines():
        for _ in range(3):
            warnings.warn("cells.jsonl:2: garbled record; skipped", TlbenchWarning, stacklevel=1)
    assert [(r.name, r.getMessage()) for r in caplog.records] == [
        ("tlbench.warnings", "cells.jsonl:2: garbled record; skipped")
    ]


def test_a_components_status_goes_to_the_logger_not_stdout(caplog, capsys):
    context = BuildContext(cache=None, device="cpu")  # type: ignore[arg-type]
    with caplog.at_level(logging.INFO, logger="tlbench"):
        context.log("converting weights")
    assert capsys.readouterr().out == ""
    assert [(r.name, r.getMessage()) for r in caplog.records] == [
        ("tlbench.cell", "converting weights")
    ]
