"""The run's progress line: cell ids are shown as written, never read as rich markup."""

from __future__ import annotations

import io
from types import SimpleNamespace

from rich.console import Console

from tlbench.progress import RunProgress


def _console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=200, force_terminal=False, color_system=None), out


def test_finished_cells_show_ids_with_brackets_as_written():
    console, out = _console()
    progress = RunProgress(console)
    cell = SimpleNamespace(key=("a",), label="surgical[block=first] tiny-digits seed 0")
    progress.start(total=1)
    progress.cell_started(cell)
    progress.cell_finished(cell, {"status": "ok", "metrics": {"top1": 91.5}, "cost": {}})
    progress.stop()
    assert "surgical[block=first] tiny-digits seed 0  91.50%" in out.getvalue()


def test_the_in_flight_line_shows_ids_with_brackets_as_written():
    console, out = _console()
    progress = RunProgress(console)
    progress.start(total=2)
    progress.cell_started(SimpleNamespace(key=("a",), label="surgical[block=first]"))
    progress.status("[bold]epoch 1[/bold]")
    console.print(progress.progress.get_renderable())
    progress.stop()
    assert "surgical[block=first]: [bold]epoch 1[/bold]" in out.getvalue()
