"""A run, end to end: ``run_suite`` is the Python API behind ``tlbench run``.

It validates the suite, plans the cells (``tlbench.planning``), checks every pending cell before
any training, hands the cells to an executor (``tlbench.executors``) and stores each record, with
its per-example predictions, as soon as it arrives. How one cell runs is ``tlbench.cell``'s job.

Faults of the machine stop a run cleanly: a record that cannot be stored (a full disk, a
read-only or replaced ``cells.jsonl``) is kept, no new cell starts, the cells in flight finish,
and the run ends with one line naming the file and the cause, where the unstored records are,
and the command that resumes it. SIGINT and SIGTERM are handled alike (``Interrupts``).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tlbench.cell import CellResult, CellRunner, StopRun
from tlbench.components import Cell
from tlbench.errors import TlbenchError
from tlbench.executors.base import Batch, Sink
from tlbench.planning import (
    Plan,
    RunRequest,
    Selection,
    final_records,
    make_plan,
    pending_cells,
    prepare,
)
from tlbench.plugins import PluginHost
from tlbench.rundir import PREDICTIONS, ResultsStore, RunLog
from tlbench.safeio import describe, open_nofollow, warnings_as_lines

__all__ = ["RunOutcome", "RunRequest", "Selection", "plan_run", "run_suite"]

logger = logging.getLogger(__name__)


@dataclass
class RunOutcome:
    run_dir: Path
    records: list[dict]
    ran: int = 0
    skipped: int = 0
    interrupted: bool = False
    signal: str | None = None  # "SIGINT" or "SIGTERM": what interrupted the run
    interrupted_cells: int = 0  # recorded ``interrupted`` (stopped at once), not counted in ran
    failed_estimates: list[dict] = field(default_factory=list)  # this session's, to show

    @property
    def failed(self) -> list[dict]:
        return [r for r in self.records if r.get("status") in ("failed", "diverged", "interrupted")]

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 143 if self.signal == "SIGTERM" else 130
        failed = any(r.get("status") == "failed" for r in self.records)
        return 1 if failed or self.failed_estimates else 0


def plan_run(request: RunRequest, host: PluginHost | None = None) -> Plan:
    """The dry run: what ``run_suite`` would do, without creating or loading anything."""
    host = host or request.plugins.load()
    suite, cells, run_dir = prepare(request, host)
    return make_plan(request, host, suite, cells, run_dir)


def run_suite(request: RunRequest, host: PluginHost | None = None, progress=None) -> RunOutcome:
    """Validate, plan, run every pending cell and store each record as soon as it finishes."""
    host = host or request.plugins.load()
    suite, cells, run_dir = prepare(request, host)
    # torch loads only now: a suite that does not validate is answered without it.
    status = progress.status if progress else lambda _m: None
    models = {entry.ref for entry in suite.models} if request.refresh else ()
    runner = CellRunner.start(
        host, request.cache_dir, request.device, run_dir.path, refresh=models, log=status
    )
    recorded = {
        "device": runner.device,
        "executor": request.executor.describe(),
        "runtime": runner.runtime,
    }
    argv = list(request.argv) if request.argv else None
    with (
        warnings_as_lines(),
        run_dir.session(suite, plugins=host.plugin_rows(), argv=argv, recorded=recorded) as log,
    ):
        store = run_dir.cells
        _notify_run(host, "on_run_started", run_dir=run_dir.path, suite=suite.name)
        todo, skipped = pending_cells(cells, store, request.retry_failed)
        outcome = RunOutcome(run_dir=run_dir.path, records=[], skipped=skipped)
        with Interrupts(log.interrupt_requested) as interrupts:
            try:
                if progress:
                    progress.console.print(f"checking {len(todo)} cells before any training")
                batch = Batch.prepare(
                    request.executor, request.plugins, todo, runner, request.device
                )
                if suite.estimators:
                    outcome.failed_estimates = _estimate(
                        suite, request, runner, run_dir, progress, log
                    )
            except KeyboardInterrupt:
                _stopped_before_cells(outcome, interrupts, log)
                outcome.records = final_records(cells, store)
                _run_finished(host, outcome)
                return outcome
            interrupts.cells_started()
            log.write(
                f"executor {batch.name}: {len(todo)} cells to run, {skipped} already recorded"
            )
            resume = f"tlbench run {suite.path} --resume {run_dir.path}"
            recorder = _Recorder(store, host, log, progress, outcome, interrupts, resume)
            if progress:
                progress.start(total=len(cells), done=skipped)
            try:
                completed = batch.run(recorder)
            finally:
                if progress:
                    progress.stop()
            recorder.settle(len(todo))  # raises when records could not be stored
            outcome.interrupted = interrupts.requested or not completed
            outcome.signal = interrupts.signal_name or ("SIGINT" if outcome.interrupted else None)
            if outcome.interrupted:
                not_run = len(todo) - outcome.ran - outcome.interrupted_cells
                log.write(
                    f"run interrupted by {outcome.signal}: {outcome.ran} cells finished, {outcome.interrupted_cells} recorded interrupted, {not_run} not run; resume with --resume {run_dir.path}"
                )
    outcome.records = final_records(cells, store)
    _run_finished(host, outcome)
    return outcome


def _stopped_before_cells(outcome: RunOutcome, interrupts: Interrupts, log: RunLog) -> None:
    """A signal while checking cells or scoring estimators: nothing is in flight, so the run
    stops at once; what was recorded stays."""
    outcome.interrupted = True
    outcome.signal = interrupts.signal_name or "SIGINT"
    log.write(
        f"run interrupted by {outcome.signal} before any cell ran; resume with --resume {outcome.run_dir}"
    )


def _estimate(suite, request, runner, run_dir, progress, log) -> list[dict]:
    """Transferability estimates run before the cells, on a cold feature cache, so their
    recorded feature-extraction time is what an estimator really costs. Returns the failed
    estimates, each shown as one line now (and again after the run's table)."""
    from tlbench.transferability import run_estimators

    if progress:
        progress.console.print(
            f"scoring transferability: {', '.join(e.id for e in suite.estimators)}"
        )
    records = run_estimators(
        suite, runner, run_dir, selection=request.selection, retry_failed=request.retry_failed
    )
    failed = [r for r in records if r.get("status") == "failed"]
    log.write(f"estimates: {len(records)} recorded, {len(failed)} failed")
    for record in failed:
        message = (record.get("error") or {}).get("message", "failed")
        log.write(f"estimate failed: {message}")
        if progress:
            progress.console.print(f"estimate failed: {message}", style="red", markup=False)
    return failed


class _Recorder(Sink):
    """The parent's side of a run: every record is durably stored before anyone hears of it.

    A record that cannot be stored is kept in memory, and no new cell starts; ``settle`` tries
    the kept records once more, saves what still fails outside the run directory, and stops the
    run with one line per fact and the resume command."""

    def __init__(
        self,
        store: ResultsStore,
        host: PluginHost,
        log: RunLog,
        progress,
        outcome: RunOutcome,
        interrupts: Interrupts,
        resume_command: str,
    ):
        self.store, self.host, self.log, self.progress = store, host, log, progress
        self.outcome, self.interrupts = outcome, interrupts
        self.resume_command = resume_command
        self.fault: TlbenchError | None = None
        self.unstored: list[dict] = []

    def started(self, cell: Cell) -> None:
        self.log.write(f"start {cell.label}")
        if self.progress:
            self.progress.cell_started(cell)

    def finished(self, cell: Cell, result: CellResult) -> None:
        record = result.record
        record.setdefault("run_id", self.store.run_dir.name)
        if result.predictions is not None:
            self._store_predictions(record, result.predictions)
        if self._append(record):
            seen = len(self.host.observer_failures)
            _notify(self.host, record)
            for failure in self.host.observer_failures[seen:]:
                self.log.write(
                    f"observer {failure.plugin} failed on {cell.label}:\n{failure.traceback.rstrip()}"
                )
        if record["status"] == "interrupted":
            self.outcome.interrupted_cells += 1
        else:
            self.outcome.ran += 1
        self.log.write(
            f"end {cell.label}: {record['status']} {record.get('metrics', {}).get('top1', '')}"
        )
        if record["status"] == "failed":
            error = record.get("error") or {}
            trace = error.get("traceback") or error.get("message", "")
            self.log.write(f"traceback of {cell.label}:\n{trace.rstrip()}")
        if self.progress:
            self.progress.cell_finished(cell, record)

    def _append(self, record: dict) -> bool:
        if self.fault is None:
            try:
                self.store.append(record)
                return True
            except TlbenchError as exc:
                self.fault = exc
                message = (
                    f"cannot store records: {exc}; finishing the cells in flight, starting no more"
                )
                self.log.write(message)
                logger.error(message)
        self.unstored.append(record)
        return False

    def settle(self, todo: int) -> None:
        """After the cells: store the kept records if the disk allows it now, else save them
        where it does, and stop the run with the fault (its exit code: 3 for the machine)."""
        if self.fault is None:
            return
        kept = []
        for record in self.unstored:
            try:
                self.store.append(record)
                _notify(self.host, record)
            except TlbenchError:
                kept.append(record)
        not_run = todo - self.outcome.ran - self.outcome.interrupted_cells
        lines = [str(self.fault)]
        if kept:
            lines.append(self._rescue(kept))
        lines.append(f"the run stopped: {self.outcome.ran} cells finished, {not_run} not run")
        lines.append(f"resume with: {self.resume_command}")
        self.log.write("run stopped: " + "; ".join(lines))
        raise type(self.fault)("\n".join(lines))

    def _rescue(self, records: list[dict]) -> str:
        """Write records that could not be stored to a new file in the temporary directory."""
        name = f"tlbench-unstored-{self.store.run_dir.name}-{os.getpid()}.jsonl"
        path = Path(tempfile.gettempdir()) / name
        data = "".join(json.dumps(r, sort_keys=True, default=str) + "\n" for r in records)
        count = f"{len(records)} finished record{'s' if len(records) > 1 else ''}"
        try:
            fd = open_nofollow(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600, action="write")
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        except (OSError, TlbenchError) as exc:
            return (
                f"{count} could not be stored anywhere ({describe(exc)}); resuming runs them again"
            )
        return f"{count} could not be stored; kept in {path}: once there is room, append it with: cat {path} >> {self.store.path}"

    def _store_predictions(self, record: dict, predictions) -> None:
        from tlbench.predictions import write_predictions

        if os.path.islink(self.store.run_dir / PREDICTIONS):
            record["predictions_error"] = (
                f"not stored: {PREDICTIONS}/ is a symbolic link, which tlbench never follows"
            )
            return
        try:
            record["predictions"] = write_predictions(
                self.store.run_dir, record["config_hash"], predictions
            )
        except OSError as exc:  # the record itself is worth more than its predictions
            record["predictions_error"] = f"not stored: {exc.strerror or exc}"

    def stop_requested(self) -> bool:
        return self.interrupts.requested or self.fault is not None


def _notify(host: PluginHost, record: dict) -> None:
    """Call every ``on_cell_finished`` observer, each on its own: pluggy stops a hook call at
    the first exception, and one broken observer must not silence the others. What an observer
    raises is kept on the host (``observer_failures``) for the end of the run."""
    for name, caller in host.hook_callers("on_cell_finished"):
        try:
            caller(record=record)
        except Exception as exc:  # an observer never breaks a run
            host.observer_failed(name, record, exc)


def _notify_run(host: PluginHost, hook: str, **kwargs) -> None:
    """Call every observer of a run-level hook (``on_run_started``, ``on_run_finished``) on its
    own, as ``_notify`` does for records."""
    for name, caller in host.hook_callers(hook):
        try:
            caller(**kwargs)
        except Exception as exc:  # an observer never breaks a run
            host.observer_failed(name, {}, exc, hook)


def _run_finished(host: PluginHost, outcome: RunOutcome) -> None:
    _notify_run(
        host,
        "on_run_finished",
        run_dir=outcome.run_dir,
        records=outcome.records,
        interrupted=outcome.interrupted,
    )


class Interrupts:
    """Ctrl-C and SIGTERM, politely. Until the cells start (checking them, scoring estimators)
    nothing is in flight, so a signal stops at once (``KeyboardInterrupt``). Once they run, the
    first signal finishes the cells in flight and starts no more; a second stops at once
    (``KeyboardInterrupt``), and the cells in flight are recorded ``interrupted``.

    SIGTERM (``kill``, a batch scheduler, ``docker stop``) counts like Ctrl-C; ``signal_name``
    says which came first, so the exit code can tell (130 or 143). Only the main thread can own
    signal handlers; elsewhere both signals keep Python's defaults."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, on_first: Callable[[str], None] = lambda _name: None):
        self.on_first = on_first
        self.signal_name: str | None = None
        self.immediate = True
        self.previous: dict = {}

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def cells_started(self) -> None:
        """From now on the first signal lets the cells in flight finish."""
        self.immediate = False

    def __enter__(self) -> Interrupts:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        first = self.signal_name is None
        if first:
            self.signal_name = signal.Signals(signum).name
        if not first or self.immediate:
            raise StopRun  # a KeyboardInterrupt the cells let through (plugin code's do not)
        self.on_first(self.signal_name)

    def __exit__(self, *exc) -> bool:
        for signum, previous in self.previous.items():
            signal.signal(signum, previous)
        return False
