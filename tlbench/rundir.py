"""The run directory's layout: the one place its file names are spelled.

    <run_dir>/
        cells.jsonl        one record per line, appended as cells finish (tlbench.results)
        estimates.jsonl    transferability estimates (tlbench.transferability)
        predictions/       per-example test predictions, one file per cell (tlbench.predictions)
        env.json           environment, suite hash, argv of every session (tlbench.results)
        suite.toml         the suite as it was when the run started (tlbench.runner)
        run.log            one timestamped line per event, across resumes (tlbench.runner)
        .run.lock          held while a run writes here (tlbench.results)
        .write-probe       made and removed to check the directory is writable (tlbench.safeio)

Every module that opens one of these names takes it from here.
"""

from __future__ import annotations

CELLS = "cells.jsonl"
ESTIMATES = "estimates.jsonl"
PREDICTIONS = "predictions"
ENV = "env.json"
SUITE_COPY = "suite.toml"
RUN_LOG = "run.log"
LOCK = ".run.lock"
PROBE = ".write-probe"

# What a run records; a directory holding any of them without an env.json is nobody's.
RECORDS = (CELLS, ESTIMATES, PREDICTIONS)
# Every name tlbench opens inside a run directory; none of them may be a symbolic link.
RUN_FILES = (PROBE, LOCK, CELLS, ENV, RUN_LOG, SUITE_COPY, ESTIMATES, PREDICTIONS)
