"""Where the cells of a run execute: in this process, in worker processes, or on a Ray cluster.

Every executor offers *slots*: places where one cell runs at a time and where the source
models, decoded datasets and prepared tensors of the previous cell stay in memory. ``dispatch``
hands each slot a whole group of cells sharing a (model, dataset, seed), one cell after another,
so those in-memory caches stay hot; an idle slot steals half of a busy slot's remaining group
rather than wait. Results come back to the parent one cell at a time and are written there.
Work shared between slots (features, converted weights, self-pretrained checkpoints) meets in
the on-disk ``Cache``, whose per-key lock makes concurrent workers compute each entry once.

    local    one slot in this process (the default)
    process  N spawned worker processes (ProcessPoolExecutor), torch threads = cores // N each,
             one GPU each when there are GPUs
    ray      one Ray actor per slot, with --cpus-per-cell / --gpus-per-cell resources each
    slurm    one Slurm job per group, through submitit (``tlbench.slurm``): batch schedulers
             take whole groups, so ``dispatch`` hands it the groups rather than slots

This module does not import torch at import time: spawned workers import it after they have
set their thread count and visible GPU.
"""

from __future__ import annotations

import os
import socket
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tlbench.cell import CellResult, CellRunner, failed_result, interrupted_result
from tlbench.errors import UserError
from tlbench.plugins import PluginConfig
from tlbench.slurm import SlurmExecutor, SlurmOptions

if TYPE_CHECKING:  # pragma: no cover
    from tlbench.components import Cell

EXECUTORS = ("local", "process", "ray", "slurm")


@dataclass(frozen=True)
class ExecutorConfig:
    """What ``--executor`` and its options ask for."""

    kind: str = "local"
    workers: int | None = None
    ray_address: str | None = None
    cpus_per_cell: float = 1.0
    gpus_per_cell: float = 0.0
    slurm: SlurmOptions | None = None  # the --slurm-* options, when given

    def check(self) -> None:
        if self.kind not in EXECUTORS:
            raise UserError(
                f"unknown executor {self.kind!r} (expected one of: {', '.join(EXECUTORS)})"
            )
        if self.workers is not None and self.workers < 1:
            raise UserError(f"--workers: expected an integer >= 1, got {self.workers}")
        if self.kind == "local" and self.workers not in (None, 1):
            raise UserError("--workers needs --executor process or --executor ray")
        ray_only = (
            self.ray_address is not None or self.cpus_per_cell != 1.0 or self.gpus_per_cell != 0.0
        )
        if self.kind != "ray" and ray_only:
            raise UserError(
                "--ray-address, --cpus-per-cell and --gpus-per-cell need --executor ray"
            )
        if self.cpus_per_cell <= 0 or self.gpus_per_cell < 0:
            raise UserError("--cpus-per-cell must be > 0 and --gpus-per-cell >= 0")
        if self.kind != "slurm" and self.slurm is not None:
            raise UserError("--slurm options need --executor slurm")
        if self.kind == "slurm":
            if self.workers is not None:
                raise UserError(
                    "--workers does not apply to --executor slurm: Slurm runs the jobs; cap how many at once with --slurm-array-parallelism"
                )
            (self.slurm or SlurmOptions()).check()


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


def worker_info(config: WorkerConfig) -> dict:
    import torch

    info = {
        "executor": config.executor,
        "slot": config.slot,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "torch_threads": torch.get_num_threads(),
    }
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
    """A worker's own runner, rebuilt from its config (plugins, cache, device)."""
    from tlbench.cache import Cache

    return CellRunner(
        config.plugins.load(), Cache(config.cache_dir), config.device, Path(config.run_dir), log
    )


def cell_worker(config: WorkerConfig) -> Callable[[Cell], CellResult]:
    """How a batch job runs cells: its own runner, on this node's cache if the node names one."""
    config = on_this_node(config)
    runner = make_runner(config)
    return lambda cell: run_with(runner, config, cell)


def run_with(runner: CellRunner, config: WorkerConfig, cell: Cell) -> CellResult:
    result = runner.run(cell)
    result.record["worker"] = worker_info(config)
    return result


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


