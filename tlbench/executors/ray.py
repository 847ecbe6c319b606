"""``--executor ray``: one Ray actor per slot, on a local cluster or the one at ``address``.

Options (``--executor-opt KEY=VALUE``; the older ``--ray-address``, ``--cpus-per-cell`` and
``--gpus-per-cell`` flags are aliases): ``address``, ``cpus_per_cell`` (default 1),
``gpus_per_cell`` (default 0). The cells run where the actors are, so the parent checks nothing
itself: each actor checks its cells before running them.
"""

from __future__ import annotations

import os
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import Any

from tlbench.errors import UserError
from tlbench.executors.base import (
    Option,
    Slot,
    SlotExecutor,
    WorkerConfig,
    local_cores,
    make_runner,
    no_gpu_requested,
    on_this_node,
    parse_known,
    run_with,
)


@dataclass(frozen=True)
class RayOptions:
    address: str | None = None
    cpus_per_cell: float = 1.0
    gpus_per_cell: float = 0.0


class _RayWorker:
    """The Ray actor behind a slot (wrapped with ``ray.remote`` when Ray is used)."""

    def __init__(self, config: WorkerConfig):
        import torch

        if config.threads is not None:
            torch.set_num_threads(config.threads)
        self.config = on_this_node(config)
        self.runner = make_runner(self.config)

    def run(self, cell):
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

    def submit(self, cell) -> Future:
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


class RayExecutor(SlotExecutor):
    name = "ray"
    checks_in_parent = False
    OPTIONS = (
        Option("address", str, "Ray cluster to join (default: start a local one)"),
        Option(
            "cpus_per_cell", float, "CPUs each cell reserves (default 1)", minimum=0, strict=True
        ),
        Option("gpus_per_cell", float, "GPUs each cell reserves (default 0)", minimum=0),
    )

    @classmethod
    def parse_options(cls, config) -> RayOptions:
        values, _ = parse_known(cls.name, cls.OPTIONS, config.options)
        return RayOptions(**values)

    @classmethod
    def check(cls, config, device: str = "auto") -> None:
        options = cls.parse_options(config)
        gpus = options.gpus_per_cell > 0
        if (device == "auto" or device.startswith("cuda")) and not gpus:
            raise no_gpu_requested(cls.name, device, "gpus_per_cell")
        try:
            import ray  # noqa: F401
        except ImportError:
            raise UserError(
                "--executor ray needs Ray, which is not installed: pip install 'tlbench[ray]'"
            ) from None

    @classmethod
    def create(cls, config, base, runner, requested_device) -> RayExecutor:
        return cls(base, config.workers, cls.parse_options(config))

    def __init__(self, base: WorkerConfig, workers: int | None, options: RayOptions):
        import ray

        self.ray, self.workers, self.options = ray, workers, options
        # Actors run on other machines: the device is what a cell reserves, not what this has.
        device = "cuda" if options.gpus_per_cell > 0 else "cpu"
        self.base = replace(
            base,
            executor="ray",
            device=device,
            threads=max(1, int(options.cpus_per_cell)),
            check_cells=True,
        )
        self.groups_by_seed = device == "cpu"
        self.started_ray = False

    def start(self, groups: int) -> list[Slot]:
        self._init_ray()
        actor = self.ray.remote(_RayWorker).options(
            num_cpus=self.options.cpus_per_cell, num_gpus=self.options.gpus_per_cell
        )
        count = max(1, min(self.workers or self._capacity(), groups))
        needs = {"CPU": self.options.cpus_per_cell, "GPU": self.options.gpus_per_cell}
        self.slots: list[RaySlot] = []
        self.slots.extend(
            RaySlot(actor, replace(self.base, slot=i), self.slots, needs) for i in range(count)
        )
        return self.slots

    def _init_ray(self) -> None:
        if self.ray.is_initialized():
            return
        options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if self.options.address:
            options["address"] = self.options.address
        else:
            # A local cluster: its workers import plugins from where this process does.
            options["num_cpus"] = local_cores()
            options["runtime_env"] = {
                "env_vars": {
                    "PYTHONPATH": os.pathsep.join(p for p in _import_path() if p),
                    **_run_settings(),
                }
            }
        try:
            self.ray.init(**options)
        except ConnectionError as exc:
            raise UserError(
                f"--executor-opt address={self.options.address}: cannot connect to a Ray cluster: {exc}"
            ) from None
        self.started_ray = True

    def _capacity(self) -> int:
        resources = self.ray.cluster_resources()
        slots = int(resources.get("CPU", 1) // self.options.cpus_per_cell)
        if self.options.gpus_per_cell > 0:
            slots = min(slots, int(resources.get("GPU", 0) // self.options.gpus_per_cell))
        if slots < 1:
            raise UserError(
                f"the Ray cluster ({resources.get('CPU', 0)} CPUs, {resources.get('GPU', 0)} GPUs) cannot fit one cell with cpus_per_cell={self.options.cpus_per_cell} gpus_per_cell={self.options.gpus_per_cell}"
            )
        return slots

    def shutdown(self, kill: bool = False) -> None:
        """Kill every actor, then stop the local cluster this run started (idempotent)."""
        super().shutdown(kill)
        if self.started_ray:
            self.started_ray = False
            self.ray.shutdown()

    def describe(self) -> dict:
        return {"kind": self.name, "workers": self.workers, **self.options.__dict__}


def _run_settings() -> dict[str, str]:
    """The run's GPU settings (``--deterministic``, ``TLBENCH_TF32``) for the actors."""
    names = ("TLBENCH_DETERMINISTIC", "TLBENCH_TF32", "CUBLAS_WORKSPACE_CONFIG")
    return {name: os.environ[name] for name in names if name in os.environ}


def _import_path() -> list[str]:
    import sys

    return [os.path.abspath(p) for p in sys.path if p and os.path.isdir(p)]
