"""The one interface every executor implements, and what executors share.

An executor gets the run's cells in *groups* that share work (``group_cells``) and reports each
cell to a ``Sink`` as it starts and as its result arrives (the parent stores it). Executors with
*slots* (local, process, ray: a place where one cell runs at a time and where the models, decoded
datasets and prepared tensors of the previous cell stay in memory) inherit ``SlotExecutor``: each
slot runs a whole group, one cell after another, so those in-memory caches stay hot, and an idle
slot steals half of a busy slot's remaining group rather than wait. A batch scheduler (slurm)
implements ``run`` itself and takes whole groups as jobs. Work shared between slots (features,
converted weights, self-pretrained checkpoints) meets in the on-disk ``Cache``.

Grouping: on CPU a group is a (model, dataset, seed); where workers hold a GPU it is a
(model, dataset) with its seeds in sequence, so one GPU extracts the features once and the seeds
reuse them instead of several GPUs queueing on the same feature lock.

Nothing here imports torch at import time: spawned workers import it after they have set their
thread count and visible GPU.
"""

from __future__ import annotations

import os
import socket
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from tlbench.cell import (
    CellFailure,
    CellResult,
    CellRunner,
    core_problem,
    failed_result,
    failure_result,
    interrupted_result,
)
from tlbench.errors import UserError
from tlbench.executors.registry import ExecutorConfig, make_executor
from tlbench.plugins import PluginConfig

if TYPE_CHECKING:  # pragma: no cover
    from tlbench.components import Cell


# -- options -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Option:
    """One ``--executor-opt KEY=VALUE`` an executor takes: its key, type and meaning."""

    key: str
    type: type = str  # str, int, float or bool
    help: str = ""
    minimum: float | None = None
    strict: bool = False  # the value must be above ``minimum``, not equal to it

    def parse(self, text: str) -> Any:
        flag = f"--executor-opt {self.key}={text}"
        if self.type is bool:
            lowered = text.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise UserError(f"{flag}: expected true or false")
        kind = "an integer" if self.type is int else "a number"
        try:
            value = self.type(text)
        except ValueError:
            raise UserError(f"{flag}: expected {kind}") from None
        low = self.minimum
        if low is not None and (value <= low if self.strict else value < low):
            raise UserError(f"{flag}: expected {kind} {'>' if self.strict else '>='} {low:g}")
        return value


def parse_known(
    kind: str, options: Sequence[Option], pairs: Iterable[tuple[str, str]], *, open_ended=False
) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """({key: parsed value} for the options ``kind`` declares, the other pairs). Unknown keys
    are refused with a did-you-mean, unless ``open_ended`` (Slurm passes them to sbatch)."""
    import difflib

    known = {option.key: option for option in options}
    values: dict[str, Any] = {}
    rest: list[tuple[str, str]] = []
    for key, text in pairs:
        if key in known:
            values[key] = known[key].parse(text)
        elif open_ended:
            rest.append((key, text))
        elif not known:
            raise UserError(f"--executor-opt {key}={text}: executor {kind} takes no options")
        else:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UserError(
                f"--executor-opt {key}={text}: executor {kind} has no option {key!r}{hint}; "
                f"it takes: {', '.join(known)}"
            )
    return values, rest


# -- the worker side -----------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerConfig:
    """Everything a worker needs to rebuild what the parent has: plugins, cache, device."""

    plugins: PluginConfig
    cache_dir: str
    device: str
    run_dir: str
    executor: str
    slot: int = 0
    threads: int | None = None
    visible_gpu: str | None = None
    # Remote workers check each cell themselves (the parent builds no contexts for them).
    check_cells: bool = False


def worker_info(config: WorkerConfig) -> dict:
    import torch

    info = {
        "executor": config.executor,
        "slot": config.slot,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "torch_threads": torch.get_num_threads(),
    }
    if config.visible_gpu is not None:
        info["cuda_visible_devices"] = config.visible_gpu
    if config.executor == "ray":  # hosts can share a name; the node id cannot
        import ray

        info["node_id"] = ray.get_runtime_context().get_node_id()
    return info


# Set on a cluster node (in the environment of `ray start`, or of a Slurm job), the cache that
# workers on that node use instead of the parent's: a node-local disk when nodes share none.
NODE_CACHE_ENV = "TLBENCH_NODE_CACHE"


