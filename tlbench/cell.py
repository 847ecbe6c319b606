"""The worker side of a run: one cell, from its components to its record.

``CellRunner.run(cell)`` loads the cell's source model and target data (kept in memory for the
next cells that share them), prepares the data for the model, lets the strategy fit and
evaluate, checks what it returned, and turns the outcome, or the failure, into a record. Plugin
code is the least trusted code in the process: every call into it sits inside the cell's failure
boundary, and whatever it raises or wrongly returns becomes a ``CellFailure``, one line naming
the cell, the component and the plugin that registered it. Every record of a run, including
those of cells that never ran (interrupted, lost with their worker), is built here, so the
record schema has one author. Executors call ``CellRunner``; nothing here knows about executors
or about the run as a whole.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tlbench import __version__
from tlbench.cache import Cache, stable_hash
from tlbench.components import (
    BuildContext,
    Cell,
    CellContext,
    SourceModel,
    StrategyResult,
    TargetData,
)
from tlbench.contracts import (
    ContractError,
    check_target,
    check_top1_against_predictions,
    checked_source,
    kind_of,
)
from tlbench.errors import Diverged, UserError
from tlbench.leakage import check_disjoint
from tlbench.predictions import Predictions
from tlbench.registry import Registered
from tlbench.results import SCHEMA_VERSION, now_iso
from tlbench.suite import config_hash

# Held in memory between consecutive cells: a run's cells come grouped by (model, dataset, seed),
# so the previous group's objects are what the next cells need.
MODELS_KEPT, TARGETS_KEPT, PREPARED_KEPT = 2, 3, 2
# What a strategy may report itself; a failure is raised, divergence is raised as Diverged.
RESULT_STATUSES = ("ok", "skipped")
TOP1_EXPECTED = "metrics['top1'], the test top-1 accuracy in percent: a finite number in [0, 100]"
# Options that name files: relative values resolve against the suite file's directory.
PATH_OPTIONS = ("path", "root")
PATH_SUFFIXES = ("_path", "_dir", "_file", "_root")


class CellFailure(Exception):
    """Code called for a cell raised, or returned what its contract does not allow.

    ``str()`` is the one line a user reads: the cell's label, then ``problem`` (the component,
    the plugin that registered it, what went wrong). ``cause`` is the exception behind it; its
    traceback goes to the record and to run.log.
    """

    def __init__(self, cell: Cell, problem: str, cause: BaseException):
        super().__init__(f"{cell.label}: {problem}")
        self.label, self.problem, self.cause = cell.label, problem, cause

    def entry(self) -> dict:
        return error_entry(self.cause, str(self))


class StopRun(KeyboardInterrupt):
    """Raised by the run's signal handler (Ctrl-C, SIGTERM): the run stops, unlike a
    ``KeyboardInterrupt`` that plugin code raises itself, which fails only its cell."""


def escapes_cell(exc: BaseException) -> bool:
    """Whether ``exc`` belongs to the run rather than to the cell it was raised in: a signal.

    ``SystemExit``, ``GeneratorExit`` and any other ``BaseException`` raised by plugin code fail
    the cell (a plugin cannot end a run, least of all as a success). A bare
    ``KeyboardInterrupt`` is a signal only where Python's own Ctrl-C handler is installed (a
    library caller without the run's handler); under the run's handler signals arrive as
    ``StopRun``, and in a worker process Ctrl-C is ignored, so it was raised by code."""
    if isinstance(exc, StopRun):
        return True
    if isinstance(exc, KeyboardInterrupt):
        return signal.getsignal(signal.SIGINT) is signal.default_int_handler
    return False


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
        self.runtime: dict = {}  # the settings the engine runs with (``start``)

    @classmethod
    def start(
        cls,
        host,
        cache_dir: os.PathLike | None,
        requested_device: str,
        run_dir: Path | None = None,
        *,
        refresh: Iterable[str] = (),
        log: Callable[[str], None] = lambda _m: None,
    ) -> CellRunner:
        """The run's own runner, with the engine started: the device resolved (``--device``,
        ``UserError`` when this machine has no such device), the runtime configured
        (cudnn.benchmark, TF32, ``--deterministic``; workers apply the same) and kept as
        ``runtime``, the cache opened and found writable, and the cached entries of the models
        in ``refresh`` cleared before any cell can read them. torch loads only here."""
        from tlbench.engine.runtime import configure_runtime, resolve_device, runtime_settings

        device = str(resolve_device(requested_device))
        configure_runtime()
        cache = Cache(cache_dir)
        cache.check_writable()
        for ref in sorted(set(refresh)):
            cache.clear_matching(model_marker(ref))
        runner = cls(host, cache, device, run_dir, log)
        runner.runtime = runtime_settings()
        return runner

    def component(self, kind: str, ref: str) -> tuple[Registered, str | None, Callable]:
        """(registration, argument, factory) of a reference, looked up once per runner."""
        key = (kind, ref)
        if key not in self._components:
            registered, argument = self.registry.lookup(kind, ref)
            self._components[key] = (registered, argument, registered.spec.load_factory())
        return self._components[key]

    def culprit(self, cell: Cell, kind: str) -> str:
        """How a message names one of the cell's components: ``dataset 'x' (plugin 'p')``."""
        ref = getattr(cell, f"{kind}_ref")
        try:
            registered, _ = self.registry.lookup(kind, ref)
        except UserError:
            return f"{kind} {ref!r}"
        return f"{kind} {ref!r} (plugin {registered.plugin!r})"

    @contextmanager
    def blame(self, cell: Cell, kind: str, where: str) -> Iterator[None]:
        """Whatever the block raises becomes a ``CellFailure`` naming the cell's ``kind``
        component; ``where`` says what was running ("in its factory", "in run()", ...)."""
        try:
            yield
        except (CellFailure, Diverged):
            raise
        except BaseException as exc:
            if escapes_cell(exc):
                raise
            # A value that broke its contract is the fault of the component that returned it
            # (a model's wrong output width, met inside the strategy's run()).
            returner = getattr(exc, "kind", None) if isinstance(exc, ContractError) else None
            culprit = self.culprit(cell, returner or kind)
            raise CellFailure(cell, _problem(cell, culprit, where, exc), exc) from exc

    def build_context(self, seed: int, suite_dir: str | None = None) -> BuildContext:
        return BuildContext(
            cache=self.cache,
            device=self.device,
            registry=self.registry,
            seed=seed,
            log=self.log,
            suite_dir=Path(suite_dir) if suite_dir else None,
        )

    def source_model(self, cell: Cell):
        _, argument, factory = self.component("model", cell.model_ref)
        key = stable_hash([cell.model_ref, dict(cell.model_options), cell.seed, cell.suite_dir])

        def make():
            options = suite_relative(cell.model_options, cell.suite_dir)
            source = factory(argument, options, self.build_context(cell.seed, cell.suite_dir))
            source = checked_source(_returned(source, SourceModel), self.culprit(cell, "model"))
            return replace(source, fingerprint=self.cache_fingerprint(cell, source))

        return self._models.get_or_make(key, make)

    def cache_fingerprint(self, cell: Cell, source: SourceModel) -> str:
        """The fingerprint every cache built from ``source`` is keyed on: the plugin's own
        (the weights), plus the registering plugin's version and the model's recipe version
        (``ModelSpec.version``), so changed model code behind an unchanged weights fingerprint
        never reuses stale features once either version moves (docs/plugins/reference.md)."""
        registered, _, _ = self.component("model", cell.model_ref)
        version = getattr(self.host, "plugin_version", lambda _name: "-")(registered.plugin)
        return (
            f"{source.fingerprint}{model_marker(cell.model_ref)}plugin "
            f"{registered.plugin}=={version}|recipe {registered.spec.version}"
        )

    def target_data(self, cell: Cell):
        _, argument, factory = self.component("dataset", cell.dataset_ref)
        key = stable_hash([cell.dataset_ref, dict(cell.dataset_options), cell.suite_dir])

        def make():
            options = suite_relative(cell.dataset_options, cell.suite_dir)
            target = factory(argument, options, self.build_context(cell.seed, cell.suite_dir))
            check_target(_returned(target, TargetData))  # once per load, before any split
            return target

        return self._targets.get_or_make(key, make)

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

    def checked_strategy(self, cell: Cell):
        """The cell's strategy object; a factory that raises or returns no strategy is a
        ``CellFailure``."""
        with self.blame(cell, "strategy", "in its factory"):
            strategy = self.strategy(cell)
            if not callable(getattr(strategy, "run", None)):
                raise ContractError(
                    f"factory returned {kind_of(strategy)}, which has no run(ctx) method"
                )
        return strategy

    def check(self, cell: Cell) -> None:
        """Let the cell's strategy reject the cell before any training (its ``check(ctx)``,
        when it has one). Raises ``CellFailure`` when plugin code raised (a ``UserError``
        saying the cell's options cannot work included); ``UserError`` when the cell's source trained on its target's
        images (building the context checks that, so it is built for every cell)."""
        strategy = self.checked_strategy(cell)
        ctx = self.context(cell)
        check = getattr(strategy, "check", None)
        if check is None:
            return
        with self.blame(cell, "strategy", "in check()"):
            check(ctx)

    def context(self, cell: Cell) -> CellContext:
        """The cell's context. ``source_model``, ``target_data`` and ``prepared_data`` raise what
        they meet; here it becomes a ``CellFailure`` naming the component at fault."""
        import torch

        with self.blame(cell, "model", "in its factory"):
            source = _returned(self.source_model(cell), SourceModel)
        with self.blame(cell, "dataset", "in its factory"):
            target = _returned(self.target_data(cell), TargetData)
        with self.blame(cell, "dataset", f"while being prepared for {cell.model_ref!r}"):
            data = self.prepared_data(cell, target, source)
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
            strategy = self.checked_strategy(cell)
            with self.blame(cell, "strategy", "in run()"):
                result = strategy.run(ctx)
                record.update(result_fields(result, test_size=_test_size(ctx.data)))
            predictions = result.predictions
        except Diverged as exc:
            record.update(
                status="diverged", error={"type": "Diverged", "message": str(exc), "step": exc.step}
            )
        except CellFailure as failure:  # one broken cell never stops the run
            record.update(status="failed", error=failure.entry())
        except BaseException as exc:  # the core refused the cell, or failed: this cell's alone
            if escapes_cell(exc):  # a signal belongs to the run
                raise
            record.update(status="failed", error=error_entry(exc, core_problem(cell, exc)))
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


