"""Reading one run directory: its valid cell records, its environment and its suite text.

Nothing here raises for bad content: a garbled line, a record that is not a tlbench cell record
or an unreadable ``env.json`` is reported through ``Notes`` and left out, so one damaged run never
stops a site from being built from the others.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from tlbench.publish.notes import Notes
from tlbench.results import CELLS_FILE, ENV_FILE, SCHEMA_VERSION

REQUIRED = ("suite", "config_hash", "model", "dataset", "strategy", "seed", "status")
SUITE_FILE = "suite.toml"


@dataclass(frozen=True)
class Run:
    """One run directory. ``label`` is unique within a site (the run id, made unique when two
    directories carry the same id); ``records`` are the valid records in file order."""

    path: Path
    label: str
    run_id: str
    env: dict
    records: tuple[dict, ...]
    suite_text: str = ""
    order: int = 0  # position among the runs given, to break ties between equal timestamps
    suite_order: dict = field(default_factory=dict)  # kind -> ids in the suite file's order
    suite_description: str = ""

    @property
    def suite_sha256(self) -> str:
        return hashlib.sha256(self.suite_text.encode()).hexdigest() if self.suite_text else ""

    @property
    def tlbench_versions(self) -> list[str]:
        versions = {str(r.get("tlbench_version")) for r in self.records if r.get("tlbench_version")}
        packaged = (self.env.get("packages") or {}).get("tlbench")
        return sorted(versions | ({str(packaged)} if packaged else set()))

    @property
    def git_revision(self) -> str:
        return str(self.env.get("git_revision") or "unknown")

    @property
    def plugins(self) -> list[tuple[str, str]]:
        rows = self.env.get("plugins") or []
        return [
            (str(row.get("name")), str(row.get("version") or "?"))
            for row in rows
            if isinstance(row, dict) and row.get("name")
        ]


def load_run(path: Path, notes: Notes, order: int = 0) -> Run | None:
    """The run at ``path``, or ``None`` (with a note) when it holds no valid record."""
    records = read_cell_records(path / CELLS_FILE, notes)
    if not records:
        notes.warn(f"{path}: no valid cell records in {CELLS_FILE}; run skipped")
        return None
    env = _read_env(path, notes)
    ids = [str(r["run_id"]) for r in records if r.get("run_id")]
    run_id = max(set(ids), key=ids.count) if ids else path.name
    suite_text = _suite_text(path, env)
    parsed = _parse_suite(suite_text)
    return Run(
        path=path,
        label=run_id,
        run_id=run_id,
        env=env,
        records=tuple(records),
        suite_text=suite_text,
        order=order,
        suite_order=_suite_order(parsed),
        suite_description=str(parsed.get("description") or ""),
    )


def read_cell_records(path: Path, notes: Notes) -> list[dict]:
    """Valid records of a ``cells.jsonl``; every other line is one note naming file and line."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        notes.warn(f"{path}: cannot read ({exc.strerror or exc}); run skipped")
        return []
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            notes.warn(f"{path}:{number}: truncated or garbled record; skipped")
            continue
        problem = _problem(record)
        if problem:
            notes.warn(f"{path}:{number}: {problem}; skipped")
            continue
        records.append(record)
    return records


def _problem(record) -> str | None:
    if not isinstance(record, dict):
        return "not a JSON object"
    schema = record.get("schema", SCHEMA_VERSION)
    if schema != SCHEMA_VERSION:
        return f"record schema {schema!r}, this tlbench reads schema {SCHEMA_VERSION}"
    missing = [key for key in REQUIRED if key not in record]
    if missing:
        return f"lacks {', '.join(missing)} (not a tlbench cell record)"
    if not isinstance(record["seed"], int) or isinstance(record["seed"], bool):
        return f"seed {record['seed']!r} is not an integer"
    return None


def _read_env(path: Path, notes: Notes) -> dict:
    env_path = path / ENV_FILE
    if not env_path.exists():
        notes.warn(f"{path}: no {ENV_FILE}; its environment is unknown")
        return {}
    try:
        env = json.loads(env_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        notes.warn(f"{env_path}: unreadable ({exc}); its environment is unknown")
        return {}
    if not isinstance(env, dict):
        notes.warn(f"{env_path}: expected a JSON object; its environment is unknown")
        return {}
    return env


def _suite_text(path: Path, env: dict) -> str:
    if isinstance(env.get("suite"), str):
        return env["suite"]
    try:
        return (path / SUITE_FILE).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return ""


def _parse_suite(text: str) -> dict:
    try:
        return tomllib.loads(text) if text else {}
    except tomllib.TOMLDecodeError:
        return {}


def _suite_order(parsed: dict) -> dict:
    """Ids per kind in the order the suite file lists them (the order readers expect)."""
    order = {}
    for key, kind in (("models", "model"), ("datasets", "dataset"), ("strategies", "strategy")):
        ids = []
        for item in parsed.get(key) or []:
            if isinstance(item, str):
                ids.append(item)
            elif isinstance(item, dict) and isinstance(item.get("id", item.get("name")), str):
                ids.append(item.get("id", item.get("name")))
        order[kind] = ids
    return order
