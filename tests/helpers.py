"""Helpers the runner, resume, executor, fault and Slurm tests share: a tiny suite over
``test_runner``'s cheap real plugin (loaded by module name, so worker processes import it too),
a host, a run request, the CLI, and the environment for ``python -m tlbench.cli`` children."""

from __future__ import annotations

import json
import os
from pathlib import Path

from click.testing import CliRunner

PLUGIN = "test_runner"  # tests/test_runner.py: digits, a fixed projection and a ridge probe
TESTS = Path(__file__).resolve().parent

TINY_SUITE = """
name = "tiny"
seeds = [0, 1]
models = ["tiny-proj"]
[[datasets]]
name = "tiny-digits"
train_size = 400
[[strategies]]
name = "ridge"
{strategy_extra}
[[strategies]]
name = "ridge"
id = "ridge-strong"
l2 = [100.0, 1000.0]
{strategy_extra}
"""


def tiny_suite(path: Path, seeds=(0, 1), **strategy_options) -> Path:
    extra = "\n".join(f"{k} = {json.dumps(v)}" for k, v in strategy_options.items())
    path.write_text(
        TINY_SUITE.format(strategy_extra=extra).replace("seeds = [0, 1]", f"seeds = {list(seeds)}")
    )
    return path


def tiny_host():
    from tlbench.plugins import load_plugins

    return load_plugins(extra_modules=[PLUGIN])


def subprocess_env(cache: Path) -> dict:
    """For ``python -m tlbench.cli`` children: find this plugin module, use a test cache."""
    paths = [str(TESTS), str(TESTS.parent), os.environ.get("PYTHONPATH", "")]
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in paths if p),
        "TLBENCH_CACHE": str(cache),
    }


def metrics_by_cell(records) -> dict:
    return {
        (r["model"], r["dataset"], r["strategy"], r["seed"]): r["metrics"]
        for r in records
        if r["status"] == "ok"
    }


def request(tmp_path: Path, suite: Path, **options):
    from tlbench.planning import RunRequest
    from tlbench.plugins import PluginConfig

    options.setdefault("out_dir", tmp_path / "run")
    return RunRequest(
        suite=suite,
        device="cpu",
        cache_dir=tmp_path / "cache",
        results_root=tmp_path / "results",
        plugins=PluginConfig(modules=(PLUGIN,)),
        **options,
    )


def cli(*args: str):
    from tlbench.cli import cli as command

    return CliRunner().invoke(command, ["--plugin", PLUGIN, *args])
