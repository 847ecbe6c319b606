"""The Slurm executor, run here through submitit's local executor (``--slurm-local``): the same
submitit code path as on a cluster, with jobs as processes on this machine.

One job per (model, dataset, seed) group; the parent records every cell once, with its
predictions, and the results equal the in-process loop's. A job killed mid-group costs only its
unfinished cells (``failed``, one line naming the job), and ``--resume --retry-failed`` reruns
only those; a pre-empted job is requeued by submitit and finishes its cells, none twice. Without
Slurm (and without ``--slurm-local``) the run stops before any work with one line.

This module is also a plugin (``--plugin test_slurm``, importable by the jobs through
PYTHONPATH): test_runner's ridge strategy, returning predictions, whose cell can kill its own
job or have it pre-empted when a flag file exists.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import PLUGIN, TESTS
from test_runner import Ridge, _features, _solve

from tlbench import hookimpl
from tlbench.errors import UserError
from tlbench.executors import ExecutorConfig
from tlbench.specs import Option, StrategySpec

pytest.importorskip("submitit", reason="Slurm support is an optional extra: tlbench[slurm]")


# -- the plugin ------------------------------------------------------------------------------


class RidgeOnSlurm(Ridge):
    """Ridge with per-example predictions; a flag file makes its cell kill its own job
    (SIGKILL, as the OOM killer or scancel does) or have it pre-empted (SIGUSR2, the signal
    Slurm sends before pre-emption; the flag is removed so the requeued job goes on)."""

    def run(self, ctx):
        from tlbench.engine.training import cell_predictions

        if self.options["die_if_exists"] and os.path.exists(self.options["die_if_exists"]):
            os.kill(os.getpid(), signal.SIGKILL)
        preempt = self.options["preempt_if_exists"]
        if preempt and os.path.exists(preempt):
            os.remove(preempt)
            os.kill(os.getpid(), signal.SIGUSR2)  # submitit checkpoints, requeues, exits here
        result = super().run(ctx)
        x, _ = _features(ctx, "trainval")
        weights = _solve(
            x, _features(ctx, "trainval")[1], ctx.data.num_classes, result.hparams["l2"]
        )
        x_test, y_test = _features(ctx, "test")
        result.predictions = cell_predictions(ctx, (x_test @ weights).float(), y_test)
        return result


@hookimpl
def register_strategies(register):
    register(
        StrategySpec(
            "ridge-on-slurm",
            factory=RidgeOnSlurm,
            description="ridge classifier that can kill or pre-empt its own job (tests)",
            options=(
                Option("l2", float, default=[0.1, 10.0], minimum=0.0, sweep=True),
                Option("work", int, default=1, minimum=1),
                Option("fail_if_exists", str, default=""),
                Option("crash_if_exists", str, default=""),
                Option("touch", str, default=""),
                Option("die_if_exists", str, default=""),
                Option("preempt_if_exists", str, default=""),
            ),
        )
    )


# -- helpers ---------------------------------------------------------------------------------

PLUGINS = (PLUGIN, "test_slurm")


def suite_with(path: Path, seeds=(0,), **flags) -> Path:
    """Three cells per seed, in this order: `first`, `flagged` (with ``flags``), `last`."""
    flagged = "\n".join(f"{k} = {json.dumps(v)}" for k, v in flags.items())
    path.write_text(
        f"""
