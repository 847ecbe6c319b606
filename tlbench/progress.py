"""Rich progress for ``tlbench run``: one bar for the grid, one line for the cells in flight
(several with a parallel executor)."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)


class RunProgress:
    def __init__(self, console: Console):
        self.console = console
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}", markup=False),  # ids like surgical[block=first]
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self.grid: TaskID | None = None
        self.current: TaskID | None = None
        self.running: dict[tuple, str] = {}
        self._note = ""

    def start(self, total: int, done: int = 0) -> None:
        self.progress.start()
        self.grid = self.progress.add_task("cells", total=total, completed=done)
        self.current = self.progress.add_task("", total=None)

    def cell_started(self, cell) -> None:
        self.running[cell.key] = cell.label
        self._note = ""
        self._show()

    def status(self, message: str) -> None:
        """A note from the cell in flight (only cells running in this process send them)."""
        self._note = message
        self._show()

    def _show(self) -> None:
        if self.current is None:
            return
        labels = list(self.running.values())
        text = (
            "; ".join(labels)
            if len(labels) < 2
            else f"{len(labels)} in flight: " + "; ".join(labels)
        )
        self.progress.update(
            self.current, description=f"{text}: {self._note}" if self._note else text
        )

    def cell_finished(self, cell, record: dict) -> None:
        label = self.running.pop(cell.key, cell.label)
        top1 = (record.get("metrics") or {}).get("top1")
        outcome = f"{top1:.2f}%" if isinstance(top1, (int, float)) else record["status"]
        style = "green" if record["status"] == "ok" else "red"
        wall = (record.get("cost") or {}).get("wall_s", 0) or 0
        self.progress.console.print(
            f"[{style}]{record['status']:>11}[/] {escape(label)}  {outcome}  ({wall:.1f}s)",
            highlight=False,
        )
        if self.grid is not None:
            self.progress.advance(self.grid)
        self._note = ""
        self._show()

    def stop(self) -> None:
        if self.current is not None:
            self.progress.remove_task(self.current)
            self.current = None
        self.progress.stop()
