"""The executor registry and ``ExecutorConfig`` (import-light: no torch, no backend)."""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from tlbench.errors import UserError

# The registry: name -> "module:attr". Its order is the order of the CLI's choices.
EXECUTORS: dict[str, str] = {
    "local": "tlbench.executors.local:LocalExecutor",
    "process": "tlbench.executors.process:ProcessExecutor",
    "ray": "tlbench.executors.ray:RayExecutor",
    "slurm": "tlbench.executors.slurm:SlurmExecutor",
}


def executor_names() -> tuple[str, ...]:
    return tuple(EXECUTORS)


def executor_class(kind: str) -> Any:
    """The class registered as ``kind`` (``UserError`` with a did-you-mean otherwise)."""
    if kind not in EXECUTORS:
        close = difflib.get_close_matches(kind, EXECUTORS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UserError(f"unknown executor {kind!r}{hint}; expected one of: {', '.join(EXECUTORS)}")
    module, _, attr = EXECUTORS[kind].partition(":")
    return getattr(importlib.import_module(module), attr)


def parse_option(text: str, flag: str = "--executor-opt") -> tuple[str, str]:
    """``KEY=VALUE`` from ``--executor-opt``; keys may use ``-`` or ``_``."""
    key, sep, value = text.partition("=")
    key = key.strip().replace("-", "_")
    if not sep or not key or not value:
        raise UserError(f"{flag} {text!r}: expected KEY=VALUE, e.g. {flag} partition=gpu")
    return key, value


@dataclass(frozen=True)
class ExecutorConfig:
    """What ``--executor``, ``--workers`` and ``--executor-opt KEY=VALUE`` ask for."""

    kind: str = "local"
    workers: int | None = None
    options: tuple[tuple[str, str], ...] = ()  # (key, value) pairs, in the order given

    @classmethod
    def from_cli(
        cls, kind: str, workers: int | None, options: Iterable[str] = ()
    ) -> ExecutorConfig:
        return cls(kind, workers, tuple(parse_option(text) for text in options))

    def with_options(self, pairs: Iterable[tuple[str, Any]]) -> ExecutorConfig:
        """A copy with more options (the documented aliases: ``--slurm-time 90`` and friends)."""
        added = tuple((key, str(value)) for key, value in pairs if value is not None)
        return ExecutorConfig(self.kind, self.workers, self.options + added)

    def check(self, device: str = "auto") -> None:
        """Refuse in one line, before anything loads: unknown executor, bad options, a backend
        that is not installed, a GPU question left open (``device`` is what ``--device`` says)."""
        cls = executor_class(self.kind)
        if self.workers is not None and self.workers < 1:
            raise UserError(f"--workers: expected an integer >= 1, got {self.workers}")
        cls.check(self, device)

    def parsed(self) -> Any:
        """The options as the executor's own typed object (``Executor.parse_options``)."""
        return executor_class(self.kind).parse_options(self)

    def describe(self) -> dict:
        """What env.json records about the executor."""
        return {"kind": self.kind, "workers": self.workers, "options": dict(self.options)}


def make_executor(config: ExecutorConfig, base, runner, requested_device: str) -> Any:
    """The executor ``config`` names, ready to ``run``. ``runner`` is the run's own ``CellRunner``
    (the local executor runs cells on it; workers build theirs)."""
    config.check(requested_device)
    return executor_class(config.kind).create(config, base, runner, requested_device)
