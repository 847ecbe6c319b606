"""One entry per cell: the records of every run merged by what they computed.

Records of the same suite with the same ``config_hash`` are the same cell (a retry, a resumed run,
a second machine): the newest ``finished_at`` wins and the others are kept as ``superseded``.
A record is only the same cell when its split (``split.hash``) and its recipe versions
(``record["versions"]``) agree too; otherwise it computed something else and becomes an entry of
its own. A record without a split (the cell failed before loading its data) merges with the same
config hash whatever its split.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from tlbench.publish.runs import Run

UNVERSIONED = "unversioned"


@dataclass
class Entry:
    """The winning record of one cell, the run it comes from, and what it superseded."""

    record: dict
    run: Run
    superseded: list[tuple[dict, Run]] = field(default_factory=list)
    split_identity: str | None = None
    versions_identity: str | None = None

    @property
    def id(self) -> str:
        key = json.dumps(
            [
                self.record["suite"],
                self.record["config_hash"],
                self.split_identity,
                self.versions_identity,
            ]
        )
        return hashlib.sha256(key.encode()).hexdigest()[:12]

    @property
    def seed(self) -> int:
        return self.record["seed"]

    @property
    def status(self) -> str:
        return str(self.record["status"])

    def metric(self, name: str) -> float | None:
        """The recorded value of ``metrics[name]`` when the cell finished ok."""
        value = (self.record.get("metrics") or {}).get(name)
        ok = self.status == "ok" and isinstance(value, int | float) and not isinstance(value, bool)
        return float(value) if ok and value == value else None


def split_hash(record: dict) -> str | None:
    split = record.get("split")
    value = split.get("hash") if isinstance(split, dict) else None
    return str(value) if value else None


def versions_of(record: dict) -> dict:
    """The record's recipe versions; a missing or empty field means unversioned."""
    versions = record.get("versions")
    return {str(k): str(v) for k, v in versions.items()} if isinstance(versions, dict) else {}


def versions_text(versions: dict) -> str:
    if not versions:
        return UNVERSIONED
    return ", ".join(f"{key} {value}" for key, value in sorted(versions.items()))


def merge_runs(runs: list[Run]) -> list[Entry]:
    """Entries of all runs, oldest first by the time their winning record finished."""
    stamped = [
        (_timestamp(record), run.order, number, record, run)
        for run in runs
        for number, record in enumerate(run.records)
    ]
    by_cell: dict[tuple[str, str], list[Entry]] = {}
    for *_, record, run in sorted(stamped, key=lambda item: item[:3]):
        candidates = by_cell.setdefault((record["suite"], record["config_hash"]), [])
        match = next((e for e in reversed(candidates) if _same_cell(e, record)), None)
        if match is None:
            candidates.append(_new_entry(record, run))
            continue
        match.superseded.append((match.record, match.run))
        match.record, match.run = record, run
        if match.split_identity is None and split_hash(record):
            match.split_identity = split_hash(record)
            match.versions_identity = versions_text(versions_of(record))
    entries = [entry for cell in by_cell.values() for entry in cell]
    return sorted(entries, key=lambda e: (_timestamp(e.record), e.run.order))


def _new_entry(record: dict, run: Run) -> Entry:
    known = split_hash(record) is not None
    return Entry(
        record=record,
        run=run,
        split_identity=split_hash(record),
        versions_identity=versions_text(versions_of(record)) if known else None,
    )


def _same_cell(entry: Entry, record: dict) -> bool:
    split = split_hash(record)
    if split is None or entry.split_identity is None:
        return True
    return split == entry.split_identity and (
        versions_text(versions_of(record)) == entry.versions_identity
    )


def _timestamp(record: dict) -> str:
    # ISO 8601 UTC strings of one format sort in time order; a missing stamp sorts first.
    return str(record.get("finished_at") or record.get("started_at") or "")
