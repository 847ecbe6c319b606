"""Where a cell runs: load its source model and target data, prepare the data for the model,
let the strategy fit and evaluate, and turn the outcome (or the failure) into a record.

``run_suite`` is the Python API behind ``tlbench run``: it plans (``tlbench.planning``), hands
the pending cells to an executor (``tlbench.executors``) and writes each record as it arrives.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tlbench import __version__
from tlbench.cache import Cache, stable_hash
from tlbench.components import BuildContext, Cell, CellContext
from tlbench.errors import Diverged, UserError
from tlbench.executors import ExecutorConfig, Sink, WorkerConfig, dispatch, make_executor
from tlbench.planning import Selection, choose_run_dir, pending_cells, plan_cells
from tlbench.plugins import PluginHost, load_plugins
from tlbench.results import (
    ResultsStore,
    environment,
    lock_run_dir,
    now_iso,
    prepare_run_dir,
    write_environment,
)
from tlbench.suite import Suite, config_hash, find_suite, load_suite

__all__ = [
    "CellRunner",
    "PluginConfig",
    "RunOutcome",
    "RunRequest",
    "Selection",
    "choose_run_dir",
    "pending_cells",
    "plan_cells",
    "run_suite",
]


def resolve_device(requested: str = "auto") -> str:
    import torch

    if requested != "auto":
        if requested.startswith("cuda") and not torch.cuda.is_available():
            raise UserError(f"device {requested!r} requested but CUDA is not available here")
        return requested
    if torch.cuda.is_available():
        return "cuda"
    return "cpu"


@dataclass(frozen=True)
class PluginConfig:
    """How to rebuild the same plugin host in another process (a worker of a parallel executor)."""

    modules: tuple[str, ...] = ()
    plugins_dir: str | None = None

    def load(self) -> PluginHost:
        return load_plugins(self.modules, self.plugins_dir)


def _key(*parts) -> str:
    return stable_hash(parts)


class _Lru(OrderedDict):
    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def get_or_make(self, key, make: Callable):
        if key in self:
            self.move_to_end(key)
            return self[key]
        value = make()
        self[key] = value
        while len(self) > self.size:
            self.popitem(last=False)
        return value


class CellRunner:
    """Runs cells one after another in this process, keeping the source models, decoded datasets
    and prepared tensors that consecutive cells share in memory."""

    def __init__(
        self,
        host: PluginHost,
        cache: Cache,
        device: str,
        run_dir: Path | None = None,
        log: Callable[[str], None] = lambda _m: None,
    ):
        self.host = host
        self.registry = host.registry
        self.cache = cache
        self.device = device
        self.run_dir = run_dir
        self.log = log
        self._models = _Lru(2)
        self._targets = _Lru(3)
        self._prepared = _Lru(1)

    def build_context(self, seed: int) -> BuildContext:
        return BuildContext(
            cache=self.cache, device=self.device, registry=self.registry, seed=seed, log=self.log
        )

    def source_model(self, cell: Cell):
        entry, argument = self.registry.lookup("model", cell.model_ref)
        key = _key(cell.model_ref, dict(cell.model_options), cell.seed)
        factory = entry.spec.load_factory()
        return self._models.get_or_make(
            key, lambda: factory(argument, dict(cell.model_options), self.build_context(cell.seed))
        )

    def target_data(self, cell: Cell):
        entry, argument = self.registry.lookup("dataset", cell.dataset_ref)
        key = _key(cell.dataset_ref, dict(cell.dataset_options))
        factory = entry.spec.load_factory()
        return self._targets.get_or_make(
            key,
            lambda: factory(argument, dict(cell.dataset_options), self.build_context(cell.seed)),
        )

    def prepared_data(self, cell: Cell, target, source):
        from tlbench.data import prepare

        key = _key(
            cell.dataset_ref,
            dict(cell.dataset_options),
            source.fingerprint,
            dict(cell.model_options),
            cell.seed,
        )
        return self._prepared.get_or_make(
            key,
            lambda: prepare(
                target,
                source,
                dict(cell.dataset_options),
                dict(cell.model_options),
                cell.seed,
                self.cache,
            ),
        )

    def strategy(self, cell: Cell):
        entry, _ = self.registry.lookup("strategy", cell.strategy_ref)
        return entry.spec.load_factory()(dict(cell.strategy_options))

    def context(self, cell: Cell) -> CellContext:
        import torch

        source = self.source_model(cell)
        target = self.target_data(cell)
        data = self.prepared_data(cell, target, source)
        return CellContext(
            cell=cell,
            source=source,
            data=data,
            device=torch.device(self.device),
            cache=self.cache,
            seed=cell.seed,
            log=self.log,
            run_dir=self.run_dir,
        )

    def run(self, cell: Cell) -> dict:
        record = base_record(cell)
        started = time.perf_counter()
        ctx = None
        try:
            ctx = self.context(cell)
            _seed_everything(cell.seed)
            result = self.strategy(cell).run(ctx)
            record.update(
                status=result.status,
                metrics=result.metrics,
                hparams=result.hparams,
                cost=dict(result.cost),
            )
            if result.detail:
                record["detail"] = result.detail
        except Diverged as exc:
            record.update(
                status="diverged", error={"type": "Diverged", "message": str(exc), "step": exc.step}
            )
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # one broken cell never stops the run
            record.update(
                status="failed",
                error={
                    "type": type(exc).__name__,
                    "message": str(exc),
                    "traceback": traceback.format_exc(),
                },
            )
        _finish_record(record, ctx, started, self.device)
        return record


def _seed_everything(seed: int) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def base_record(cell: Cell) -> dict:
    from tlbench.results import SCHEMA_VERSION

    return {
        "schema": SCHEMA_VERSION,
        "suite": cell.suite,
        "config_hash": config_hash(cell),
        "model": cell.model,
        "dataset": cell.dataset,
        "strategy": cell.strategy,
        "seed": cell.seed,
        "model_ref": cell.model_ref,
        "dataset_ref": cell.dataset_ref,
        "strategy_ref": cell.strategy_ref,
        "options": {
            "model": dict(cell.model_options),
            "dataset": dict(cell.dataset_options),
            "strategy": dict(cell.strategy_options),
        },
        "status": "running",
        "metrics": {},
        "hparams": {},
        "cost": {},
        "error": None,
        "started_at": now_iso(),
        "tlbench_version": __version__,
    }


def _finish_record(record: dict, ctx: CellContext | None, started: float, device: str) -> None:
    record["finished_at"] = now_iso()
    cost = record.setdefault("cost", {})
    cost["wall_s"] = round(time.perf_counter() - started, 3)
    cost.setdefault("device", device)
    cost.setdefault("peak_mem_mb", _peak_rss_mb())
    if ctx is not None:
        record["model_card"] = dict(ctx.source.card)
        record["dataset_card"] = dict(getattr(ctx.data, "card", {}) or {})
        record["split"] = dict(getattr(ctx.data, "split_record", {}) or {})


def _peak_rss_mb() -> float:
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


# ---------------------------------------------------------------------------------------------
# Suites


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


@dataclass
class RunRequest:
    suite: str | Path | Suite
    out_dir: Path | None = None
    resume: Path | str | None = None
    retry_failed: bool = False
    device: str = "auto"
    cache_dir: Path | None = None
    selection: Selection = field(default_factory=Selection)
    plugins: PluginConfig = field(default_factory=PluginConfig)
    results_root: Path = Path("results")
    argv: Sequence[str] | None = None
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)


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
        from tlbench import plugins as plugin_host

        problems += [
            f"{suite.path}: requires: {msg}"
            for msg in plugin_host.check_requirements(list(suite.requires))
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
    Building the contexts loads the models and prepares the data the cells need anyway."""
    problems = []
    for cell in cells:
        strategy = runner.strategy(cell)
        check = getattr(strategy, "check", None)
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


