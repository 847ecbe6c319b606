"""Where a cell runs: load its source model and target data, prepare the data for the model,
let the strategy fit and evaluate, and turn the outcome (or the failure) into a record.

``run_suite`` is the Python API behind ``tlbench run``.
"""

from __future__ import annotations

import json
import os
import shutil
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
from tlbench.plugins import PluginHost, load_plugins
from tlbench.results import ResultsStore, environment, new_run_id, now_iso, prepare_run_dir, write_environment
from tlbench.suite import Suite, config_hash, expand_cells, find_suite, load_suite


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


@dataclass(frozen=True)
class Selection:
    """Run only part of the grid without editing the suite (empty = everything)."""

    models: tuple[str, ...] = ()
    datasets: tuple[str, ...] = ()
    strategies: tuple[str, ...] = ()
    seeds: tuple[int, ...] = ()

    def keeps(self, cell: Cell) -> bool:
        return (
            (not self.models or cell.model in self.models)
            and (not self.datasets or cell.dataset in self.datasets)
            and (not self.strategies or cell.strategy in self.strategies)
            and (not self.seeds or cell.seed in self.seeds)
        )


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

    def __init__(self, host: PluginHost, cache: Cache, device: str, run_dir: Path | None = None, log: Callable[[str], None] = lambda _m: None):
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
        return BuildContext(cache=self.cache, device=self.device, registry=self.registry, seed=seed, log=self.log)

    def source_model(self, cell: Cell):
        entry, argument = self.registry.lookup("model", cell.model_ref)
        key = _key(cell.model_ref, dict(cell.model_options), cell.seed)
        factory = entry.spec.load_factory()
        return self._models.get_or_make(key, lambda: factory(argument, dict(cell.model_options), self.build_context(cell.seed)))

    def target_data(self, cell: Cell):
        entry, argument = self.registry.lookup("dataset", cell.dataset_ref)
        key = _key(cell.dataset_ref, dict(cell.dataset_options))
        factory = entry.spec.load_factory()
        return self._targets.get_or_make(key, lambda: factory(argument, dict(cell.dataset_options), self.build_context(cell.seed)))

    def prepared_data(self, cell: Cell, target, source):
        from tlbench.data import prepare

        key = _key(cell.dataset_ref, dict(cell.dataset_options), source.fingerprint, dict(cell.model_options), cell.seed)
        return self._prepared.get_or_make(
            key, lambda: prepare(target, source, dict(cell.dataset_options), dict(cell.model_options), cell.seed, self.cache)
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
            cell=cell, source=source, data=data, device=torch.device(self.device), cache=self.cache, seed=cell.seed, log=self.log, run_dir=self.run_dir
        )

    def run(self, cell: Cell) -> dict:
        record = base_record(cell)
        started = time.perf_counter()
        ctx = None
        try:
            ctx = self.context(cell)
            _seed_everything(cell.seed)
            result = self.strategy(cell).run(ctx)
            record.update(status=result.status, metrics=result.metrics, hparams=result.hparams, cost=dict(result.cost))
            if result.detail:
                record["detail"] = result.detail
        except Diverged as exc:
            record.update(status="diverged", error={"type": "Diverged", "message": str(exc), "step": exc.step})
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # one broken cell never stops the run
            record.update(status="failed", error={"type": type(exc).__name__, "message": str(exc), "traceback": traceback.format_exc()})
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
        "options": {"model": dict(cell.model_options), "dataset": dict(cell.dataset_options), "strategy": dict(cell.strategy_options)},
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


def open_suite(suite: str | Path | Suite, host: PluginHost) -> Suite:
    if isinstance(suite, Suite):
        return suite
    return load_suite(find_suite(str(suite)), host.registry)


def choose_run_dir(request: RunRequest, suite: Suite) -> Path:
    """``--out DIR`` wins; ``--resume latest`` picks the newest run of this suite; otherwise a new
    ``results/<suite>/<run-id>``. A run dir that already has records is resumed, never clobbered."""
    if request.resume not in (None, ""):
        if str(request.resume) == "latest":
            runs = sorted(p for p in (request.results_root / suite.name).glob("*") if (p / "cells.jsonl").exists())
            if not runs:
                raise UserError(f"--resume latest: no earlier run of suite {suite.name!r} under {request.results_root / suite.name}")
            return runs[-1]
        path = Path(request.resume)
        if not path.is_dir():
            raise UserError(f"--resume: run directory {str(path)!r} does not exist")
        return path
    if request.out_dir is not None:
        return Path(request.out_dir)
    return request.results_root / suite.name / new_run_id()


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
        raise UserError(f"run directory {str(run_dir)!r} holds suite {first!r}, not {suite.name!r}; choose another --out")