class LocalSlot(Slot):
    def __init__(self, runner, config: WorkerConfig):
        self.runner, self.config = runner, config

    def submit(self, cell: Cell) -> Future:
        # Runs right here: a second Ctrl-C raises KeyboardInterrupt out of this call.
        future: Future = Future()
        future.set_result(run_with(self.runner, self.config, cell))
        return future


_WORKER: tuple[Any, WorkerConfig] | None = None


def _init_process_worker(config: WorkerConfig, parent_pid: int) -> None:
    import signal

    from tlbench.safeio import show_warnings_as_lines

    _die_with_parent(parent_pid)
    # Ctrl-C (and a SIGTERM sent to the process group) reach every process; the parent decides
    # what an interrupt means, and its workers die with it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    show_warnings_as_lines()
    if config.visible_gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = config.visible_gpu
    if config.threads is not None:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[var] = str(config.threads)
    import torch

    if config.threads is not None:
        torch.set_num_threads(config.threads)
    global _WORKER
    _WORKER = (make_runner(config), config)


def _die_with_parent(parent_pid: int) -> None:
    """A worker never outlives the run that started it, even one killed with SIGKILL (a worker
    holds a model and its data: gigabytes). Linux kills it with the parent (the parent-death
    signal); elsewhere a watchdog thread notices that the parent is gone within a second."""
    import sys
    import threading
    import time

    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        pr_set_pdeathsig = 1
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="tlbench-parent-watchdog", daemon=True).start()


def _run_in_process_worker(cell: Cell) -> CellResult:
    runner, config = _WORKER
    return run_with(runner, config, cell)


class ProcessSlot(Slot):
    """A one-worker ProcessPoolExecutor: a pool of one keeps a group on the same process."""

    def __init__(self, config: WorkerConfig):
        self.config = config
        self.pool = self._start()

    def _start(self) -> ProcessPoolExecutor:
        import multiprocessing

        return ProcessPoolExecutor(
            1,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_process_worker,
            initargs=(self.config, os.getpid()),
        )

    def submit(self, cell: Cell) -> Future:
        return self.pool.submit(_run_in_process_worker, cell)

    def is_broken(self, exc: BaseException) -> bool:
        from concurrent.futures.process import BrokenProcessPool

        return isinstance(exc, BrokenProcessPool)

    def restart(self) -> None:
        self.close(kill=True)
        self.pool = self._start()

    def close(self, kill: bool = False) -> None:
        if kill:
            # ProcessPoolExecutor has no public kill before Python 3.14.
            for process in list((getattr(self.pool, "_processes", None) or {}).values()):
                process.kill()
        self.pool.shutdown(wait=not kill, cancel_futures=True)


class _RayWorker:
    """The Ray actor behind a slot (wrapped with ``ray.remote`` when Ray is used)."""

    def __init__(self, config: WorkerConfig):
        import torch

        if config.threads is not None:
            torch.set_num_threads(config.threads)
        self.config = on_this_node(config)
        self.runner = make_runner(self.config)

    def run(self, cell: Cell) -> CellResult:
        return run_with(self.runner, self.config, cell)

    def node(self) -> tuple[str, str]:
        """(node id, node IP) of the Ray node this actor lives on."""
        import ray

        return ray.get_runtime_context().get_node_id(), ray.util.get_node_ip_address()


class WorkerLost(Exception):
    """The Ray node (or actor) running a cell went away; ``str()`` is the one line to record."""


class RaySlot(Slot):
    """One actor. After its node is lost, a fresh actor starts where the cluster has room; with
    no room left, the slot's cells queue on a surviving slot's actor instead (a replacement that
    cannot be placed would wait forever)."""

    def __init__(
        self,
        actor_class,
        config: WorkerConfig,
        siblings: list[RaySlot] | None = None,
        needs: dict[str, float] | None = None,
    ):
        self.actor_class, self.config = actor_class, config
        self.siblings = siblings if siblings is not None else []
        self.needs = needs or {"CPU": 1.0}  # what one actor reserves
        self.no_node_left = False
        self._start()

    def _start(self) -> None:
        self.actor = self.actor_class.remote(self.config)
        self.node = self.actor.node.remote()  # resolved long before anyone asks

    def submit(self, cell: Cell) -> Future:
        outcome: Future = Future()
        if self.no_node_left:
            outcome.set_exception(
                WorkerLost(
                    "no Ray node is left with room for this cell; the run goes on without it"
                )
            )
            return outcome
        node, ray_future = self.node, self.actor.run.remote(cell).future()
        ray_future.add_done_callback(lambda done: _settle(outcome, done, node))
        return outcome

    def is_broken(self, exc: BaseException) -> bool:
        return isinstance(exc, WorkerLost)

    def restart(self) -> None:
        self.close(kill=True)
        if self._room_for_one_more():
            self._start()
            return
        survivors = [s for s in self.siblings if s is not self and s.actor is not None]
        if not survivors:
            self.no_node_left = True
            return
        self.actor, self.node = survivors[0].actor, survivors[0].node

    def _room_for_one_more(self) -> bool:
        import ray

        free = ray.available_resources()
        return all(free.get(name, 0) >= amount for name, amount in self.needs.items() if amount)

    def close(self, kill: bool = False) -> None:
        """Kill the actor (idempotent): an actor left alive holds its model, data and GPU."""
        import ray

        actor, self.actor = self.actor, None
        if actor is not None:
            ray.kill(actor, no_restart=True)


