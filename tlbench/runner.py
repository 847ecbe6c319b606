"""A run, end to end: ``run_suite`` is the Python API behind ``tlbench run``.

It validates the suite, plans the cells (``tlbench.planning``), checks every pending cell before
any training, hands the cells to an executor (``tlbench.executors``) and stores each record, with
its per-example predictions, as soon as it arrives. How one cell runs is ``tlbench.cell``'s job.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import shutil
import signal
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from tlbench.cache import Cache
from tlbench.cell import CellResult, CellRunner
from tlbench.components import Cell
from tlbench.errors import UserError
from tlbench.executors import Sink, WorkerConfig, dispatch, make_executor
from tlbench.planning import (
    Plan,
    RunRequest,
    Selection,
    choose_run_dir,
    make_plan,
    pending_cells,
    plan_cells,
)
from tlbench.plugins import PluginHost
from tlbench.results import (
    ResultsStore,
    environment,
    lock_run_dir,
    prepare_run_dir,
    write_environment,
)
from tlbench.suite import Suite, config_hash, find_suite, load_suite

__all__ = ["RunOutcome", "RunRequest", "Selection", "plan_run", "run_suite"]


@dataclass
class RunOutcome:
    run_dir: Path
    records: list[dict]
    ran: int = 0
    skipped: int = 0
    interrupted: bool = False

    @property
    def failed(self) -> list[dict]:
        return [r for r in self.records if r.get("status") in ("failed", "diverged", "interrupted")]

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 130
        return 1 if any(r.get("status") == "failed" for r in self.records) else 0


def open_suite(suite: str | Path | Suite, host: PluginHost) -> Suite:
    if isinstance(suite, Suite):
        return suite
    return load_suite(find_suite(str(suite)), host.registry)


def check_suite_against_run(run_dir: Path, suite: Suite) -> None:
    env_path = run_dir / "env.json"
    if not env_path.exists():
        return
    try:
        previous = json.loads(env_path.read_text())
    except json.JSONDecodeError:
        return
    first = previous.get("suite_name")
    if first and first != suite.name:
        raise UserError(
            f"run directory {str(run_dir)!r} holds suite {first!r}, not {suite.name!r}; choose another --out"
        )


def preflight(suite: Suite, host: PluginHost) -> None:
    """Everything that can be known to fail before any work: unmet plugin requirements and
    components that cannot run here (missing weights package, missing dataset files)."""
    problems = []
    if suite.requires:
        from tlbench.plugins import check_requirements

        problems += [
            f"{suite.path}: requires: {msg}" for msg in check_requirements(list(suite.requires))
        ]
    for kind in ("model", "dataset"):
        for entry in suite.entries(kind):
            registered, argument = host.registry.lookup(kind, entry.ref)
            available = registered.spec.availability(argument, entry.options)
            if available is not True:
                problems.append(
                    f"{suite.path}: {entry.field}: {kind} {entry.ref!r} is not available: {available}"
                )
    if problems:
        raise UserError("\n".join(problems))


def check_cells(cells: Iterable[Cell], runner: CellRunner) -> None:
    """Let each strategy reject what it cannot do with its cell's model and data (k larger than
    the model's layer groups, a LoRA target that matches nothing, ...) before any training.
    The contexts built here are the ones the cells then run on (the runner keeps them)."""
    problems = []
    for cell in cells:
        check = getattr(runner.strategy(cell), "check", None)
        if check is None:
            continue
        try:
            check(runner.context(cell))
        except UserError as exc:
            problems.append(str(exc))
    if problems:
        raise UserError("\n".join(dict.fromkeys(problems)))


def final_records(cells: Iterable[Cell], store: ResultsStore) -> list[dict]:
    latest = store.latest_by_hash()
    return [latest[h] for h in (config_hash(c) for c in cells) if h in latest]


def plan_run(request: RunRequest, host: PluginHost | None = None) -> Plan:
    """The dry run: what ``run_suite`` would do, without creating or loading anything."""
    host = host or request.plugins.load()
    request.executor.check()
    suite = open_suite(request.suite, host)
    preflight(suite, host)
    return make_plan(request, host, suite)


def run_suite(request: RunRequest, host: PluginHost | None = None, progress=None) -> RunOutcome:
    """Validate, plan, run every pending cell and store each record as soon as it finishes."""
    from tlbench.engine.runtime import resolve_device

    host = host or request.plugins.load()
    request.executor.check()
    suite = open_suite(request.suite, host)
    preflight(suite, host)
    cells = plan_cells(suite, request.selection)
    device = str(resolve_device(request.device))
    run_dir = prepare_run_dir(choose_run_dir(request, suite))
    with lock_run_dir(run_dir):
        check_suite_against_run(run_dir, suite)
        store = ResultsStore(run_dir)
        store.check_schema()
        _record_environment(run_dir, request, host, suite, device)
        todo, skipped = pending_cells(cells, store, request.retry_failed)
        status = progress.status if progress else lambda _m: None
        cache = Cache(request.cache_dir)
        runner = CellRunner(host, cache, device, run_dir, log=status)
        if progress:
            progress.console.print(f"checking {len(todo)} cells before any training")
        check_cells(todo, runner)
        outcome = RunOutcome(run_dir=run_dir, records=[], skipped=skipped)
        with RunLog(run_dir) as log, Interrupts(log.interrupt_requested) as interrupts:
            if suite.estimators:
                _estimate(suite, request, runner, run_dir, progress, log)
            base = WorkerConfig(request.plugins, str(cache.root), device, str(run_dir), "local")
            executor = make_executor(request.executor, base, runner, request.device)
            log.write(
                f"executor {executor.name}: {len(todo)} cells to run, {skipped} already recorded"
            )
            recorder = _Recorder(store, host, log, progress, outcome, interrupts)
            if progress:
                progress.start(total=len(cells), done=skipped)
            try:
                completed = dispatch(executor, todo, recorder)
            finally:
                if progress:
                    progress.stop()
            outcome.interrupted = interrupts.requested or not completed
            if outcome.interrupted:
                log.write(
                    f"run interrupted: {outcome.ran} cells finished, {len(todo) - outcome.ran} not run; resume with --resume {run_dir}"
                )
    outcome.records = final_records(cells, store)
    return outcome


def _estimate(suite, request, runner, run_dir, progress, log) -> None:
    """Transferability estimates run before the cells, on a cold feature cache, so their
    recorded feature-extraction time is what an estimator really costs."""
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


def _record_environment(
    run_dir: Path, request: RunRequest, host: PluginHost, suite: Suite, device: str
) -> None:
    env = environment(
        host.plugin_rows(),
        suite.text,
        str(suite.path),
        list(request.argv) if request.argv else None,
    )
    env["suite_name"] = suite.name
    env["device"] = device
    env["executor"] = {
        "kind": request.executor.kind,
        "workers": request.executor.workers,
        "ray_address": request.executor.ray_address,
    }
    write_environment(run_dir, env)
    if not (run_dir / "suite.toml").exists() and suite.path.exists():
        shutil.copyfile(suite.path, run_dir / "suite.toml")


class _Recorder(Sink):
    """The parent's side of a run: every record is durably stored before anyone hears of it."""

    def __init__(
        self,
        store: ResultsStore,
        host: PluginHost,
        log: RunLog,
        progress,
        outcome: RunOutcome,
        interrupts: Interrupts,
    ):
        self.store, self.host, self.log, self.progress = store, host, log, progress
        self.outcome, self.interrupts = outcome, interrupts

    def started(self, cell: Cell) -> None:
        self.log.write(f"start {cell.label}")
        if self.progress:
            self.progress.cell_started(cell)

    def finished(self, cell: Cell, result: CellResult) -> None:
        record = result.record
        record.setdefault("run_id", self.store.run_dir.name)
        if result.predictions is not None:
            self._store_predictions(record, result.predictions)
        self.store.append(record)
        _notify(self.host, record)
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

    def _store_predictions(self, record: dict, predictions) -> None:
        from tlbench.predictions import write_predictions

        try:
            record["predictions"] = write_predictions(
                self.store.run_dir, record["config_hash"], predictions
            )
        except OSError as exc:  # the record itself is worth more than its predictions
            record["predictions_error"] = f"not stored: {exc.strerror or exc}"

    def stop_requested(self) -> bool:
        return self.interrupts.requested


