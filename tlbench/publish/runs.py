"""Reading one run directory: its valid cell records, its environment and its suite text.

Nothing here raises for bad content: a garbled line, a record that is not a tlbench cell record
(checked as the report checks it, ``tlbench.report.records``) or a field of the wrong type
(``tlbench.publish.validate``), an unreadable ``env.json`` is
reported through ``Notes`` and left out, so one damaged run never stops a site from being built
from the others. Files are read only inside the run directory: a symbolic link, a special file
or a file larger than its bound is refused (``tlbench.safeio.read_inside``).
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from tlbench.errors import UserError
from tlbench.publish.notes import Notes
from tlbench.publish.validate import MAX_DEPTH, depth, env_problems, id_problem, record_problem
from tlbench.report.records import (
    as_malformed,
    counted_as_malformed,
    left_out,
    placement_problem,
    result_problem,
    schema_problem,
)
from tlbench.results import CELLS_FILE, ENV_FILE
from tlbench.safeio import describe, read_inside

SUITE_FILE = "suite.toml"
SITE = "the site"  # what a record the checks refuse is left out of
MAX_CELLS_BYTES = 512 * 2**20  # a cells.jsonl of 100 000 cells is about 500 MB
MAX_RECORD_CHARS = 4 * 2**20
MAX_ENV_BYTES = 16 * 2**20


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
    if id_problem(run_id):
        run_id = "run"
    suite_text = _suite_text(path, env, notes)
    parsed = _parse_suite(suite_text)
    description = parsed.get("description")
    return Run(
        path=path,
        label=run_id,
        run_id=run_id,
        env=env,
        records=tuple(records),
        suite_text=suite_text,
        order=order,
        suite_order=_suite_order(parsed),
        suite_description=description if isinstance(description, str) else "",
    )


def read_cell_records(path: Path, notes: Notes) -> list[dict]:
    """Valid records of a ``cells.jsonl``; every other line is one note naming file and line."""
    try:
        text = read_inside(path.parent, path.name, MAX_CELLS_BYTES).decode("utf-8", "replace")
    except UserError as exc:  # a link, a special file, too large
        notes.warn(f"{path.parent}/{exc}; run skipped")
        return []
    except OSError as exc:
        notes.warn(f"{path}: cannot read ({describe(exc)}); run skipped")
        return []
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        if len(line) > MAX_RECORD_CHARS:
            notes.warn(left_out(where, f"a record longer than {MAX_RECORD_CHARS} characters", SITE))
            continue
        try:
            record = json.loads(line)
        except RecursionError:
            notes.warn(left_out(where, "a record nested too deeply", SITE))
            continue
        except ValueError:  # JSONDecodeError, and integers too long to convert
            notes.warn(f"{where}: skipped a truncated or garbled record")  # the report's words
            continue
        if record := checked_record(record, where, notes):
            records.append(record)
    return records


def checked_record(record: object, where: str, notes: Notes) -> dict | None:
    """``record`` as the report reads it (``tlbench.report.records``: the same checks, the
    same warnings, a record whose result cannot be used counted as malformed), or ``None`` when
    it is left out, by those checks or by what a public page needs (``validate``)."""
    try:
        problem = schema_problem(record) or placement_problem(record)
    except RecursionError:  # an id nested too deeply to be shown
        problem = "a record nested too deeply"
    if problem:
        notes.warn(left_out(where, problem, SITE))
        return None
    record = cast(dict, record)  # schema_problem refuses anything but a JSON object
    unusable = result_problem(record)
    shown = as_malformed(record, unusable) if unusable else record
    problem = record_problem(shown)
    if problem:
        notes.warn(left_out(where, problem, SITE))
        return None
    if unusable:
        notes.warn(counted_as_malformed(where, record, unusable))
    return shown


def _read_env(path: Path, notes: Notes) -> dict:
    env_path = path / ENV_FILE
    try:
        data = read_inside(path, ENV_FILE, MAX_ENV_BYTES)
    except FileNotFoundError:
        notes.warn(f"{path}: no {ENV_FILE}; its environment is unknown")
        return {}
    except UserError as exc:
        notes.warn(f"{path}/{exc}; its environment is unknown")
        return {}
    except OSError as exc:
        notes.warn(f"{env_path}: unreadable ({describe(exc)}); its environment is unknown")
        return {}
    try:
        env = json.loads(data.decode("utf-8"))
    except RecursionError:
        notes.warn(f"{env_path}: nested too deeply; its environment is unknown")
        return {}
    except ValueError as exc:  # UnicodeDecodeError, JSONDecodeError, integers too long
        notes.warn(f"{env_path}: unreadable ({describe(exc)}); its environment is unknown")
        return {}
    if not isinstance(env, dict):
        notes.warn(f"{env_path}: expected a JSON object; its environment is unknown")
        return {}
    while problems := env_problems(env):  # each round drops at least one field
        for key, why in problems:
            notes.warn(f"{env_path}: {key} {why}; left out")
            env.pop(key, None)
    if depth(env) > MAX_DEPTH:
        notes.warn(f"{env_path}: nests deeper than {MAX_DEPTH} levels; its environment is unknown")
        return {}
    return env


def _suite_text(path: Path, env: dict, notes: Notes) -> str:
    """The suite file as the run recorded it (``env.json``'s copy, else ``suite.toml`` in the
    run directory itself: a link out of the run is refused, never followed)."""
    if isinstance(env.get("suite"), str):
        return env["suite"]
    try:
        return read_inside(path, SUITE_FILE, MAX_ENV_BYTES).decode("utf-8")
    except FileNotFoundError:
        return ""
    except UserError as exc:
        notes.warn(f"{path}/{exc}; the suite file is not shown")
        return ""
    except (OSError, UnicodeDecodeError) as exc:
        notes.warn(f"{path / SUITE_FILE}: not shown ({describe(exc)})")
        return ""


def _parse_suite(text: str) -> dict:
    try:
        return tomllib.loads(text) if text else {}
    except (tomllib.TOMLDecodeError, RecursionError, ValueError):
        return {}


def _suite_order(parsed: dict) -> dict:
    """Ids per kind in the order the suite file lists them (the order readers expect)."""
    order = {}
    for key, kind in (("models", "model"), ("datasets", "dataset"), ("strategies", "strategy")):
        ids = []
        items = parsed.get(key)
        for item in items if isinstance(items, list) else []:
            if isinstance(item, str):
                ids.append(item)
            elif isinstance(item, dict) and isinstance(item.get("id", item.get("name")), str):
                ids.append(str(item.get("id", item.get("name"))))
        order[kind] = ids
    return order