def failure_result(cell: Cell, failure: CellFailure) -> CellResult:
    """The record of a cell that failed before it ran (its check found plugin code broken)."""
    record = new_record(cell)
    record.update(status="failed", error=failure.entry(), finished_at=now_iso())
    return CellResult(record)


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
        error={
            "type": "KeyboardInterrupt",
            "message": "the run was stopped (Ctrl-C or SIGTERM) while this cell was running",
        },
        finished_at=now_iso(),
    )
    return CellResult(record)


# ---------------------------------------------------------------------------------------------
# What plugin code may return, and how its failures read.


def result_fields(result, test_size: int | None = None) -> dict:
    """The record fields of a strategy's result, once it keeps the contract: a
    ``StrategyResult`` whose ``metrics['top1']`` is a percentage (when ``ok``), agreeing with
    its predictions (when it has any; ``test_size`` items of them, when given), and whose
    mappings can be stored as JSON. Raises ``ContractError`` saying what was expected."""
    if not isinstance(result, StrategyResult):
        raise ContractError(
            f"returned {kind_of(result)} from run(); expected a tlbench.api.StrategyResult"
        )
    fields = {}
    for name in ("metrics", "hparams", "cost"):
        value = getattr(result, name)
        if not isinstance(value, Mapping):
            raise ContractError(f"returned {name} = {kind_of(value)}; expected a dict")
        fields[name] = _storable(name, value)
    if result.status not in RESULT_STATUSES:
        raise ContractError(
            f"returned status {result.status!r}; expected 'ok' or 'skipped' (to fail a cell, "
            "raise an exception; when training diverges, raise tlbench.api.Diverged)"
        )
    if result.status == "ok":
        _check_top1(fields["metrics"])
    if result.detail is not None and not isinstance(result.detail, str):
        raise ContractError(f"returned detail = {kind_of(result.detail)}; expected a string")
    if result.predictions is not None and not isinstance(result.predictions, Predictions):
        raise ContractError(
            f"returned predictions = {kind_of(result.predictions)}; "
            "expected a tlbench.api.Predictions or None"
        )
    if result.status == "ok" and result.predictions is not None:
        check_top1_against_predictions(fields["metrics"]["top1"], result.predictions, test_size)
    fields["status"] = result.status
    if result.detail:
        fields["detail"] = result.detail
    return fields