def _settle(outcome: Future, done: Future, node) -> None:
    """Copy a Ray call's outcome onto ``outcome``, a lost actor as ``WorkerLost`` naming its node."""
    import ray

    exc = done.exception()
    if exc is None:
        outcome.set_result(done.result())
    elif isinstance(exc, ray.exceptions.RayActorError):
        outcome.set_exception(WorkerLost(_lost_where(node, exc)))
    else:
        outcome.set_exception(exc)


def _lost_where(node, exc: BaseException) -> str:
    import ray

    try:
        node_id, ip = ray.get(node, timeout=0)
    except Exception:  # the actor died before it said where it was
        return f"the Ray actor running this cell died: {str(exc).strip().splitlines()[0]}"
    if "node has died" in str(exc):
        return f"Ray node {node_id} ({ip}), which ran this cell, was lost"
    return f"the Ray actor running this cell on node {node_id} ({ip}) died"


# -- executors -----------------------------------------------------------------------------------


class Executor:
    name = "local"

    def start(self, groups: int) -> list[Slot]:
        raise NotImplementedError

    def shutdown(self, kill: bool = False) -> None:
        for slot in getattr(self, "slots", []):
            slot.close(kill)


class LocalExecutor(Executor):
    """One slot in this process, on the run's own ``CellRunner``."""

    def __init__(self, base: WorkerConfig, runner: CellRunner):
        self.base, self.runner = replace(base, executor="local"), runner

    def start(self, groups: int) -> list[Slot]:
        self.slots = [LocalSlot(self.runner, self.base)]
        return self.slots