def plan_run(request: RunRequest, host: PluginHost | None = None):
    """The dry run: what ``run_suite`` would do, without creating or loading anything."""
    from tlbench.planning import make_plan

    host = host or request.plugins.load()
    request.executor.check()
    suite = open_suite(request.suite, host)
    preflight(suite, host)
    return make_plan(request, host, suite)


def run_suite(request: RunRequest, host: PluginHost | None = None, progress=None) -> RunOutcome:
    """Validate, plan, run every pending cell and store each record as soon as it finishes."""
    host = host or request.plugins.load()
    request.executor.check()
    suite = open_suite(request.suite, host)
    preflight(suite, host)
    cells = plan_cells(suite, request.selection)
    device = resolve_device(request.device)
    run_dir = prepare_run_dir(choose_run_dir(request, suite))
    with lock_run_dir(run_dir):
        check_suite_against_run(run_dir, suite)
        store = ResultsStore(run_dir)
        store.check_schema()
        _record_environment(run_dir, request, host, suite, device)
        todo, skipped = pending_cells(cells, store, request.retry_failed)
        if progress:
            progress.console.print(f"checking {len(todo)} cells before any training")
        check_cells(todo, CellRunner(host, Cache(request.cache_dir), device, run_dir))
        outcome = RunOutcome(run_dir=run_dir, records=[], skipped=skipped)
        with _RunLog(run_dir) as log, Interrupts(log.interrupt_requested) as interrupts:
            cache = Cache(request.cache_dir)
            if suite.estimators:
                _estimate(suite, request, host, cache, device, run_dir, progress, log)
            base = WorkerConfig(request.plugins, str(cache.root), device, str(run_dir), "local")
            executor = make_executor(
                request.executor,
                base,
                host,
                progress.status if progress else lambda _m: None,
                request.device,
            )
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


