"""The Ray executor on a multi-node cluster, simulated on this machine by ``ray.cluster_utils``:
a head that schedules (no CPUs) and two worker nodes of one CPU each, each with its own cache
directory (``TLBENCH_NODE_CACHE``), as nodes that share no disk would have.

Cells land on both nodes, each is recorded once by the parent with its predictions, and the
results equal the in-process loop's. A node lost mid-run fails only the cells it held, with one
line naming the node; ``--resume --retry-failed`` completes them on the node that is left.
"""

from __future__ import annotations

import io
import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'tlbench[ray]'")

SUITE = """
name = "ray-nodes"
seeds = [0, 1, 2]
[[models]]
name = "scratch:test_resnet"
input_size = 32
[[datasets]]
name = "digits"
train_size = 100
val_size = 50
test_size = 100
[[strategies]]
name = "linear-probe"
l2 = [10.0]
refine_steps = 0
refit = false
"""


class Nodes:
    """A running cluster, its worker nodes by Ray node id, and each node's own cache."""

    def __init__(self, root: Path):
        from ray.cluster_utils import Cluster

        self.cluster = Cluster(
            initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False}
        )
        self.caches: dict[str, Path] = {}
        self.nodes = {}
        for name in ("node-a", "node-b"):
            cache = root / f"{name}-cache"
            # A raylet and its workers inherit the environment they start with, like `ray start`.
            os.environ["TLBENCH_NODE_CACHE"] = str(cache)
            try:
                node = self.cluster.add_node(num_cpus=1)
            finally:
                del os.environ["TLBENCH_NODE_CACHE"]
            self.nodes[node.node_id] = node
            self.caches[node.node_id] = cache
        self.cluster.wait_for_nodes()

    def remove(self, node_id: str) -> None:
        self.cluster.remove_node(self.nodes.pop(node_id))


@pytest.fixture(scope="module")
def nodes(tmp_path_factory):
    nodes = Nodes(tmp_path_factory.mktemp("ray-nodes"))
    yield nodes
    nodes.cluster.shutdown()


@pytest.fixture(scope="module")
def suite(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("suite") / "ray-nodes.toml"
    path.write_text(SUITE)
    return path


@pytest.fixture(scope="module")
def local_run(suite, tmp_path_factory):
    """The in-process loop's records and run directory: what the cluster must reproduce."""
    from tlbench.runner import run_suite

    tmp = tmp_path_factory.mktemp("local")
    outcome = run_suite(_request(tmp, suite))
    assert outcome.exit_code == 0
    return outcome


def _request(tmp: Path, suite: Path, **options):
    from tlbench.planning import RunRequest

    options.setdefault("out_dir", tmp / "run")
    return RunRequest(
        suite=suite,
        device="cpu",
        cache_dir=tmp / "driver-cache",
        results_root=tmp / "results",
        **options,
    )


def _on_cluster(nodes: Nodes):
    from tlbench.executors import ExecutorConfig

    return ExecutorConfig("ray", options=(("address", nodes.cluster.address),))


def _lines(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "cells.jsonl").read_text().splitlines()]


def _predictions(outcome) -> dict:
    from tlbench.predictions import read_predictions

    return {r["seed"]: read_predictions(outcome.run_dir, r) for r in outcome.records}


def _namespaces(cache: Path) -> set[str]:
    from tlbench.cache import Cache

    return {row["namespace"] for row in Cache(cache).info() if row["entries"]}


def test_cells_land_on_both_nodes_once_each_and_equal_the_local_loop(
    nodes, suite, local_run, tmp_path
):
    from tlbench.runner import run_suite

    outcome = run_suite(_request(tmp_path, suite, executor=_on_cluster(nodes)))

    assert outcome.exit_code == 0, [r.get("error") for r in outcome.records]
    lines = _lines(outcome.run_dir)
    assert sorted(Counter(r["config_hash"] for r in lines).values()) == [1, 1, 1]
    ran_on = {r["worker"]["node_id"] for r in outcome.records}
    assert ran_on == set(nodes.nodes), "each of the two worker nodes ran cells"
    assert {r["worker"]["executor"] for r in outcome.records} == {"ray"}

    def metrics(records):
        return {r["seed"]: r["metrics"]["top1"] for r in records}

    assert metrics(outcome.records) == metrics(local_run.records)
    # Predictions came back with each result and the parent wrote them into its run directory.
    ours, theirs = _predictions(outcome), _predictions(local_run)
    assert ours.keys() == theirs.keys() == {0, 1, 2}
    assert all(np.array_equal(ours[s].true_prob, theirs[s].true_prob) for s in ours)

    # No shared disk: each node computed features into its own cache, none into the parent's.
    node_caches = [_namespaces(nodes.caches[node]) for node in ran_on]
    assert all(any("feature" in ns for ns in found) for found in node_caches), node_caches
    assert not any("feature" in ns for ns in _namespaces(tmp_path / "driver-cache"))


