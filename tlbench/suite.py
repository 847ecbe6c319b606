"""Suite files: what to run, validated completely before any work starts.

Suites are TOML: comments for the humans who curate them, typed values (no YAML "Norway
problem"), and a parser in the standard library (tomllib), so reading a suite never needs a
dependency. Every error names the file, the field and what was expected, and every problem of
the file is reported at once. Names and ids are names, never paths: the suite name becomes a
directory under the results root, and no reference may smuggle in a file path.
"""

from __future__ import annotations

import itertools
import tomllib
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tlbench.cache import stable_hash
from tlbench.components import Cell
from tlbench.errors import UserError
from tlbench.registry import Registry
from tlbench.specs import KINDS, OptionErrors, resolve_options

GRID_KINDS = ("model", "dataset", "strategy")  # the axes of the grid; estimators are not one
TOP_LEVEL = {
    "name",
    "description",
    "seeds",
    "models",
    "datasets",
    "strategies",
    "estimators",
    "exclude",
    "requires",
}
ENTRY_KEYS = {"name", "id"}
SEED_LIMIT = 2**32  # numpy's and torch's seeding both take seeds in [0, 2**32)
NAME_LIMIT = 128


@dataclass(frozen=True)
class Entry:
    """One model, dataset, strategy or estimator as the suite names it."""

    kind: str
    id: str
    ref: str
    options: Mapping[str, Any]
    field: str
    version: str = "1"  # the registered component's recipe version


@dataclass(frozen=True)
class Suite:
    name: str
    path: Path
    description: str
    seeds: tuple[int, ...]
    models: tuple[Entry, ...]
    datasets: tuple[Entry, ...]
    strategies: tuple[Entry, ...]
    estimators: tuple[Entry, ...] = ()
    excludes: tuple[Mapping[str, Any], ...] = ()
    requires: tuple[str, ...] = ()
    text: str = ""
    raw: Mapping[str, Any] = field(default_factory=dict)

    def entries(self, kind: str) -> tuple[Entry, ...]:
        return {
            "model": self.models,
            "dataset": self.datasets,
            "strategy": self.strategies,
            "estimator": self.estimators,
        }[kind]


class _Problems:
    """Collects every problem so the user fixes the file in one pass, not one error per run."""

    def __init__(self, path: Path):
        self.path = path
        self.lines: list[str] = []

    def add(self, field_name: str, message: str) -> None:
        self.lines.append(f"{self.path}: {field_name}: {message}")

    def raise_if_any(self) -> None:
        if self.lines:
            raise UserError("\n".join(self.lines))


def find_suite(name_or_path: str, search_dirs: tuple[Path, ...] | None = None) -> Path:
    """The suite file a user named: the path itself (``.toml`` optional), else ``<name>.toml`` in
    ``./suites/``, else among the suites installed with tlbench (``tlbench/suites``). So
    ``quickstart``, ``suites/quickstart`` and ``suites/quickstart.toml`` work in a checkout and
    after ``pip install tlbench`` alike; a local ``suites/`` shadows the packaged suites."""
    import difflib

    packaged = Path(__file__).resolve().parent / "suites"
    dirs = (Path("suites"), packaged) if search_dirs is None else search_dirs
    given = Path(name_or_path)
    candidates = [given]
    if not name_or_path.endswith(".toml"):
        candidates.append(Path(name_or_path + ".toml"))
    # A bare name, or suites/<name> as the docs write it, is also looked up in the suite folders.
    if given.parent in (Path("."), Path("suites")):
        file_name = given.name if given.suffix == ".toml" else given.name + ".toml"
        candidates += [d / file_name for d in dirs]
    candidates = list(dict.fromkeys(candidates))
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    known = sorted({p.stem for d in dirs if d.is_dir() for p in d.glob("*.toml")})
    close = difflib.get_close_matches(given.stem, known, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    available = f" Available: {', '.join(known)}." if known else ""
    raise UserError(
        f"suite file not found: {name_or_path!r} (looked for {', '.join(str(c) for c in candidates)}).{hint}{available}"
    )


def load_suite(path: Path, registry: Registry) -> Suite:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"{path}: cannot read suite file: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8").removeprefix("\ufeff")  # an editor's byte-order mark
    except UnicodeDecodeError as exc:
        raise UserError(
            f"{path}: not a UTF-8 text file (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
            "suites are TOML, which is UTF-8: save the file as UTF-8"
        ) from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: invalid TOML: {exc}") from None
    except RecursionError:
        raise UserError(
            f"{path}: values nested too deeply (at most {NESTING_LIMIT} levels)"
        ) from None
    if _nesting(raw) > NESTING_LIMIT:
        raise UserError(f"{path}: values nested too deeply (at most {NESTING_LIMIT} levels)")
    return parse_suite(raw, path, registry, text)


