"""``--executor slurm``: cells as Slurm jobs, through submitit.

One job per group of cells that share work (``tlbench.executors.base.group_cells``: a model,
dataset and seed, or with GPUs a model and dataset with its seeds in sequence); on Slurm the
groups go in as one job array. A job runs its cells one after another on its own ``CellRunner``
(checking each first: the parent builds no contexts for remote cells), so the model and data
stay in memory, and leaves each cell's result in the run's ``slurm/`` folder the moment it is
done; the parent polls that folder and the jobs, and records each result once. A job that ends
without finishing its cells (cancelled, out of memory, node failure) costs only those cells:
they are recorded ``failed`` with one line naming the job and its state, and ``--resume
--retry-failed`` reruns them. A job pre-empted or out of time (Slurm signals it first)
checkpoints itself as its cells not yet done and submitit requeues it; nothing finished runs
twice.

Options (``--executor-opt KEY=VALUE``; ``--slurm-partition`` and the other ``--slurm-*`` flags
are aliases): ``partition``, ``time`` (minutes, default 60), ``cpus_per_task`` (default 1),
``gpus_per_task`` (default 0), ``mem``, ``array_parallelism``, ``local`` (true: run the jobs on
this machine through submitit's local executor, which is how the tests exercise every path
without a cluster), and any other key, passed to sbatch (``account=my-lab``). submitit is
imported only when used.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import shutil
import socket
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tlbench.cell import CellResult, StopRun, failed_result, interrupted_result
from tlbench.components import Cell
from tlbench.errors import UserError, first_line
from tlbench.executors.base import (
    Executor,
    Option,
    cell_worker,
    local_cores,
    no_gpu_requested,
    parse_known,
)
from tlbench.suite import config_hash

# A job's folder name under the run directory: logs, submission pickles, per-cell results.
FOLDER = "slurm"
# submitit parameters that take a list: repeated --slurm KEY=VALUE values accumulate.
_LIST_PARAMETERS = ("setup", "teardown", "srun_args")


@dataclass(frozen=True)
class SlurmOptions:
    """The resources of each job, from ``--slurm-*`` options (submitit's parameter names)."""

    partition: str | None = None
    time_min: int = 60  # Slurm's --time; submitit's own default (5 minutes) is a trap
    cpus_per_task: int = 1
    gpus_per_task: int = 0
    mem: str | None = None  # Slurm syntax: 16G, 500M
    array_parallelism: int | None = None  # jobs of the array running at once
    extra: tuple[tuple[str, str], ...] = ()  # --slurm KEY=VALUE: any other sbatch option
    local: bool = False  # run the jobs here, through submitit's local executor

    def check(self) -> None:
        """Fail in one line before any work: bad numbers, no submitit, no Slurm."""
        for option, value in (
            ("time", self.time_min),
            ("cpus_per_task", self.cpus_per_task),
            ("array_parallelism", self.array_parallelism),
        ):
            if value is not None and value < 1:
                raise UserError(
                    f"--executor-opt {option}={value}: expected an integer >= 1, got {value}"
                )
        if self.gpus_per_task < 0:
            raise UserError(
                f"--executor-opt gpus_per_task={self.gpus_per_task}: expected an integer >= 0"
            )
        try:
            import submitit  # noqa: F401
        except ImportError:
            raise UserError(
                "--executor slurm needs submitit, which is not installed: pip install 'tlbench[slurm]'"
            ) from None
        missing = [tool for tool in ("sbatch", "srun") if shutil.which(tool) is None]
        if not self.local and missing:
            raise UserError(
                f"--executor slurm: no Slurm on this machine ({' and '.join(missing)} not on PATH); run tlbench "
                "on a Slurm login node, or add --executor-opt local=true to run the jobs here through "
                "submitit's local executor"
            )

    def parameters(self, job_name: str) -> dict[str, Any]:
        """What ``AutoExecutor.update_parameters`` gets: one task per job, one node."""
        params: dict[str, Any] = {
            "name": job_name,
            "timeout_min": self.time_min,
            "cpus_per_task": self.cpus_per_task,
            "gpus_per_node": self.gpus_per_task,  # one task per job: per node = per task
            "nodes": 1,
            "tasks_per_node": 1,
        }
        slurm = {"partition": self.partition, "mem": self.mem}
        slurm["array_parallelism"] = self.array_parallelism
        params.update({f"slurm_{k}": v for k, v in slurm.items() if v is not None})
        params.update(self._extra_parameters())
        return params

    def _extra_parameters(self) -> dict[str, Any]:
        from submitit import SlurmExecutor

        known = SlurmExecutor._valid_parameters()
        params: dict[str, Any] = {}
        sbatch: dict[str, str] = {}
        for key, value in self.extra:
            if key in _LIST_PARAMETERS:
                params.setdefault(f"slurm_{key}", []).append(value)
            elif key in known:
                params[f"slurm_{key}"] = value
            else:  # any other sbatch option: #SBATCH --key=value
                sbatch[key] = value
        if sbatch:
            params["slurm_additional_parameters"] = sbatch
        return params


# The typed options, by --executor-opt key (Slurm's own spelling: time is --time, in minutes).
OPTIONS = (
    Option("partition", str, "partition of the jobs"),
    Option("time", int, "time limit of each job in minutes (default 60)", minimum=1),
    Option("cpus_per_task", int, "CPUs per job (default 1)", minimum=1),
    Option("gpus_per_task", int, "GPUs per job (default 0)", minimum=0),
    Option("mem", str, "memory per job, e.g. 16G"),
    Option("array_parallelism", int, "jobs of the array running at once", minimum=1),
    Option("local", bool, "run the jobs here through submitit's local executor"),
)
_FIELDS = {"time": "time_min"}


def slurm_options(pairs: Iterable[tuple[str, str]]) -> SlurmOptions:
    """``SlurmOptions`` from ``--executor-opt`` pairs: the keys above become fields, any other
    key is an sbatch option (``account=my-lab``, ``qos=low``, ``constraint=a100``)."""
    values, extra = parse_known("slurm", OPTIONS, pairs, open_ended=True)
    fields = {_FIELDS.get(key, key): value for key, value in values.items()}
    return SlurmOptions(**fields, extra=tuple(extra))


class JobEnded(Exception):
    """A job ended without finishing some of its cells; ``str()`` is the line to record."""


# -- the job: runs on a cluster node ---------------------------------------------------------------


@dataclass
class GroupJob:
    """What one Slurm job runs: its group's cells, in order, each result saved as it finishes.

    submitit calls ``checkpoint`` when Slurm pre-empts the job or its time runs out; the job
    is requeued as itself, and on its next start skips the cells whose results are saved."""

    config: Any  # tlbench.executors.base.WorkerConfig
    cells: tuple[Cell, ...]
    outbox: str
    stop_file: str
    worker: Callable[[Any], Callable[[Cell], CellResult]] = cell_worker

    def __call__(self) -> list[CellResult]:
        try:
            return self._run_cells()
        except _JobSignalled as exc:  # requeued by submitit: the job ends as submitit asked
            raise SystemExit(exc.code) from None

    def _run_cells(self) -> list[CellResult]:
        import submitit
        import torch

        _signals_end_the_job()
        torch.set_num_threads(self.config.threads or 1)
        job_id = submitit.JobEnvironment().job_id
        outbox = Path(self.outbox)
        results, run = [], None
        for cell in self.cells:
            done = outbox / f"{config_hash(cell)}.pkl"
            if done.exists():  # finished before a requeue
                results.append(pickle.loads(done.read_bytes()))
                continue
            if os.path.exists(self.stop_file):  # the parent was asked to stop: start no more
                break
            run = run or self.worker(self.config)
            started = {"job_id": job_id, "host": socket.gethostname(), "pid": os.getpid()}
            _write(outbox / f"{config_hash(cell)}.started", json.dumps(started).encode())
            result = run(cell)
            result.record.setdefault("worker", {})["job_id"] = job_id
            _write(done, pickle.dumps(result))
            results.append(result)
        return results

    def checkpoint(self, *args, **kwargs):
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self)


