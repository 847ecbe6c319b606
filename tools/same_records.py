"""Are two runs' records the same, apart from what differs between any two runs?

    python tools/same_records.py RUN_A RUN_B

Compares ``cells.jsonl`` cell by cell (keyed by config hash) with timestamps, durations,
throughput, peak memory, run ids and worker identity left out, and ``env.json`` with the
session-dependent fields (time, argv, git revision, suite path as typed) left out. Prints each difference; exit code 1 if any.
Used to show that a restructuring changed no recorded number (issue 26).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

# Differ between any two runs of the same code on the same machine.
VOLATILE = {"started_at", "finished_at", "run_id", "worker", "created_at", "argv", "git_revision"}
# How the suite file was named on the command line (relative to where each run was started).
VOLATILE |= {"suite_path"}
VOLATILE_SUFFIXES = ("_s", "_img_s", "_mb")


def _strip(value, path=()):
    if isinstance(value, dict):
        return {
            k: _strip(v, (*path, k))
            for k, v in value.items()
            if k not in VOLATILE and not k.endswith(VOLATILE_SUFFIXES)
        }
    if isinstance(value, list):
        return [_strip(v, path) for v in value]
    return value


def _diff(a, b, where: str, out: list[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            _diff(a.get(key, "<absent>"), b.get(key, "<absent>"), f"{where}.{key}", out)
    elif a != b:
        out.append(f"{where}: {a!r} != {b!r}")


def records(run: Path) -> dict[str, dict]:
    lines = (run / "cells.jsonl").read_text().splitlines()
    return {r["config_hash"]: _strip(r) for r in map(json.loads, lines)}


def main(a: str, b: str) -> int:
    out: list[str] = []
    ra, rb = records(Path(a)), records(Path(b))
    _diff(ra, rb, "cells", out)
    ea = _strip(json.loads((Path(a) / "env.json").read_text()))
    eb = _strip(json.loads((Path(b) / "env.json").read_text()))
    _diff(list(ea), list(eb), "env.json keys (in order)", out)
    _diff(ea, eb, "env.json", out)
    print("\n".join(out) or f"identical: {len(ra)} records (volatile fields left out)")
    return 1 if out else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
