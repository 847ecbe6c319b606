"""tlbench plugin: send each cell of a run to the experiment trackers a lab already uses.

``tlbench run SUITE --track mlflow --track wandb --track tensorboard`` (or
``TLBENCH_TRACK=mlflow,wandb`` in the environment) opens a parent for the suite run when the run
starts (``on_run_started``), one tracker run per cell as its record is written
(``on_cell_finished``) and closes the parent at the end (``on_run_finished``). Each library
keeps its own conventions (``MLFLOW_TRACKING_URI``, ``WANDB_MODE``, ``WANDB_DIR``, ...) and is
imported only when chosen. A tracker that fails costs one warning and is dropped for the rest of
the run: never a cell, never the run.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from tlbench.api import hookimpl

__version__ = "0.1.0"

ENV = "TLBENCH_TRACK"
# tracker name -> (module implementing it, the library it needs, the extra installing it)
TRACKERS = {
    "mlflow": ("tlbench_trackers.mlflow_tracker", "mlflow"),
    "wandb": ("tlbench_trackers.wandb_tracker", "wandb"),
    "tensorboard": ("tlbench_trackers.tensorboard_tracker", "tensorboard"),
}

logger = logging.getLogger("tlbench.trackers")
_open: list = []  # the trackers of the run in progress


def chosen() -> list[str]:
    """The trackers ``TLBENCH_TRACK`` names, in order, each once (unknown names are ignored
    here: ``tlbench run --track`` refuses them before anything runs)."""
    names = [n.strip() for n in os.environ.get(ENV, "").split(",") if n.strip()]
    return [n for n in dict.fromkeys(names) if n in TRACKERS]


def _warn(name: str, what: str, exc: Exception) -> None:
    first = next((line for line in str(exc).splitlines() if line.strip()), "")
    detail = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    logger.warning("tracker %s failed %s (%s); the run goes on without it", name, what, detail)


def _start(name: str, run_dir: Path, suite: str):
    import importlib

    module = importlib.import_module(TRACKERS[name][0])
    return module.Tracker(Path(run_dir), suite)


@hookimpl
def on_run_started(run_dir, suite):
    _open.clear()
    for name in chosen():
        try:
            _open.append(_start(name, run_dir, suite))
        except ImportError as exc:
            extra = f"pip install 'tlbench-trackers[{name}]'"
            _warn(name, f"to start ({extra})", exc)
        except Exception as exc:  # a tracker never breaks a run
            _warn(name, "to start", exc)


@hookimpl
def on_cell_finished(record):
    for tracker in list(_open):
        try:
            tracker.log_cell(record)
        except Exception as exc:
            _warn(tracker.name, f"on cell {record.get('config_hash', '')[:12]}", exc)
            _open.remove(tracker)


@hookimpl
def on_run_finished(run_dir, records, interrupted):
    for tracker in list(_open):
        try:
            tracker.finish(interrupted)
        except Exception as exc:
            _warn(tracker.name, "to finish", exc)
    _open.clear()