class _JobSignalled(StopRun):
    """submitit's handler of a pre-emption or time-out signal ended the job (it checkpointed
    and requeued it): a ``StopRun``, which passes through the cell running at that moment
    instead of failing it as plugin code's own ``SystemExit`` would."""

    def __init__(self, code):
        super().__init__(code)
        self.code = code


def _signals_end_the_job() -> None:
    """Wrap submitit's signal handlers so the ``SystemExit`` they raise becomes ``_JobSignalled``."""
    import signal

    for signum in {signal.SIGTERM, signal.SIGCONT, signal.SIGUSR1, signal.SIGUSR2}:
        original = signal.getsignal(signum)
        if not callable(original) or getattr(original, "_tlbench_wrapped", False):
            continue

        def handler(number, frame, original=original):
            try:
                original(number, frame)
            except SystemExit as exc:
                raise _JobSignalled(exc.code) from None

        handler._tlbench_wrapped = True  # type: ignore[attr-defined]
        signal.signal(signum, handler)


def _write(path: Path, data: bytes) -> None:
    """Whole or not at all: the parent may read the folder at any moment. No fsync: a result
    lost with its node is a cell rerun, and the rename is what another machine sees."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_bytes(data)
    os.replace(partial, path)


# -- the parent: submits, polls, records ------------------------------------------------------------


@dataclass
class _Tracked:
    """A submitted job and what the parent has heard from it."""

    job: Any  # submitit.Job
    cells: list[Cell]
    outbox: Path
    started: set[str] = field(default_factory=set)
    recorded: set[str] = field(default_factory=set)


class SlurmExecutor(Executor):
    """Runs whole groups as jobs, polling their results into the sink."""

    name = "slurm"
    OPTIONS = OPTIONS
    checks_in_parent = False

    @classmethod
    def parse_options(cls, config) -> SlurmOptions:
        return slurm_options(config.options)

    @classmethod
    def check(cls, config, device: str = "auto") -> None:
        if config.workers is not None:
            raise UserError(
                "--workers does not apply to --executor slurm: Slurm runs the jobs; cap how "
                "many at once with --executor-opt array_parallelism=N"
            )
        options = cls.parse_options(config)
        options.check()
        if (device == "auto" or device.startswith("cuda")) and options.gpus_per_task <= 0:
            raise no_gpu_requested(cls.name, device, "gpus_per_task")

    @classmethod
    def create(cls, config, base, runner, requested_device) -> SlurmExecutor:
        return cls(base, cls.parse_options(config), requested_device)

    def __init__(
        self,
        base,
        options: SlurmOptions,
        requested_device: str,
        worker: Callable[[Any], Callable[[Cell], CellResult]] = cell_worker,
    ):
        if requested_device.startswith("cuda") and options.gpus_per_task <= 0:
            raise no_gpu_requested(self.name, requested_device, "gpus_per_task")
        # Jobs run on other machines: the device is what the job asks for, not what this one has.
        device = "cuda" if options.gpus_per_task > 0 else "cpu"
        self.base = replace(
            base,
            executor="slurm",
            device=device,
            threads=options.cpus_per_task,
            visible_gpu=None,
            check_cells=True,
        )
        self.groups_by_seed = device == "cpu"
        self.options, self.worker = options, worker
        self.folder = Path(base.run_dir) / FOLDER
        self.poll_s = 0.5 if options.local else 5.0
        self.tracked: list[_Tracked] = []

    def describe(self) -> dict:
        return {"kind": self.name, **dataclasses.asdict(self.options)}

    def run(self, groups, sink) -> bool:
        return self.run_groups(groups, sink)

    def shutdown(self, kill: bool = False) -> None:
        """Cancel the jobs still running or waiting (``kill``): a stopped run leaves none."""
        if kill:
            for tracked in self.tracked:
                _cancel(tracked.job)

    # The loop: submit, then poll the jobs and their results until every job has ended.

    def run_groups(self, groups: Iterable[Iterable[Cell]], sink) -> bool:
        """Run every group as a job; False when a hard interrupt stopped the run (the cells in
        flight are then recorded ``interrupted``)."""
        waiting = deque(list(group) for group in groups)
        inbox = self.folder / "cells" / uuid.uuid4().hex[:12]
        stop_file = inbox / "STOP"
        executor = self._executor(next(iter(waiting))[0].suite if waiting else "suite")
        running: list[_Tracked] = []
        stopping = False
        try:
            while waiting or running:
                if not stopping and sink.stop_requested():
                    stopping = True
                    self._stop(stop_file, running, waiting)
                if waiting:
                    running += self._submit(executor, waiting, inbox, stop_file, running)
                for tracked in list(running):
                    self._collect(tracked, sink)
                    if tracked.job.done():
                        self._finished(tracked, sink, stopping)
                        running.remove(tracked)
                if running:
                    time.sleep(self.poll_s)
        except KeyboardInterrupt:
            for tracked in running:
                _cancel(tracked.job)
            for tracked in running:
                self._collect(tracked, sink)
                for cell in self._unrecorded(tracked, started=True):
                    sink.finished(cell, interrupted_result(cell))
            return False
        return True

    def _executor(self, suite: str):
        import submitit

        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            executor = submitit.AutoExecutor(
                folder=self.folder, cluster="local" if self.options.local else "slurm"
            )
            executor.update_parameters(**self.options.parameters(f"tlbench-{suite}"))
        except (ValueError, NameError, AssertionError, RuntimeError) as exc:
            raise UserError(
                f"--executor slurm: submitit refuses its options: {first_line(exc)}"
            ) from None
        return executor

    def _submit(self, executor, waiting: deque, inbox: Path, stop_file: Path, running) -> list:
        """On Slurm, every waiting group in one job array; locally, as many as may run at once."""
        room = len(waiting)
        if self.options.local:
            room = (self.options.array_parallelism or local_cores()) - len(running)
        batch = [waiting.popleft() for _ in range(min(room, len(waiting)))]
        if not batch:
            return []
        jobs = []
        first = len(self.tracked)
        outboxes = [inbox / f"group-{first + i:04d}" for i in range(len(batch))]
        for outbox in outboxes:
            outbox.mkdir(parents=True, exist_ok=True)
        calls = [
            GroupJob(
                replace(self.base, slot=first + i),
                tuple(cells),
                str(outboxes[i]),
                str(stop_file),
                self.worker,
            )
            for i, cells in enumerate(batch)
        ]
        try:
            if len(calls) > 1 and not self.options.local:
                with executor.batch():
                    jobs = [executor.submit(call) for call in calls]
            else:
                jobs = [executor.submit(call) for call in calls]
        except Exception as exc:  # sbatch refused (bad partition, account, ...)
            raise UserError(
                f"--executor slurm: submitting jobs failed: {_error_line(exc)}"
            ) from None
        tracked = [
            _Tracked(job, list(cells), outboxes[i])
            for i, (job, cells) in enumerate(zip(jobs, batch, strict=True))
        ]
        self.tracked += tracked
        return tracked

    def _collect(self, tracked: _Tracked, sink) -> None:
        """Tell the run about the cells the job started and finished since the last look."""
        for cell in tracked.cells:
            key = config_hash(cell)
            if key in tracked.recorded:
                continue
            if key not in tracked.started and (tracked.outbox / f"{key}.started").exists():
                tracked.started.add(key)
                sink.started(cell)
            done = tracked.outbox / f"{key}.pkl"
            if done.exists():
                self._record(tracked, cell, pickle.loads(done.read_bytes()), sink)

    def _record(self, tracked: _Tracked, cell: Cell, result: CellResult, sink) -> None:
        key = config_hash(cell)
        if key in tracked.recorded:
            return
        if key not in tracked.started:
            tracked.started.add(key)
            sink.started(cell)
        tracked.recorded.add(key)
        sink.finished(cell, result)

    def _finished(self, tracked: _Tracked, sink, stopping: bool) -> None:
        """The job ended: record what it returned, then what it left undone."""
        self._collect(tracked, sink)
        results, problem = self._outcome(tracked)
        by_hash = {r.record.get("config_hash"): r for r in results}
        for cell in tracked.cells:
            if config_hash(cell) in by_hash:
                self._record(tracked, cell, by_hash[config_hash(cell)], sink)
        job = tracked.job.job_id
        for cell in self._unrecorded(tracked, started=False):
            ran = config_hash(cell) in tracked.started
            if stopping:
                if ran:  # stopped by us while it ran
                    sink.finished(cell, interrupted_result(cell))
                continue  # never started: not run, like any cell after a stop
            when = "while this cell was running" if ran else "before this cell started"
            message = f"Slurm job {job} ended {when} ({problem}); log: {_log(tracked.job)}"
            sink.finished(cell, failed_result(cell, message, JobEnded(message)))

    def _outcome(self, tracked: _Tracked) -> tuple[list[CellResult], str]:
        """What the job returned, and, when it returned nothing, why."""
        from submitit.core.utils import FailedJobError

        job = tracked.job
        # A local job writes its result before it ends; on a cluster the shared disk may show
        # it late, and ``exception()`` waits for it a while.
        if self.options.local and not job.paths.result_pickle.exists():
            return [], "its process ended without a result"
        exc = job.exception()
        if exc is None:
            return list(job.result()), "completed"
        if isinstance(exc, FailedJobError):  # our code raised in the job (a plugin missing there)
            return [], f"it raised {_raised(exc)}"
        return [], f"state {job.state}, no result"

    def _unrecorded(self, tracked: _Tracked, started: bool) -> list[Cell]:
        return [
            cell
            for cell in tracked.cells
            if config_hash(cell) not in tracked.recorded
            and (not started or config_hash(cell) in tracked.started)
        ]

    def _stop(self, stop_file: Path, running: list[_Tracked], waiting: deque) -> None:
        """First Ctrl-C: jobs finish the cell they run and start no more; jobs that have not
        started a cell yet (still queued) are cancelled, and no more are submitted."""
        stop_file.parent.mkdir(parents=True, exist_ok=True)
        stop_file.touch()
        waiting.clear()
        for tracked in running:
            self._refresh_started(tracked)
            if not tracked.started:
                _cancel(tracked.job)

    def _refresh_started(self, tracked: _Tracked) -> None:
        for cell in tracked.cells:
            if (tracked.outbox / f"{config_hash(cell)}.started").exists():
                tracked.started.add(config_hash(cell))


def _cancel(job) -> None:
    try:
        job.cancel(check=False)
    except Exception:  # already gone; scancel missing on a broken node
        pass


def _log(job) -> str:
    return str(job.paths.stderr)


def _raised(exc: BaseException) -> str:
    """The exception line of the job's traceback, which submitit frames with dashed lines."""
    parts = [p for p in str(exc).split("-" * 22) if p.strip()]
    trace = parts[1] if len(parts) > 2 else str(exc)
    lines = [line.strip() for line in trace.splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def _error_line(exc: BaseException) -> str:
    """sbatch's own complaint (``sbatch: error: invalid partition specified: gpux``) when the
    message holds one, else its first line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    errors = [line for line in lines if "error:" in line.lower()]
    return errors[-1] if errors else first_line(exc)
