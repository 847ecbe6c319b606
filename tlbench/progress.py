"""Rich progress for ``tlbench run``: one bar for the grid, one line for the cell in flight."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn


class RunProgress:
    def __init__(self, console: Console):
        self.console = console
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self.grid = None
        self.current = None

    def start(self, total: int, done: int = 0) -> None:
        self.progress.start()
        self.grid = self.progress.add_task("cells", total=total, completed=done)
        self.current = self.progress.add_task("", total=None)

    def cell_started(self, cell) -> None:
        self._label = f"{cell.model} · {cell.dataset} · {cell.strategy} · seed {cell.seed}"
        self.progress.update(self.current, description=self._label)

    def status(self, message: str) -> None:
        if self.current is not None:
            self.progress.update(self.current, description=f"{self._label}: {message}")

    def cell_finished(self, cell, record: dict) -> None:
        top1 = record.get("metrics", {}).get("top1")
        outcome = f"{top1:.2f}%" if isinstance(top1, (int, float)) else record["status"]
        style = "green" if record["status"] == "ok" else "red"
        self.progress.console.print(f"[{style}]{record['status']:>8}[/] {self._label}  {outcome}  ({record['cost'].get('wall_s', 0):.1f}s)")
        self.progress.advance(self.grid)

    def stop(self) -> None:
        if self.current is not None:
            self.progress.remove_task(self.current)
            self.current = None
        self.progress.stop()