def on_this_node(config: WorkerConfig) -> WorkerConfig:
    """``config`` with this node's own cache directory, when the node names one."""
    node_cache = os.environ.get(NODE_CACHE_ENV)
    return replace(config, cache_dir=node_cache) if node_cache else config


def make_runner(config: WorkerConfig, log: Callable[[str], None] = lambda _m: None) -> CellRunner:
    """A worker's own runner, rebuilt from its config (plugins, cache, device), with the run's
    GPU settings (inherited through the environment) applied to this process."""
    from tlbench.cache import Cache
    from tlbench.engine.runtime import configure_runtime

    configure_runtime()

    return CellRunner(
        config.plugins.load(), Cache(config.cache_dir), config.device, Path(config.run_dir), log
    )


def cell_worker(config: WorkerConfig) -> Callable[[Cell], CellResult]:
    """How a batch job runs cells: its own runner, on this node's cache if the node names one."""
    config = on_this_node(config)
    runner = make_runner(config)
    return lambda cell: run_with(runner, config, cell)


def run_with(runner: CellRunner, config: WorkerConfig, cell: Cell) -> CellResult:
    result = _checked(runner, cell) if config.check_cells else None
    if result is None:
        result = runner.run(cell)
    result.record["worker"] = worker_info(config)
    return result


def _checked(runner: CellRunner, cell: Cell) -> CellResult | None:
    """The cell's failed result when its strategy's ``check`` (or the core) refuses it here on
    the worker, else ``None``: the check the parent makes for in-process cells."""
    try:
        runner.check(cell)
    except CellFailure as failure:
        return failure_result(cell, failure)
    except UserError as exc:
        return failed_result(cell, core_problem(cell, exc), exc)
    return None


def local_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def visible_gpus() -> list[str]:
    """The GPUs this process may hand to workers, as ``CUDA_VISIBLE_DEVICES`` entries: the
    entries already set there (a scheduler's allocation, e.g. ``4,5,6,7``), else ``0..N-1``."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [entry.strip() for entry in listed.split(",") if entry.strip()][:count]
    return [str(i) for i in range(count)]


def no_gpu_requested(kind: str, device: str, option: str) -> UserError:
    return UserError(
        f"--executor {kind} with --device {device}: the {kind} workers get no GPU unless asked "
        f"for one; add --executor-opt {option}=N for GPUs, or --device cpu to run on CPUs"
    )


# -- grouping ------------------------------------------------------------------------------------


def dataset_major(cells: Iterable[Cell]) -> list[Cell]:
    """``cells`` with those of one dataset together (datasets in first-seen order, the cells of
    each in their own order): a suite expands model by model, and visiting every dataset once per
    model would decode (scan) each dataset once per model where a few are kept in memory."""
    cells = list(cells)
    first: dict = {}
    for cell in cells:
        first.setdefault(cell.dataset, len(first))
    return sorted(cells, key=lambda c: first[c.dataset])


def group_cells(cells: Iterable[Cell], by_seed: bool = True) -> list[deque]:
    """Cells sharing a (model, dataset, seed), or with ``by_seed=False`` a (model, dataset) with
    its seeds one after another; each group runs on one slot (or job). Groups come dataset by
    dataset (``dataset_major``), so each dataset is read once per worker, not once per model."""
    groups: dict[tuple, list] = {}
    for cell in dataset_major(cells):
        key = (cell.model, cell.dataset) + ((cell.seed,) if by_seed else ())
        groups.setdefault(key, []).append(cell)
    if by_seed:
        return [deque(group) for group in groups.values()]
    return [deque(sorted(group, key=lambda c: c.seed)) for group in groups.values()]


class Sink:
    """What an executor tells the run about: a cell started, a cell's record is ready."""

    def started(self, cell: Cell) -> None: ...

    def finished(self, cell: Cell, result: CellResult) -> None: ...

    def stop_requested(self) -> bool:
        return False


# -- the interface -------------------------------------------------------------------------------


