"""``--executor local``: one slot in this process, on the run's own ``CellRunner``."""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import replace
from typing import TYPE_CHECKING

from tlbench.errors import UserError
from tlbench.executors.base import Slot, SlotExecutor, WorkerConfig, run_with

if TYPE_CHECKING:  # pragma: no cover
    from tlbench.cell import CellRunner
    from tlbench.components import Cell
    from tlbench.executors.registry import ExecutorConfig


class LocalSlot(Slot):
    def __init__(self, runner, config: WorkerConfig):
        self.runner, self.config = runner, config

    def submit(self, cell: Cell) -> Future:
        # Runs right here: a second Ctrl-C raises KeyboardInterrupt out of this call.
        future: Future = Future()
        future.set_result(run_with(self.runner, self.config, cell))
        return future


class LocalExecutor(SlotExecutor):
    name = "local"

    @classmethod
    def check(cls, config: ExecutorConfig, device: str = "auto") -> None:
        super().check(config, device)
        if config.workers not in (None, 1):
            raise UserError("--workers needs --executor process or --executor ray")

    @classmethod
    def create(cls, config, base, runner, requested_device) -> LocalExecutor:
        return cls(base, runner)

    def __init__(self, base: WorkerConfig, runner: CellRunner):
        self.base, self.runner = replace(base, executor="local"), runner

    def start(self, groups: int) -> list[Slot]:
        self.slots = [LocalSlot(self.runner, self.base)]
        return self.slots

    def describe(self) -> dict:
        return {"kind": self.name, "workers": 1, "device": self.base.device}
