"""The records' names as modules outside the run directory's owner import them.

The run directory, its ``env.json`` and its records stores belong to ``tlbench.rundir``
(``RunDir``); package versions, git revision and hardware to ``tlbench.provenance``. This module
keeps the names report, publish and the cell import from it.
"""

from __future__ import annotations

from tlbench.provenance import git_revision
from tlbench.rundir import (
    CELLS,
    ENV,
    SCHEMA_VERSION,
    ResultsStore,
    new_run_id,
    now_iso,
    read_environment,
    read_numbered_records,
    read_records,
)

CELLS_FILE, ENV_FILE = CELLS, ENV

__all__ = [
    "CELLS_FILE",
    "ENV_FILE",
    "SCHEMA_VERSION",
    "ResultsStore",
    "git_revision",
    "new_run_id",
    "now_iso",
    "read_environment",
    "read_numbered_records",
    "read_records",
]