def _check_top1(metrics: Mapping) -> None:
    if "top1" not in metrics:
        raise ContractError(f"returned metrics without 'top1'; expected {TOP1_EXPECTED}")
    top1 = metrics["top1"]
    is_number = isinstance(top1, (int, float)) and not isinstance(top1, bool)
    if not (is_number and math.isfinite(top1) and 0 <= top1 <= 100):
        raise ContractError(f"returned metrics['top1'] = {top1!r}; expected {TOP1_EXPECTED}")


def _storable(name: str, value: Mapping) -> dict:
    """``value`` as the record will hold it: NumPy and torch scalars become numbers, other
    objects their ``str``; what JSON cannot hold at all (cycles, tuple keys) is refused here,
    in the cell, rather than when the run writes the record."""
    try:
        return json.loads(json.dumps(dict(value), default=_plain))
    except (TypeError, ValueError) as exc:
        raise ContractError(
            f"returned {name} that cannot be stored as JSON ({exc}); expected plain values"
        ) from None


def _plain(value):
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):  # NumPy or torch scalar
        return value.item()
    return str(value)


def model_marker(ref: str) -> str:
    """The part of a cache fingerprint that names the model (``tlbench cache clear
    --component NAME`` and ``tlbench run --refresh`` find a model's entries by it)."""
    return f"|model {ref}|"