class _RemoveNodeAfterItsFirstCell:
    """A progress display that, when the first cell comes back, takes that cell's node away:
    its slot's next cell then goes to a node that is gone."""

    def __init__(self, nodes: Nodes):
        from rich.console import Console

        self.nodes, self.lost = nodes, None
        self.console = Console(file=io.StringIO())

    def cell_finished(self, cell, record) -> None:
        if self.lost is None:
            self.lost = record["worker"]["node_id"]
            self.nodes.remove(self.lost)

    def start(self, total: int, done: int = 0) -> None: ...

    def stop(self) -> None: ...

    def status(self, message: str) -> None: ...

    def cell_started(self, cell) -> None: ...


@pytest.mark.slow
def test_a_lost_node_fails_only_its_cells_and_resume_completes_them(
    nodes, suite, local_run, tmp_path
):
    from tlbench.runner import run_suite

    progress = _RemoveNodeAfterItsFirstCell(nodes)
    first = run_suite(_request(tmp_path, suite, executor=_on_cluster(nodes)), progress=progress)

    failed = [r for r in first.records if r["status"] == "failed"]
    assert len(failed) == 1 and first.exit_code == 1, [r["status"] for r in first.records]
    message = failed[0]["error"]["message"]
    assert "\n" not in message and f"Ray node {progress.lost}" in message and "was lost" in message
    survivor = set(nodes.nodes)
    assert {r["worker"]["node_id"] for r in first.records if r["status"] == "ok"} <= (
        survivor | {progress.lost}
    )

    again = run_suite(
        _request(
            tmp_path,
            suite,
            executor=_on_cluster(nodes),
            resume=str(first.run_dir),
            retry_failed=True,
        )
    )
    assert again.exit_code == 0 and again.ran == 1
    assert [r["status"] for r in again.records] == ["ok"] * 3
    assert {r["worker"]["node_id"] for r in again.records if r["seed"] == failed[0]["seed"]} == (
        survivor
    )
    assert {r["seed"]: r["metrics"]["top1"] for r in again.records} == {
        r["seed"]: r["metrics"]["top1"] for r in local_run.records
    }
    counts = Counter(r["config_hash"] for r in _lines(first.run_dir))
    assert counts[failed[0]["config_hash"]] == 2 and sorted(counts.values()) == [1, 1, 2]


# -- what a slot does after its node is lost (no cluster needed) ---------------------------------


class _Actor:
    """Stands in for a Ray actor handle: ``run.remote(cell)`` and ``node.remote()``."""

    def __init__(self, name: str):
        self.name = name
        self.run = self.node = self

    def remote(self, *args):
        return self


class _ActorClass:
    def __init__(self):
        self.started = []

    def remote(self, config):
        self.started.append(_Actor(f"actor-{len(self.started)}"))
        return self.started[-1]


@pytest.mark.parametrize(
    "free, expected",
    [
        ({"CPU": 1.0}, "a new actor"),  # the cluster has room: a replacement starts
        ({}, "the sibling's actor"),  # no room: queue on a survivor rather than wait forever
    ],
)
def test_a_slot_whose_node_is_lost_restarts_where_there_is_room_else_joins_a_survivor(
    free, expected, monkeypatch
):
    import ray

    from tlbench.executors.ray import RaySlot

    monkeypatch.setattr(ray, "kill", lambda actor, no_restart=True: None)
    monkeypatch.setattr(ray, "available_resources", lambda: free)
    actors, slots = _ActorClass(), []
    slots.extend(RaySlot(actors, object(), slots, {"CPU": 1.0, "GPU": 0.0}) for _ in range(2))
    lost, survivor = slots

    lost.restart()

    replacement = actors.started[2] if expected == "a new actor" else survivor.actor
    assert lost.actor is replacement and not lost.no_node_left


def test_with_no_node_left_the_slots_cells_fail_at_once_with_one_line(monkeypatch):
    import ray

    from tlbench.executors.ray import RaySlot, WorkerLost

    monkeypatch.setattr(ray, "kill", lambda actor, no_restart=True: None)
    monkeypatch.setattr(ray, "available_resources", lambda: {})
    slot = RaySlot(_ActorClass(), object(), None, {"CPU": 1.0})

    slot.restart()
    outcome = slot.submit(object())

    assert isinstance(outcome.exception(timeout=0), WorkerLost)
    assert str(outcome.exception()) == (
        "no Ray node is left with room for this cell; the run goes on without it"
    )