class Executor:
    """Runs groups of cells somewhere. Registered by name in ``tlbench.executors.EXECUTORS``.

    ``OPTIONS`` are the ``--executor-opt`` keys the class takes; ``check`` refuses a bad
    configuration before anything loads; ``create`` builds one for a run; ``run`` runs the
    groups and reports to the sink, returning False when a hard interrupt stopped it (the cells
    in flight recorded ``interrupted``); ``shutdown`` releases every worker (idempotent)."""

    name: ClassVar[str] = ""
    OPTIONS: ClassVar[tuple[Option, ...]] = ()
    # Whether the parent checks each cell before dispatch (in-process), or the workers do.
    checks_in_parent: ClassVar[bool] = True

    @classmethod
    def parse_options(cls, config: ExecutorConfig) -> Any:
        return parse_known(cls.name, cls.OPTIONS, config.options)[0]

    @classmethod
    def check(cls, config: ExecutorConfig, device: str = "auto") -> None:
        cls.parse_options(config)

    @classmethod
    def create(
        cls, config: ExecutorConfig, base: WorkerConfig, runner: CellRunner, requested_device: str
    ) -> Executor:
        raise NotImplementedError

    #: Whether a group is a (model, dataset, seed) (True) or a (model, dataset) (False).
    groups_by_seed: bool = True

    def run(self, groups: deque, sink: Sink) -> bool:
        raise NotImplementedError

    def shutdown(self, kill: bool = False) -> None:
        """Release every worker; ``kill`` stops cells in flight at once."""

    def describe(self) -> dict:
        """What env.json and run.log say about this executor (workers, GPUs, ...)."""
        return {"kind": self.name}


class Batch:
    """A run's pending cells on the executor its config names: the one entry point of the
    executors (``Batch.prepare``, then ``run``). Preparing looks the class up in the registry,
    checks its options, builds it, and checks each cell where the executor checks them (in the
    parent for in-process executors; remote workers check their own, so a login node builds
    no contexts, models or datasets); running records the rejected cells and dispatches the
    others in groups that share work."""

    def __init__(
        self,
        executor: Executor,
        cells: Sequence[Cell],
        rejected: list[tuple[Cell, CellResult]],
    ):
        self.executor, self.name = executor, executor.name
        self.rejected = rejected  # failed their check: recorded, never run
        self.groups = deque(group_cells(cells, by_seed=executor.groups_by_seed))

    @classmethod
    def prepare(
        cls,
        config: ExecutorConfig,
        plugins: PluginConfig,
        cells: Sequence[Cell],
        runner: CellRunner,
        requested_device: str,
    ) -> Batch:
        """``cells`` ready to run on ``config``'s executor, built around ``runner`` (the run's
        own, whose checks stay warm for the local executor; workers rebuild theirs from
        ``plugins`` and the runner's cache, device and run directory). A ``UserError`` for an
        executor that cannot run here, or for a suite mistake found by the checks."""
        base = WorkerConfig(
            plugins, str(runner.cache.root), runner.device, str(runner.run_dir), "local"
        )
        executor = make_executor(config, base, runner, requested_device)
        rejected = check_cells(dataset_major(cells), runner) if executor.checks_in_parent else []
        return cls(executor, _not_rejected(cells, rejected), rejected)

    def run(self, sink: Sink) -> bool:
        """Record the rejected cells, then run the others and report each to ``sink``; False
        when a hard interrupt (a ``KeyboardInterrupt``) stopped it, after the cells in flight
        were recorded ``interrupted``. No worker outlives a run that failed."""
        try:
            for cell, result in self.rejected:
                sink.finished(cell, result)
            if not self.groups:
                return True
            return self.executor.run(self.groups, sink)
        except BaseException:
            self.executor.shutdown(kill=True)
            raise


def check_cells(cells: Iterable[Cell], runner: CellRunner) -> list[tuple[Cell, CellResult]]:
    """Let each strategy reject what it cannot do with its cell's model and data (k larger than
    the model's layer groups, a LoRA target that matches nothing, ...) before any training.

    Whatever plugin code raises here, a ``UserError`` from ``check()`` included, costs only its
    cell: it comes back as that cell's failed result, to be recorded instead of run, and the
    healthy cells run. Only a mistake in the suite itself stops the run (a source paired with a
    target it trained on): every such problem is raised at once as one ``UserError``, one line
    each, naming its cells. The contexts built here are the ones the cells then run on (the
    runner keeps them)."""
    problems: dict[str, list[str]] = {}
    rejected = []
    for cell in cells:
        try:
            runner.check(cell)
        except CellFailure as failure:
            rejected.append((cell, failure_result(cell, failure)))
        except UserError as exc:  # the core refused the cell (its source trained on the target)
            problem = core_problem(cell, exc).removeprefix(f"{cell.label}: ")
            problems.setdefault(problem, []).append(cell.label)
    if problems:
        raise UserError("\n".join(_naming_cells(p, labels) for p, labels in problems.items()))
    return rejected