def suite_relative(options: Mapping[str, Any], suite_dir: str | os.PathLike | None) -> dict:
    """``options`` with every relative file option (``path``, ``root``, names ending in
    ``_path``, ``_dir``, ``_file``, ``_root``) resolved against ``suite_dir``, the suite file's
    directory, so a suite means the same files from any working directory (docs/suites.md).
    Records keep the options as written."""
    resolved = dict(options)
    if not suite_dir:
        return resolved
    for name, value in options.items():
        if not (name in PATH_OPTIONS or name.endswith(PATH_SUFFIXES)):
            continue
        if not isinstance(value, str) or not value or value.startswith("~") or "://" in value:
            continue
        if not Path(value).is_absolute():
            resolved[name] = str(Path(suite_dir) / value)
    return resolved


def _test_size(data) -> int | None:
    try:
        return int(data.size("test"))
    except Exception:  # a context without the core's PreparedData (a test double)
        return None


def _returned(value, expected: type):
    if not isinstance(value, expected):
        raise ContractError(
            f"factory returned {kind_of(value)}; expected a tlbench.api.{expected.__name__}"
        )
    return value


def _problem(cell: Cell, culprit: str, where: str, exc: BaseException) -> str:
    """The line a failure reads as, without the cell's label."""
    if isinstance(exc, ContractError):
        return f"{culprit}{exc.sep}{exc}"
    if isinstance(exc, SystemExit):
        return f"{culprit} called sys.exit({exc.code!r}) {where}; a plugin cannot end the run"
    if isinstance(exc, UserError):  # written for the user already; say the cell only once
        return f"{culprit}: {_first_line(exc).removeprefix(cell.label + ': ')}"
    text = _first_line(exc)
    return f"{culprit} raised {type(exc).__name__} {where}" + (f": {text}" if text else "")


def core_problem(cell: Cell, exc: BaseException) -> str:
    """The line for what tlbench's own code raised for a cell (no plugin to name)."""
    if isinstance(exc, UserError):
        return f"{cell.label}: {_first_line(exc).removeprefix(cell.label + ': ')}"
    return f"{cell.label}: tlbench raised {type(exc).__name__}: {_first_line(exc)}"


def _first_line(exc: BaseException) -> str:
    """A message on one line: a user error's lines joined, another's first line (its whole
    text is in the traceback)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if isinstance(exc, UserError) or len(lines) < 2:
        return "; ".join(lines)
    return lines[0] + " ..."
