"""The worker side of a run: one cell, from its components to its record.

``CellRunner.run(cell)`` loads the cell's source model and target data (kept in memory for the
next cells that share them), prepares the data for the model, lets the strategy fit and
evaluate, and turns the outcome, or the failure, into a record. Every record of a run, including
those of cells that never ran (interrupted, lost with their worker), is built here, so the
record schema has one author. Executors call ``CellRunner``; nothing here knows about executors
or about the run as a whole.
"""

from __future__ import annotations

import time
import traceback
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tlbench import __version__
from tlbench.cache import Cache, stable_hash
from tlbench.components import BuildContext, Cell, CellContext
from tlbench.errors import Diverged
from tlbench.leakage import check_disjoint
from tlbench.registry import Registered
from tlbench.results import SCHEMA_VERSION, now_iso
from tlbench.suite import config_hash

# Held in memory between consecutive cells: a run's cells come grouped by (model, dataset, seed),
# so the previous group's objects are what the next cells need.
MODELS_KEPT, TARGETS_KEPT, PREPARED_KEPT = 2, 3, 2


@dataclass
class CellResult:
    """What running a cell produced: its record, and the per-example test predictions the
    parent stores next to it (``None`` when the strategy gave none or the cell failed)."""

    record: dict
    predictions: Any = None  # tlbench.predictions.Predictions


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
    """Runs cells one after another in this process. One per process: the pre-training checks
    and the local executor share it, so what the checks load is still warm for the cells."""

    def __init__(
        self,
        host,
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
        self._components: dict[tuple[str, str], tuple[Registered, str | None, Callable]] = {}
        self._models = _Lru(MODELS_KEPT)
        self._targets = _Lru(TARGETS_KEPT)
        self._prepared = _Lru(PREPARED_KEPT)

    def component(self, kind: str, ref: str) -> tuple[Registered, str | None, Callable]:
        """(registration, argument, factory) of a reference, looked up once per runner."""
        key = (kind, ref)
        if key not in self._components:
            registered, argument = self.registry.lookup(kind, ref)
            self._components[key] = (registered, argument, registered.spec.load_factory())
        return self._components[key]

    def build_context(self, seed: int) -> BuildContext:
        return BuildContext(
            cache=self.cache, device=self.device, registry=self.registry, seed=seed, log=self.log
        )

    def source_model(self, cell: Cell):
        _, argument, factory = self.component("model", cell.model_ref)
        key = stable_hash([cell.model_ref, dict(cell.model_options), cell.seed])
        return self._models.get_or_make(
            key, lambda: factory(argument, dict(cell.model_options), self.build_context(cell.seed))
        )

    def target_data(self, cell: Cell):
        _, argument, factory = self.component("dataset", cell.dataset_ref)
        key = stable_hash([cell.dataset_ref, dict(cell.dataset_options)])
        return self._targets.get_or_make(
            key,
            lambda: factory(argument, dict(cell.dataset_options), self.build_context(cell.seed)),
        )

    def prepared_data(self, cell: Cell, target, source):
        from tlbench.data import prepare

        key = stable_hash(
            [
                cell.dataset_ref,
                dict(cell.dataset_options),
                source.fingerprint,
                dict(cell.model_options),
                cell.seed,
            ]
        )
        options = dict(cell.dataset_options), dict(cell.model_options)
        return self._prepared.get_or_make(
            key, lambda: prepare(target, source, *options, cell.seed, self.cache)
        )

    def strategy(self, cell: Cell):
        _, _, factory = self.component("strategy", cell.strategy_ref)
        return factory(dict(cell.strategy_options))

    def context(self, cell: Cell) -> CellContext:
        import torch

        source = self.source_model(cell)
        data = self.prepared_data(cell, self.target_data(cell), source)
        # A source that trained on any of this target's images: the pair is refused (UserError).
        check_disjoint(cell, source, data)
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

    def run(self, cell: Cell) -> CellResult:
        """Run one cell; any exception becomes the cell's record, never the caller's problem
        (except Ctrl-C and exits, which belong to the run)."""
        from tlbench.engine.runtime import seed_everything

        record = new_record(cell)
        started = time.perf_counter()
        ctx = predictions = None
        try:
            ctx = self.context(cell)
            seed_everything(cell.seed)
            result = self.strategy(cell).run(ctx)
            record.update(
                status=result.status,
                metrics=result.metrics,
                hparams=result.hparams,
                cost=dict(result.cost),
            )
            if result.detail:
                record["detail"] = result.detail
            predictions = result.predictions
        except Diverged as exc:
            record.update(
                status="diverged", error={"type": "Diverged", "message": str(exc), "step": exc.step}
            )
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # one broken cell never stops the run
            record.update(status="failed", error=error_entry(exc, str(exc)))
        self._finish(record, ctx, started)
        return CellResult(record, predictions)

    def _finish(self, record: dict, ctx: CellContext | None, started: float) -> None:
        import torch

        from tlbench.engine.runtime import peak_memory_mb, runtime_info

        device = torch.device(self.device)
        record["finished_at"] = now_iso()
        cost = record.setdefault("cost", {})
        cost["wall_s"] = round(time.perf_counter() - started, 3)
        cost.setdefault("device", self.device)
        cost.setdefault("peak_mem_mb", round(peak_memory_mb(device), 1))
        record["runtime"] = runtime_info(device)
        if ctx is not None:
            record["model_card"] = dict(ctx.source.card)
            record["dataset_card"] = dict(getattr(ctx.data, "card", {}) or {})
            record["split"] = dict(getattr(ctx.data, "split_record", {}) or {})


# ---------------------------------------------------------------------------------------------
# Records: the one place their fields are decided (docs/running.md lists them).


def new_record(cell: Cell) -> dict:
    """The record of ``cell`` before it runs: identity, options, versions, status ``running``."""
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
        "versions": dict(cell.versions),
        "status": "running",
        "metrics": {},
        "hparams": {},
        "cost": {},
        "error": None,
        "started_at": now_iso(),
        "tlbench_version": __version__,
    }


def error_entry(exc: BaseException, message: str) -> dict:
    trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return {"type": type(exc).__name__, "message": message, "traceback": trace}


def failed_result(cell: Cell, message: str, exc: BaseException) -> CellResult:
    """A cell that failed outside ``CellRunner.run`` (its worker died, for example)."""
    record = new_record(cell)
    record.update(status="failed", error=error_entry(exc, message), finished_at=now_iso())
    return CellResult(record)


def interrupted_result(cell: Cell) -> CellResult:
    record = new_record(cell)
    record.update(
        status="interrupted",
        error={"type": "KeyboardInterrupt", "message": "stopped by a second Ctrl-C while running"},
        finished_at=now_iso(),
    )
    return CellResult(record)