def _estimate(suite, request, host, cache, device, run_dir, progress, log) -> None:
    """Transferability estimates run before the cells, on a cold feature cache, so their
    recorded feature-extraction time is what an estimator really costs."""
    from tlbench.transferability import run_estimators

    if progress:
        progress.console.print(
            f"scoring transferability: {', '.join(e.id for e in suite.estimators)}"
        )
    runner = CellRunner(
        host, cache, device, run_dir, log=progress.status if progress else lambda _m: None
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
        log: _RunLog,
        progress,
        outcome: RunOutcome,
        interrupts: Interrupts,
    ):
        self.store, self.host, self.log, self.progress = store, host, log, progress
        self.outcome, self.interrupts = outcome, interrupts

    def started(self, cell: Cell) -> None:
        self.log.write(f"start {_label(cell)}")
        if self.progress:
            self.progress.cell_started(cell)

    def finished(self, cell: Cell, record: dict) -> None:
        record.setdefault("run_id", self.store.run_dir.name)
        self.store.append(record)
        _notify(self.host, record)
        self.outcome.ran += 1
        self.log.write(
            f"end {_label(cell)}: {record['status']} {record.get('metrics', {}).get('top1', '')}"
        )
        if record["status"] == "failed":
            trace = (record.get("error") or {}).get("traceback") or (record.get("error") or {}).get(
                "message", ""
            )
            self.log.write(f"traceback of {_label(cell)}:\n{trace.rstrip()}")
        if self.progress:
            self.progress.cell_finished(cell, record)

    def stop_requested(self) -> bool:
        return self.interrupts.requested


def _label(cell: Cell) -> str:
    return f"{cell.model} {cell.dataset} {cell.strategy} seed={cell.seed}"


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


class _RunLog:
    def __init__(self, run_dir: Path):
        self.path = run_dir / "run.log"

    def __enter__(self):
        self.fh = open(self.path, "a", buffering=1)
        self.write(f"run started pid={os.getpid()}")
        return self

    def write(self, message: str) -> None:
        self.fh.write(f"{now_iso()} {message}\n")

    def interrupt_requested(self) -> None:
        message = "interrupt: finishing the cells in flight, starting no more (Ctrl-C again stops at once)"
        self.write(message)
        print(message, file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        self.write("run stopped" if exc[0] is None else f"run stopped: {exc[0].__name__}")
        self.fh.close()
        return False