def _not_rejected(cells: Sequence[Cell], rejected: list[tuple[Cell, CellResult]]) -> list[Cell]:
    failed = {id(cell) for cell, _ in rejected}  # check_cells hands back the cells it was given
    return [cell for cell in cells if id(cell) not in failed]


def _naming_cells(problem: str, labels: list[str]) -> str:
    more = f" (and {len(labels) - 1} more cells)" if len(labels) > 1 else ""
    return f"{labels[0]}{more}: {problem}"


# -- slots ---------------------------------------------------------------------------------------


class Slot:
    """One cell at a time, with hot in-memory caches between consecutive cells."""

    def submit(self, cell: Cell) -> Future:
        raise NotImplementedError

    def is_broken(self, exc: BaseException) -> bool:
        """Whether ``exc`` (raised by a submitted cell's future) means the slot itself died."""
        return False

    def restart(self) -> None:
        """Replace a dead slot with a fresh one."""

    def close(self, kill: bool = False) -> None:
        """Release the slot; ``kill`` stops cells in flight at once."""


class SlotExecutor(Executor):
    """An executor made of slots: ``start`` opens them, ``run`` feeds them groups."""

    slots: list[Slot]

    def start(self, groups: int) -> list[Slot]:
        raise NotImplementedError

    def run(self, groups: deque, sink: Sink) -> bool:
        slots = self.start(len(groups))
        state = _Dispatch(groups, sink)
        try:
            for slot in slots:
                state.feed(slot, deque())
            state.drain()
        except KeyboardInterrupt:
            self.shutdown(kill=True)
            for cell in state.in_flight_cells():
                sink.finished(cell, interrupted_result(cell))
            return False
        self.shutdown()
        return True

    def shutdown(self, kill: bool = False) -> None:
        for slot in getattr(self, "slots", []):
            slot.close(kill)


class _Dispatch:
    def __init__(self, queue: deque, sink: Sink):
        self.queue, self.sink = queue, sink
        self.in_flight: dict[Future, tuple[Slot, Cell, deque]] = {}
        self.starting: Cell | None = None

    def feed(self, slot: Slot, group: deque) -> None:
        if self.sink.stop_requested():
            return
        group = group or (self.queue.popleft() if self.queue else self._steal())
        if not group:
            return
        cell = group.popleft()
        self.sink.started(cell)
        self.starting = cell
        future = slot.submit(cell)
        self.starting = None
        self.in_flight[future] = (slot, cell, group)

    def _steal(self) -> deque:
        """Half of the longest group still waiting on a busy slot, so no slot idles. A lone
        waiting cell stays where its model and data are already loaded."""
        waiting = [group for _, _, group in self.in_flight.values() if len(group) >= 2]
        if not waiting:
            return deque()
        longest = max(waiting, key=len)
        stolen = deque(longest.pop() for _ in range(len(longest) // 2))
        stolen.reverse()
        return stolen

    def drain(self) -> None:
        while self.in_flight:
            done, _ = wait(list(self.in_flight), return_when=FIRST_COMPLETED)
            for future in done:
                slot, cell, group = self.in_flight.pop(future)
                self.sink.finished(cell, self._record(future, slot, cell))
                self.feed(slot, group)

    def _record(self, future: Future, slot: Slot, cell: Cell) -> CellResult:
        exc = future.exception()
        if exc is None:
            return future.result()
        if slot.is_broken(exc):
            slot.restart()
        if self.sink.stop_requested():
            return interrupted_result(cell)
        return failed_result(
            cell, f"the worker running this cell died: {type(exc).__name__}: {exc}", exc
        )

    def in_flight_cells(self) -> list[Cell]:
        cells = [cell for _, cell, _ in self.in_flight.values()]
        return cells + ([self.starting] if self.starting is not None else [])