name = "slurm"
seeds = {list(seeds)}
models = ["tiny-proj"]
[[datasets]]
name = "tiny-digits"
train_size = 400
[[strategies]]
name = "ridge-on-slurm"
id = "first"
[[strategies]]
name = "ridge-on-slurm"
id = "flagged"
l2 = [1.0]
{flagged}
[[strategies]]
name = "ridge-on-slurm"
id = "last"
l2 = [100.0]
"""
    )
    return path


def request(tmp_path: Path, suite: Path, **options):
    from tlbench.planning import RunRequest
    from tlbench.plugins import PluginConfig

    options.setdefault("out_dir", tmp_path / "run")
    return RunRequest(
        suite=suite,
        device="cpu",
        cache_dir=tmp_path / "cache",
        results_root=tmp_path / "results",
        plugins=PluginConfig(modules=PLUGINS),
        **options,
    )


def host():
    from tlbench.plugins import load_plugins

    return load_plugins(extra_modules=list(PLUGINS))


def on_slurm_here(**options) -> ExecutorConfig:
    return ExecutorConfig("slurm", options=(("local", "true"), *options.items()))


@pytest.fixture
def jobs_find_this_plugin(monkeypatch):
    """A job is a fresh interpreter: it imports the plugins from PYTHONPATH, as on a cluster
    where they are installed on every node."""
    paths = [str(TESTS), str(TESTS.parent), os.environ.get("PYTHONPATH", "")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in paths if p))


def lines_of(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "cells.jsonl").read_text().splitlines()]


def by_strategy(records) -> dict:
    return {(r["strategy"], r["seed"]): r for r in records}


# -- options and the one-line refusals (no job runs) ----------------------------------------------


def test_slurm_options_become_sbatch_lines_through_submitit(tmp_path, monkeypatch):
    import submitit

    from tlbench.executors.slurm import slurm_options

    for tool in ("sbatch", "srun"):  # submitit looks for them; this test submits nothing
        (tmp_path / tool).write_text("#!/bin/sh\nexit 1\n")
        (tmp_path / tool).chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path) + os.pathsep + os.environ["PATH"])

    options = slurm_options(
        [
            ("account", "my-lab"),
            ("reservation", "course"),
            ("setup", "module load cuda"),
            ("setup", "nvidia-smi"),
            ("partition", "gpu"),
            ("time", "90"),
            ("cpus_per_task", "4"),
            ("gpus_per_task", "1"),
            ("mem", "16G"),
            ("array_parallelism", "2"),
        ]
    )
    executor = submitit.AutoExecutor(folder=tmp_path / "jobs", cluster="slurm")
    executor.update_parameters(**options.parameters("tlbench-demo"))
    script = executor._executor._make_submission_file_text("python -m job", "uid")
    for line in (
        "#SBATCH --job-name=tlbench-demo",
        "#SBATCH --partition=gpu",
        "#SBATCH --time=90",
        "#SBATCH --cpus-per-task=4",
        "#SBATCH --gpus-per-node=1",
        "#SBATCH --mem=16G",
        "#SBATCH --signal=USR2@90",  # submitit asks for a warning before the time limit
        "#SBATCH --account=my-lab",
        "#SBATCH --reservation=course",
        "module load cuda",
        "nvidia-smi",
    ):
        assert line in script, line
    assert executor._executor.parameters["array_parallelism"] == 2


@pytest.mark.parametrize(
    "args, says",
    [
        (["--executor", "slurm"], "no Slurm on this machine (sbatch and srun not on PATH)"),
        (["--slurm-partition", "gpu"], "--slurm options need --executor slurm"),
        (["--executor", "slurm", "--slurm-local", "--workers", "2"], "--workers does not apply"),
        (["--executor", "slurm", "--slurm-local", "--slurm", "account"], "expected KEY=VALUE"),
        (
            ["--executor", "slurm", "--slurm-local", "--slurm-time", "0"],
            "time=0: expected an integer >= 1",
        ),
        (
            ["--executor", "slurm", "--executor-opt", "local=true"],
            "--device auto: the slurm workers get no GPU unless asked for one",
        ),
    ],
)
def test_slurm_mistakes_are_one_line_before_any_work(args, says, tmp_path, monkeypatch):
    from tlbench.cli import cli

    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here, whatever the machine has
    suite = suite_with(tmp_path / "s.toml")
    result = CliRunner().invoke(
        cli, ["--plugin", PLUGIN, "--plugin", "test_slurm", "run", str(suite), "-q", *args]
    )
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and says in lines[0], result.output
    assert not (tmp_path / "results").exists()


def test_slurm_without_submitit_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)  # an environment without the extra
    with pytest.raises(UserError, match=r"needs submitit.*pip install 'tlbench\[slurm\]'"):
        on_slurm_here().check()


# -- jobs that run --------------------------------------------------------------------------------


def test_one_job_per_group_and_every_cell_recorded_once_as_in_the_local_loop(
    tmp_path, jobs_find_this_plugin
):
    from tlbench.cli import cli
    from tlbench.predictions import read_predictions
    from tlbench.runner import run_suite

    suite = suite_with(tmp_path / "s.toml", seeds=(0, 1))
    local = run_suite(request(tmp_path, suite, out_dir=tmp_path / "local"), host())
    run_dir = tmp_path / "on-slurm"
    done = CliRunner().invoke(
        cli,
        ["--plugin", PLUGIN, "--plugin", "test_slurm", "run", str(suite), "--out", str(run_dir)]
        + ["--cache-dir", str(tmp_path / "cache"), "--device", "cpu", "-q"]
        + ["--executor", "slurm", "--slurm-local", "--slurm-cpus-per-task", "1"],
    )

    assert done.exit_code == 0, done.output
    records = lines_of(run_dir)
    assert sorted(Counter(r["config_hash"] for r in records).values()) == [1] * 6
    ours, theirs = by_strategy(records), by_strategy(local.records)
    assert {k: r["metrics"] for k, r in ours.items()} == {
        k: r["metrics"] for k, r in theirs.items()
    }
    jobs = {(r["seed"], r["worker"]["job_id"]) for r in records}
    assert len(jobs) == 2 and {seed for seed, _ in jobs} == {0, 1}, "one job per seed's group"
    assert {r["worker"]["executor"] for r in records} == {"slurm"}
    assert os.getpid() not in {r["worker"]["pid"] for r in records}
    for key, record in ours.items():  # predictions came back with the results
        mine = read_predictions(run_dir, record)
        assert (mine.pred == read_predictions(local.run_dir, theirs[key]).pred).all()
    assert list((run_dir / "slurm").glob("*_log.out")), "job logs sit in the run directory"


def test_a_killed_job_fails_only_its_unfinished_cells_and_resume_reruns_only_them(
    tmp_path, jobs_find_this_plugin
):
    from tlbench.runner import run_suite

    flag = tmp_path / "kill-the-job"
    flag.touch()
    suite = suite_with(tmp_path / "s.toml", die_if_exists=str(flag))
    first = run_suite(request(tmp_path, suite, executor=on_slurm_here()), host())

    records = by_strategy(first.records)
    assert [records[(s, 0)]["status"] for s in ("first", "flagged", "last")] == [
        "ok",
        "failed",
        "failed",
    ]
    job = records[("first", 0)]["worker"]["job_id"]
    killed, never_ran = (records[(s, 0)]["error"]["message"] for s in ("flagged", "last"))
    for message in (killed, never_ran):
        assert "\n" not in message and f"Slurm job {job} ended" in message
    assert "while this cell was running" in killed and "before this cell started" in never_ran
    assert first.exit_code == 1

    flag.unlink()
    again = run_suite(
        request(
            tmp_path, suite, executor=on_slurm_here(), resume=str(first.run_dir), retry_failed=True
        ),
        host(),
    )
    assert again.exit_code == 0 and again.ran == 2, "only the two unfinished cells ran again"
    assert [r["status"] for r in again.records] == ["ok"] * 3
    counts = Counter(r["strategy"] for r in lines_of(first.run_dir))
    assert counts == {"first": 1, "flagged": 2, "last": 2}


def test_a_preempted_job_is_requeued_and_finishes_its_cells_each_once(
    tmp_path, jobs_find_this_plugin
):
    from tlbench.runner import run_suite

    flag = tmp_path / "preempt-the-job"
    flag.touch()
    suite = suite_with(tmp_path / "s.toml", preempt_if_exists=str(flag))
    outcome = run_suite(request(tmp_path, suite, executor=on_slurm_here()), host())

    assert outcome.exit_code == 0, [r.get("error") for r in outcome.records]
    assert not flag.exists(), "the flagged cell was pre-empted once"
    assert sorted(Counter(r["strategy"] for r in lines_of(outcome.run_dir)).values()) == [1, 1, 1]
    records = by_strategy(outcome.records)
    assert len({r["worker"]["job_id"] for r in outcome.records}) == 1, "the same job, requeued"
    first, flagged = records[("first", 0)], records[("flagged", 0)]
    assert first["worker"]["pid"] != flagged["worker"]["pid"], "the requeued job is a new process"
    log = "".join(p.read_text() for p in (outcome.run_dir / "slurm").glob("*_log.err"))
    assert "Caught signal SIGUSR2" in log and "this job is preempted" in log
