"""Executors: worker processes and Ray give the same records as the in-process loop, keep each
(model, dataset, seed) group on one worker, and survive a worker that dies."""

from __future__ import annotations

import os
import sys
from collections import deque

import pytest
from helpers import metrics_by_cell, request, tiny_host, tiny_suite

from tlbench.errors import UserError
from tlbench.executors import ExecutorConfig
from tlbench.executors.base import group_cells


def test_groups_keep_cells_sharing_model_dataset_and_seed_together(tmp_path):
    from tlbench.planning import Selection, plan_cells
    from tlbench.suite import load_suite

    cells = plan_cells(
        load_suite(tiny_suite(tmp_path / "s.toml", seeds=(0, 1, 2)), tiny_host().registry),
        Selection(),
    )
    groups = group_cells(reversed(cells))
    assert [len(g) for g in groups] == [2, 2, 2]
    assert all(
        isinstance(g, deque) and len({(c.model, c.dataset, c.seed) for c in g}) == 1 for g in groups
    )


@pytest.fixture(scope="module")
def local_metrics(tmp_path_factory):
    """The in-process loop's results: what every executor must reproduce."""
    from tlbench.runner import run_suite

    tmp_path = tmp_path_factory.mktemp("local")
    return metrics_by_cell(
        run_suite(request(tmp_path, tiny_suite(tmp_path / "s.toml")), tiny_host()).records
    )


def test_process_executor_matches_local_and_keeps_groups_on_one_worker(tmp_path, local_metrics):
    from tlbench.runner import run_suite

    suite = tiny_suite(tmp_path / "s.toml")
    parallel = run_suite(
        request(
            tmp_path,
            suite,
            out_dir=tmp_path / "proc",
            executor=ExecutorConfig("process", workers=2),
        ),
        tiny_host(),
    )
    assert parallel.exit_code == 0 and parallel.ran == 4
    assert metrics_by_cell(parallel.records) == local_metrics
    workers = {(r["seed"], r["worker"]["pid"]) for r in parallel.records}
    assert len(workers) == 2, "each seed's group ran on one worker, the two groups on two workers"
    assert os.getpid() not in {pid for _, pid in workers}
    expected_threads = max(1, len(os.sched_getaffinity(0)) // 2)
    assert {r["worker"]["torch_threads"] for r in parallel.records} == {expected_threads}


def test_a_worker_that_dies_fails_its_cell_and_the_run_goes_on(tmp_path):
    from tlbench.runner import run_suite

    flag = tmp_path / "crash"
    flag.write_text("")
    suite = tiny_suite(tmp_path / "s.toml", seeds=(0,), crash_if_exists=str(flag))
    outcome = run_suite(
        request(tmp_path, suite, executor=ExecutorConfig("process", workers=1)), tiny_host()
    )
    assert [r["status"] for r in outcome.records] == ["failed", "failed"], (
        "the restarted worker ran the next cell"
    )
    assert "the worker running this cell died" in outcome.records[0]["error"]["message"]
    assert outcome.exit_code == 1


def test_ray_executor_matches_local(tmp_path, local_metrics):
    pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'tlbench[ray]'")
    from tlbench.runner import run_suite

    suite = tiny_suite(tmp_path / "s.toml")
    on_ray = run_suite(
        request(
            tmp_path, suite, out_dir=tmp_path / "ray", executor=ExecutorConfig("ray", workers=2)
        ),
        tiny_host(),
    )
    assert on_ray.exit_code == 0, [r.get("error") for r in on_ray.records]
    assert metrics_by_cell(on_ray.records) == local_metrics
    assert {r["worker"]["executor"] for r in on_ray.records} == {"ray"}


def test_ray_missing_is_a_clear_user_error(tmp_path, monkeypatch):
    from tlbench.runner import run_suite

    monkeypatch.setitem(sys.modules, "ray", None)  # what an environment without Ray looks like
    with pytest.raises(
        UserError,
        match=r"--executor ray needs Ray, which is not installed: pip install 'tlbench\[ray\]'",
    ):
        run_suite(
            request(tmp_path, tiny_suite(tmp_path / "s.toml"), executor=ExecutorConfig("ray")),
            tiny_host(),
        )


def test_a_batch_checks_builds_and_runs_every_cell_group_by_group(tmp_path):
    """``Batch`` is what the runner calls: ``prepare`` looks the executor up, checks its options,
    builds it and checks each cell in the parent (local); ``run`` reports every cell to the sink,
    the cells of a (model, dataset, seed) one after another."""
    from tlbench.cell import CellRunner
    from tlbench.executors.base import Batch, Sink
    from tlbench.planning import Selection, plan_cells
    from tlbench.plugins import PluginConfig
    from tlbench.suite import load_suite

    host = tiny_host()
    cells = plan_cells(load_suite(tiny_suite(tmp_path / "s.toml"), host.registry), Selection())
    runner = CellRunner.start(host, tmp_path / "cache", "cpu", tmp_path / "run")
    plugins = PluginConfig(modules=("test_runner",))
    with pytest.raises(UserError, match="executor local takes no options"):
        Batch.prepare(
            ExecutorConfig("local", options=(("gpus", "1"),)), plugins, cells, runner, "cpu"
        )
    batch = Batch.prepare(ExecutorConfig("local"), plugins, cells, runner, "cpu")
    assert batch.name == "local" and batch.rejected == []

    class Events(Sink):
        def __init__(self):
            self.started_cells, self.statuses = [], []

        def started(self, cell):
            self.started_cells.append(cell)

        def finished(self, cell, result):
            self.statuses.append(result.record["status"])

    sink = Events()
    assert batch.run(sink) is True
    assert sorted(c.label for c in sink.started_cells) == sorted(c.label for c in cells)
    assert sink.statuses == ["ok"] * len(cells)
    seeds = [c.seed for c in sink.started_cells]
    assert seeds == sorted(seeds), "each (model, dataset, seed) group ran whole"