def preflight(suite: Suite, host: PluginHost) -> None:
    """Everything that can be known to fail before any work: unmet plugin requirements and
    components that cannot run here (missing weights package, missing dataset files)."""
    problems = []
    if suite.requires:
        from tlbench import plugins as plugin_host

        checker = getattr(plugin_host, "check_requirements", None)
        if checker is not None:
            problems += [f"{suite.path}: requires: {msg}" for msg in checker(list(suite.requires))]
    for kind in ("model", "dataset"):
        for entry in suite.entries(kind):
            registered, argument = host.registry.lookup(kind, entry.ref)
            available = registered.spec.availability(argument)
            if available is not True:
                problems.append(f"{suite.path}: {entry.field}: {kind} {entry.ref!r} is not available: {available}")
    if problems:
        raise UserError("\n".join(problems))


def plan_cells(suite: Suite, selection: Selection) -> list[Cell]:
    cells = [c for c in expand_cells(suite) if selection.keeps(c)]
    if not cells:
        raise UserError(f"{suite.path}: the selection leaves no cells to run")
    return cells


def pending_cells(cells: Iterable[Cell], store: ResultsStore, retry_failed: bool) -> tuple[list[Cell], int]:
    latest = store.latest_by_hash()
    todo, skipped = [], 0
    for cell in cells:
        previous = latest.get(config_hash(cell))
        done = previous is not None and (previous["status"] in ("ok", "skipped") or (not retry_failed and previous["status"] in ("failed", "diverged")))
        if done:
            skipped += 1
        else:
            todo.append(cell)
    return todo, skipped


def final_records(cells: Iterable[Cell], store: ResultsStore) -> list[dict]:
    latest = store.latest_by_hash()
    return [latest[h] for h in (config_hash(c) for c in cells) if h in latest]


def run_suite(request: RunRequest, host: PluginHost | None = None, progress=None) -> RunOutcome:
    """Validate, plan, run every pending cell and store each record as soon as it finishes."""
    host = host or request.plugins.load()
    suite = open_suite(request.suite, host)
    preflight(suite, host)
    cells = plan_cells(suite, request.selection)
    device = resolve_device(request.device)
    run_dir = prepare_run_dir(choose_run_dir(request, suite))
    check_suite_against_run(run_dir, suite)
    env = environment(host.plugin_rows(), suite.text, str(suite.path), list(request.argv) if request.argv else None)
    env["suite_name"] = suite.name
    env["device"] = device
    write_environment(run_dir, env)
    if not (run_dir / "suite.toml").exists() and suite.path.exists():
        shutil.copyfile(suite.path, run_dir / "suite.toml")
    store = ResultsStore(run_dir)
    todo, skipped = pending_cells(cells, store, request.retry_failed)
    cache = Cache(request.cache_dir)
    outcome = RunOutcome(run_dir=run_dir, records=[], skipped=skipped)
    runner = CellRunner(host, cache, device, run_dir, log=(progress.status if progress else lambda _m: None))
    if progress:
        progress.start(total=len(cells), done=skipped)
    with _RunLog(run_dir) as log:
        for cell in todo:
            if progress:
                progress.cell_started(cell)
            log.write(f"start {cell.model} {cell.dataset} {cell.strategy} seed={cell.seed}")
            record = runner.run(cell)
            store.append(record)
            _notify(host, record)
            outcome.ran += 1
            log.write(f"end {cell.model} {cell.dataset} {cell.strategy} seed={cell.seed}: {record['status']} {record['metrics'].get('top1', '')}")
            if progress:
                progress.cell_finished(cell, record)
    if progress:
        progress.stop()
    outcome.records = final_records(cells, store)
    return outcome


def _notify(host: PluginHost, record: dict) -> None:
    try:
        host.manager.hook.on_cell_finished(record=record)
    except Exception as exc:  # an observer never breaks a run
        host.errors.append(f"on_cell_finished observer failed: {type(exc).__name__}: {exc}")


class _RunLog:
    def __init__(self, run_dir: Path):
        self.path = run_dir / "run.log"

    def __enter__(self):
        self.fh = open(self.path, "a", buffering=1)
        self.write(f"run started pid={os.getpid()}")
        return self

    def write(self, message: str) -> None:
        self.fh.write(f"{now_iso()} {message}\n")

    def __exit__(self, *exc):
        self.write("run stopped" if exc[0] is None else f"run stopped: {exc[0].__name__}")
        self.fh.close()
        return False