def local_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class ProcessExecutor(Executor):
    name = "process"

    def __init__(self, base: WorkerConfig, workers: int | None, gpus: int):
        self.base, self.workers, self.gpus = base, workers, gpus

    def start(self, groups: int) -> list[Slot]:
        count = max(1, min(self.workers or local_cores(), groups))
        threads = max(1, local_cores() // count)
        self.slots = [ProcessSlot(self._config(i, threads)) for i in range(count)]
        return self.slots

    def _config(self, slot: int, threads: int) -> WorkerConfig:
        # With GPUs and an unpinned device, each worker sees one GPU as "cuda".
        gpu = str(slot % self.gpus) if self.gpus and self.base.device == "cuda" else None
        return replace(self.base, executor="process", slot=slot, threads=threads, visible_gpu=gpu)


class RayExecutor(Executor):
    name = "ray"

    def __init__(self, base: WorkerConfig, config: ExecutorConfig, requested_device: str):
        try:
            import ray
        except ImportError:
            raise UserError(
                "--executor ray needs Ray, which is not installed: pip install 'tlbench[ray]'"
            ) from None
        self.ray, self.config = ray, config
        if requested_device.startswith("cuda") and config.gpus_per_cell <= 0:
            raise UserError(
                f"--device {requested_device} with --executor ray needs --gpus-per-cell > 0"
            )
        device = "cuda" if config.gpus_per_cell > 0 else "cpu"
        self.base = replace(
            base, executor="ray", device=device, threads=max(1, int(config.cpus_per_cell))
        )
        self.started_ray = False

    def start(self, groups: int) -> list[Slot]:
        self._init_ray()
        actor = self.ray.remote(_RayWorker).options(
            num_cpus=self.config.cpus_per_cell, num_gpus=self.config.gpus_per_cell
        )
        count = max(1, min(self.config.workers or self._capacity(), groups))
        needs = {"CPU": self.config.cpus_per_cell, "GPU": self.config.gpus_per_cell}
        self.slots: list[RaySlot] = []
        self.slots.extend(
            RaySlot(actor, replace(self.base, slot=i), self.slots, needs) for i in range(count)
        )
        return self.slots

    def _init_ray(self) -> None:
        if self.ray.is_initialized():
            return
        options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if self.config.ray_address:
            options["address"] = self.config.ray_address
        else:
            # A local cluster: its workers import plugins from where this process does.
            options["num_cpus"] = local_cores()
            options["runtime_env"] = {
                "env_vars": {"PYTHONPATH": os.pathsep.join(p for p in _import_path() if p)}
            }
        try:
            self.ray.init(**options)
        except ConnectionError as exc:
            raise UserError(
                f"--ray-address {self.config.ray_address}: cannot connect to a Ray cluster: {exc}"
            ) from None
        self.started_ray = True

    def _capacity(self) -> int:
        resources = self.ray.cluster_resources()
        slots = int(resources.get("CPU", 1) // self.config.cpus_per_cell)
        if self.config.gpus_per_cell > 0:
            slots = min(slots, int(resources.get("GPU", 0) // self.config.gpus_per_cell))
        if slots < 1:
            raise UserError(
                f"the Ray cluster ({resources.get('CPU', 0)} CPUs, {resources.get('GPU', 0)} GPUs) cannot fit one cell with --cpus-per-cell {self.config.cpus_per_cell} --gpus-per-cell {self.config.gpus_per_cell}"
            )
        return slots

    def shutdown(self, kill: bool = False) -> None:
        """Kill every actor, then stop the local cluster this run started (idempotent)."""
        super().shutdown(kill)
        if self.started_ray:
            self.started_ray = False
            self.ray.shutdown()


def _import_path() -> list[str]:
    import sys

    return [os.path.abspath(p) for p in sys.path if p and os.path.isdir(p)]


def make_executor(
    config: ExecutorConfig, base: WorkerConfig, runner: CellRunner, requested_device: str
) -> Executor | SlurmExecutor:
    """``runner`` is the run's own (the local executor runs cells on it; workers build theirs)."""
    config.check()
    if config.kind == "process":
        return ProcessExecutor(base, config.workers, _gpu_count() if base.device == "cuda" else 0)
    if config.kind == "ray":
        return RayExecutor(base, config, requested_device)
    if config.kind == "slurm":
        return SlurmExecutor(base, config.slurm or SlurmOptions(), requested_device, cell_worker)
    return LocalExecutor(base, runner)


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count()


# -- dispatch ------------------------------------------------------------------------------------


def group_cells(cells: Iterable[Cell]) -> list[deque]:
    """Cells sharing a (model, dataset, seed), in first-seen order; each group runs on one slot."""
    groups: dict[tuple, deque] = {}
    for cell in cells:
        groups.setdefault((cell.model, cell.dataset, cell.seed), deque()).append(cell)
    return list(groups.values())


class Sink:
    """What the dispatcher tells the run about: a cell started, a cell's record is ready."""

    def started(self, cell: Cell) -> None: ...

    def finished(self, cell: Cell, result: CellResult) -> None: ...

    def stop_requested(self) -> bool:
        return False


def dispatch(executor: Executor, cells: Sequence[Cell], sink: Sink) -> bool:
    """Run ``cells`` on ``executor``'s slots; return False when a hard interrupt (a
    ``KeyboardInterrupt``) stopped it, after recording the cells in flight as ``interrupted``."""
    queue = deque(group_cells(cells))
    if not queue:
        return True
    if isinstance(executor, SlurmExecutor):  # a batch scheduler takes whole groups
        return executor.run_groups(queue, sink)
    slots = executor.start(len(queue))
    state = _Dispatch(queue, sink)
    try:
        for slot in slots:
            state.feed(slot, deque())
        state.drain()
    except KeyboardInterrupt:
        executor.shutdown(kill=True)
        for cell in state.in_flight_cells():
            sink.finished(cell, interrupted_result(cell))
        return False
    executor.shutdown()
    return True


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
