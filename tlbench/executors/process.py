"""``--executor process``: N spawned worker processes, each a one-worker pool (a slot).

With CUDA and an unpinned device (``--device auto`` or ``cuda``) there is one worker per visible
GPU by default, each seeing only its own GPU (``CUDA_VISIBLE_DEVICES`` set to one entry of the
parent's: a scheduler's allocation such as ``4,5,6,7`` is respected, never replaced by
``0..3``), and a group is a (model, dataset) with its seeds in sequence. Without GPUs there is one
worker per core. torch threads are cores // workers each.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import replace
from typing import Any

from tlbench.executors.base import (
    Slot,
    SlotExecutor,
    WorkerConfig,
    local_cores,
    make_runner,
    run_with,
    visible_gpus,
)

logger = logging.getLogger("tlbench.executors")

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


def _run_in_process_worker(cell) -> Any:
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

    def submit(self, cell) -> Future:
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


def worker_plan(
    workers: int | None, gpus: list[str], cores: int, groups: int
) -> list[tuple[str | None, int]]:
    """(``CUDA_VISIBLE_DEVICES`` value or None, torch threads) for each worker to start: one
    worker per GPU by default (else one per core), never more than there are groups; with more
    workers than GPUs, they share the GPUs round robin."""
    wanted = workers or (len(gpus) if gpus else cores)
    count = max(1, min(wanted, groups))
    threads = max(1, cores // count)
    return [(gpus[i % len(gpus)] if gpus else None, threads) for i in range(count)]


class ProcessExecutor(SlotExecutor):
    name = "process"

    @classmethod
    def create(cls, config, base, runner, requested_device) -> ProcessExecutor:
        # Only an unpinned CUDA device spreads over GPUs; cuda:N keeps every worker on N.
        gpus = visible_gpus() if base.device == "cuda" else []
        return cls(base, config.workers, gpus)

    def __init__(self, base: WorkerConfig, workers: int | None, gpus: list[str] | int = ()):
        if isinstance(gpus, int):  # a count: GPUs 0..count-1
            gpus = [str(i) for i in range(gpus)]
        self.base, self.workers, self.gpus = base, workers, list(gpus)
        self.groups_by_seed = not self.gpus

    def start(self, groups: int) -> list[Slot]:
        plan = worker_plan(self.workers, self.gpus, local_cores(), groups)
        if self.gpus and len(plan) > len(self.gpus):
            logger.warning(
                "%d workers share %d GPUs (CUDA_VISIBLE_DEVICES=%s): each holds its own CUDA "
                "context and model",
                len(plan),
                len(self.gpus),
                ",".join(self.gpus),
            )
        self.slots = [
            ProcessSlot(
                replace(self.base, executor="process", slot=i, threads=threads, visible_gpu=gpu)
            )
            for i, (gpu, threads) in enumerate(plan)
        ]
        return self.slots

    def describe(self) -> dict:
        return {"kind": self.name, "workers": self.workers, "gpus": self.gpus}
