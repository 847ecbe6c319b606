"""Which of the paths given on the command line are run directories.

A run directory holds ``cells.jsonl``. Any other folder is searched recursively for them (so
``results/`` publishes every run under it); a path that is neither is reported and skipped.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from tlbench.publish.notes import Notes
from tlbench.results import CELLS_FILE


def find_run_dirs(paths: Iterable[str | os.PathLike], notes: Notes) -> list[Path]:
    """Run directories under ``paths``, each once, in the order given (then sorted by path).

    Each is named as it was given (``results/week1``, not the absolute path), so what the
    notes and the front page say about it does not reveal where the publisher keeps files.
    """
    found: dict[Path, Path] = {}
    for given in paths:
        path = Path(given)
        if not path.exists():
            notes.warn(f"{path}: no such file or directory; skipped")
        elif path.is_file():
            if path.name == CELLS_FILE:
                found.setdefault(path.parent.resolve(), path.parent)
            else:
                notes.warn(f"{path}: not a run directory (expected a folder holding {CELLS_FILE})")
        elif (path / CELLS_FILE).is_file() or (path / CELLS_FILE).is_symlink():
            found.setdefault(path.resolve(), path)
        else:
            below = sorted(
                p.parent for p in path.rglob(CELLS_FILE) if p.is_file() or p.is_symlink()
            )
            if not below:
                notes.warn(f"{path}: not a run directory and no {CELLS_FILE} below it; skipped")
            for run_dir in below:
                found.setdefault(run_dir.resolve(), run_dir)
    return list(found.values())