NESTING_LIMIT = 32  # tables and arrays; a suite needs four or five


def _nesting(value: Any) -> int:
    """How deeply ``value`` nests tables and arrays (iterative: any depth is safe)."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, Mapping | list):
            deepest = max(deepest, level + 1)
            stack.extend(
                (v, level + 1) for v in (item.values() if isinstance(item, Mapping) else item)
            )
    return deepest


def parse_suite(raw: Mapping[str, Any], path: Path, registry: Registry, text: str = "") -> Suite:
    problems = _Problems(path)
    for key in raw:
        if key not in TOP_LEVEL:
            problems.add(key, f"unknown field (expected one of: {', '.join(sorted(TOP_LEVEL))})")
    name = _string(raw, "name", path.stem, problems)
    name_problem = name_error(name)
    if name_problem:
        where = "name" if "name" in raw else "name (from the file name; set name = ...)"
        problems.add(where, f"{name_problem}, got {name!r}")
    description = _string(raw, "description", "", problems)
    seeds = _seeds(raw.get("seeds", [0]), problems)
    entries = {
        kind: _entries(raw, KINDS[kind], kind, registry, problems, required=True)
        for kind in GRID_KINDS
    }
    estimators = _entries(raw, "estimators", "estimator", registry, problems, required=False)
    excludes = _excludes(raw.get("exclude", []), entries, seeds, problems)
    requires = _requires(raw.get("requires", []), problems)
    problems.raise_if_any()
    return Suite(
        name=name,
        path=path,
        description=description,
        seeds=seeds,
        models=entries["model"],
        datasets=entries["dataset"],
        strategies=entries["strategy"],
        estimators=estimators,
        excludes=excludes,
        requires=requires,
        text=text,
        raw=raw,
    )


def _string(raw, key, default, problems) -> str:
    value = raw.get(key, default)
    if not isinstance(value, str):
        problems.add(key, f"expected a string, got {value!r}")
        return default
    return value


def name_error(value: str) -> str | None:
    """Why ``value`` cannot be a suite name or id, or ``None``. Names become directory names and
    labels, so they must be one plain path component: no separators, no ``.``/``..``, no
    control characters."""
    if not value.strip():
        return "expected a non-empty name"
    if len(value) > NAME_LIMIT:
        return f"expected a name of at most {NAME_LIMIT} characters"
    if value in (".", "..") or "/" in value or "\\" in value:
        return "expected a name, not a path (no '/', '\\', '.' or '..')"
    for char in value:
        if not char.isprintable() or unicodedata.bidirectional(char) in BIDI_CONTROLS:
            # bidirectional overrides make an id read differently from what it is (U+202E)
            return f"expected a name without control characters (U+{ord(char):04X})"
    return None


BIDI_CONTROLS = frozenset({"LRE", "RLE", "LRO", "RLO", "PDF", "LRI", "RLI", "FSI", "PDI"})


def _seeds(value, problems) -> tuple[int, ...]:
    values = value if isinstance(value, list) else [value]
    if not values or not all(
        isinstance(v, int) and not isinstance(v, bool) and 0 <= v < SEED_LIMIT for v in values
    ):
        problems.add(
            "seeds",
            f"expected a non-empty list of non-negative integers below 2**32 ({SEED_LIMIT}), got {value!r}",
        )
        return (0,)
    if len(set(values)) != len(values):
        problems.add("seeds", f"seeds must be distinct, got {value!r}")
    return tuple(values)


def _entries(raw, plural, kind, registry, problems, required) -> tuple[Entry, ...]:
    items = raw.get(plural, [])
    if not isinstance(items, list) or (required and not items):
        problems.add(plural, f"expected a non-empty list of {kind} names or [[{plural}]] tables")
        return ()
    entries, seen = [], {}
    for i, item in enumerate(items):
        where = f"{plural}[{i}]"
        entry = _entry(item, kind, where, registry, problems)
        if entry is None:
            continue
        if entry.id in seen:
            problems.add(
                f"{where}.id",
                f"duplicate {kind} id {entry.id!r} (also {seen[entry.id]}); give one an explicit 'id'",
            )
            continue
        seen[entry.id] = where
        entries.append(entry)
    return tuple(_expanded(entries, kind, registry, problems))


def _expanded(entries, kind, registry, problems) -> list[Entry]:
    """Entries with ``axis`` option lists expanded, each expanded id checked for uniqueness."""
    out, seen = [], {}
    for entry in entries:
        for one in along_axes(entry, registry.lookup(kind, entry.ref)[0].options):
            if one.id in seen:
                problems.add(
                    f"{entry.field}.id",
                    f"{kind} id {one.id!r} is also {seen[one.id]}; give one an explicit 'id'",
                )
                continue
            seen[one.id] = entry.field
            out.append(one)
    return out


def along_axes(entry: Entry, options) -> list[Entry]:
    """One entry per combination of the list values given to ``axis`` options
    (``Option.axis``), its id naming them (``layer-transfer[keep=3,mode=frozen]``, in the
    component's option order); an entry without such a list comes back unchanged."""
    axes = [o.name for o in options if o.axis and isinstance(entry.options.get(o.name), list)]
    expanded = []
    for values in itertools.product(*(entry.options[name] for name in axes)):
        chosen = dict(zip(axes, values, strict=True))
        label = ",".join(f"{name}={_axis_value(value)}" for name, value in chosen.items())
        entry_id = f"{entry.id}[{label}]" if axes else entry.id
        expanded.append(replace(entry, id=entry_id, options={**entry.options, **chosen}))
    return expanded


def _axis_value(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _entry(item, kind, where, registry, problems) -> Entry | None:
    """The entry, or ``None`` after adding every problem it has to ``problems``."""
    if isinstance(item, str):
        item = {"name": item}
    if not isinstance(item, dict):
        problems.add(where, f"expected a {kind} name or a table with 'name', got {item!r}")
        return None
    ref = item.get("name")
    if not isinstance(ref, str) or not ref:
        problems.add(f"{where}.name", f"expected the name of a registered {kind}, got {ref!r}")
        return None
    path_like = _path_like(ref)
    if path_like:
        problems.add(
            f"{where}.name",
            f"{kind} reference {ref!r} {path_like}; a reference is 'name' or 'name:argument', "
            "and files are given as options (e.g. path = ...)",
        )
        return None
    count = len(problems.lines)
    entry_id = item.get("id", ref)
    if not isinstance(entry_id, str) or name_error(entry_id):
        reason = name_error(entry_id) if isinstance(entry_id, str) else "expected a string"
        field_name = f"{where}.id" if "id" in item else f"{where}.name (the default id)"
        problems.add(field_name, f"{reason}, got {entry_id!r}")
    try:
        registered, _ = registry.lookup(kind, ref)
    except UserError as exc:
        problems.add(f"{where}.name", str(exc))
        return None
    given = {k: v for k, v in item.items() if k not in ENTRY_KEYS}
    try:
        options = resolve_options(registered.options, given)
    except OptionErrors as exc:
        for problem in exc.problems:
            problems.add(where, f"{kind} {ref!r}: {problem}")
        return None
    if len(problems.lines) > count:
        return None
    return Entry(
        kind=kind,
        id=entry_id,
        ref=ref,
        options=options,
        field=where,
        version=registered.spec.version,
    )


def _path_like(ref: str) -> str | None:
    """Why a reference looks like a file path (``scratch:../../etc/passwd``), or ``None``."""
    if any(ord(char) < 32 or ord(char) == 127 for char in ref):
        return "contains control characters"
    _, _, argument = ref.partition(":")
    if "/" in ref or "\\" in ref or argument in (".", ".."):
        return "looks like a file path"
    return None


def _excludes(value, entries, seeds, problems) -> tuple[Mapping[str, Any], ...]:
    if not isinstance(value, list):
        problems.add("exclude", "expected a list of [[exclude]] tables")
        return ()
    known = {kind: {e.id for e in entries[kind]} for kind in GRID_KINDS}
    rules = []
    for i, rule in enumerate(value):
        where = f"exclude[{i}]"
        if not isinstance(rule, dict) or not rule:
            problems.add(where, "expected a table with any of: model, dataset, strategy, seed")
            continue
        ok = True
        for key, val in rule.items():
            if key == "seed":
                if val not in seeds:
                    problems.add(
                        f"{where}.seed",
                        f"expected one of the suite's seeds {list(seeds)}, got {val!r}",
                    )
                    ok = False
            elif key in known:
                if not isinstance(val, str) or val not in known[key]:
                    problems.add(
                        f"{where}.{key}",
                        f"expected one of the suite's {key} ids {sorted(known[key])}, got {val!r}",
                    )
                    ok = False
            else:
                problems.add(
                    f"{where}.{key}", "unknown key (expected model, dataset, strategy or seed)"
                )
                ok = False
        if ok:
            rules.append(dict(rule))
    return tuple(rules)


def _requires(value, problems) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        problems.add(
            "requires",
            f"expected a list of requirement strings like 'tlbench-peft>=0.1', got {value!r}",
        )
        return ()
    return tuple(value)


def _excluded(cell: Cell, rules) -> bool:
    values = {
        "model": cell.model,
        "dataset": cell.dataset,
        "strategy": cell.strategy,
        "seed": cell.seed,
    }
    return any(all(values[k] == v for k, v in rule.items()) for rule in rules)


def expand_cells(suite: Suite) -> list[Cell]:
    """models × datasets × seeds × strategies, minus excludes.

    The order keeps cells that share a (model, dataset, seed) adjacent, so the decoded data,
    preprocessed tensors and frozen features they share stay hot in memory.
    """
    from tlbench.splits import PROTOCOL_VERSION

    cells = []
    for model, dataset, seed, strategy in itertools.product(
        suite.models, suite.datasets, suite.seeds, suite.strategies
    ):
        cell = Cell(
            suite=suite.name,
            model=model.id,
            dataset=dataset.id,
            strategy=strategy.id,
            seed=seed,
            model_ref=model.ref,
            dataset_ref=dataset.ref,
            strategy_ref=strategy.ref,
            model_options=model.options,
            dataset_options=dataset.options,
            strategy_options=strategy.options,
            versions={
                "model": model.version,
                "dataset": dataset.version,
                "strategy": strategy.version,
                "protocol": PROTOCOL_VERSION,
            },
            suite_dir=str(Path(suite.path).resolve().parent),
        )
        if not _excluded(cell, suite.excludes):
            cells.append(cell)
    return cells


def suite_hash(suite: Suite) -> str:
    """Identifies a suite's configuration (its parsed content: comments and layout do not
    count): a run directory belongs to one suite configuration."""
    return stable_hash(dict(suite.raw))


def config_hash(cell: Cell) -> str:
    """Identifies what a cell computes, for resume and de-duplication: references, options,
    seed, display ids and the recipe versions of its components."""
    return stable_hash(
        {
            "model": [cell.model_ref, dict(cell.model_options)],
            "dataset": [cell.dataset_ref, dict(cell.dataset_options)],
            "strategy": [cell.strategy_ref, dict(cell.strategy_options)],
            "seed": cell.seed,
            "ids": [cell.model, cell.dataset, cell.strategy],
            "versions": dict(cell.versions),
        }
    )