def _notify(host: PluginHost, record: dict) -> None:
    try:
        host.manager.hook.on_cell_finished(record=record)
    except Exception as exc:  # an observer never breaks a run
        host.errors.append(f"on_cell_finished observer failed: {type(exc).__name__}: {exc}")


class Interrupts:
    """Ctrl-C, politely: the first finishes the cells in flight and starts no more; the second
    stops at once (``KeyboardInterrupt``), and the cells in flight are recorded ``interrupted``.

    Only the main thread can own signal handlers; elsewhere Ctrl-C keeps Python's default."""

    def __init__(self, on_first: Callable[[], None] = lambda: None):
        self.on_first = on_first
        self.requested = False
        self.previous = None

    def __enter__(self) -> Interrupts:
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.on_first()

    def __exit__(self, *exc) -> bool:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
        return False


class _IsoFormatter(logging.Formatter):
    def formatTime(self, record, datefmt=None):  # noqa: N802 (logging's name)
        moment = _dt.datetime.fromtimestamp(record.created, _dt.UTC)
        return moment.isoformat(timespec="seconds")


class RunLog:
    """``run.log``: one timestamped line per event of the run, appended across resumes."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / "run.log"
        self.logger = logging.getLogger(f"tlbench.run.{os.getpid()}.{id(self)}")
        self.logger.propagate = False
        self.logger.setLevel(logging.INFO)

    def __enter__(self) -> RunLog:
        self.handler = logging.FileHandler(self.path, mode="a", encoding="utf-8")
        self.handler.setFormatter(_IsoFormatter("%(asctime)s %(message)s"))
        self.logger.addHandler(self.handler)
        self.write(f"run started pid={os.getpid()}")
        return self

    def write(self, message: str) -> None:
        self.logger.info(message)

    def interrupt_requested(self) -> None:
        message = "interrupt: finishing the cells in flight, starting no more (Ctrl-C again stops at once)"
        self.write(message)
        print(message, file=sys.stderr, flush=True)

    def __exit__(self, *exc) -> bool:
        self.write("run stopped" if exc[0] is None else f"run stopped: {exc[0].__name__}")
        self.logger.removeHandler(self.handler)
        self.handler.close()
        return False
