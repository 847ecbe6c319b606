"""What a run will do, known before any heavy work: which cells, which run directory, which
cells are already recorded there, and what work the cells share.

``make_plan`` is the Python API behind ``tlbench run --dry-run``; the runner uses the same
functions, so the plan and the run never disagree. Nothing here loads a model or a dataset.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tlbench.components import Cell
from tlbench.errors import UserError
from tlbench.executors import ExecutorConfig
from tlbench.plugins import PluginConfig
from tlbench.rundir import ResultsStore, RunDir
from tlbench.suite import Suite, config_hash, expand_cells, find_suite, load_suite, name_error

if TYPE_CHECKING:  # pragma: no cover
    from tlbench.plugins import PluginHost

DONE = ("ok", "skipped")
RETRYABLE = ("failed", "diverged")


@dataclass(frozen=True)
class Selection:
    """Run only part of the grid without editing the suite (empty = everything)."""

    models: tuple[str, ...] = ()
    datasets: tuple[str, ...] = ()
    strategies: tuple[str, ...] = ()
    seeds: tuple[int, ...] = ()

    def keeps(self, cell: Cell, *, by_strategy: bool = True) -> bool:
        """Whether ``cell`` is selected. ``by_strategy=False`` ignores the strategy filter, for
        work that depends only on the (model, dataset, seed) pair (transferability estimates):
        a strategy filter selects cells, not pairs."""
        return (
            (not self.models or cell.model in self.models)
            and (not self.datasets or cell.dataset in self.datasets)
            and (not by_strategy or not self.strategies or cell.strategy in self.strategies)
            and (not self.seeds or cell.seed in self.seeds)
        )

    def check(self, suite: Suite) -> None:
        """A selection naming what the suite does not have is a typo, not an empty run."""
        problems = []
        for option, chosen, known in (
            ("--model", self.models, [e.id for e in suite.models]),
            ("--dataset", self.datasets, [e.id for e in suite.datasets]),
            ("--strategy", self.strategies, [e.id for e in suite.strategies]),
        ):
            for value in chosen:
                if value not in known:
                    close = difflib.get_close_matches(value, known, n=1)
                    hint = f" Did you mean {close[0]!r}?" if close else ""
                    problems.append(
                        f"{option} {value!r}: suite {suite.name!r} has no such id.{hint} Its ids: {', '.join(known)}"
                    )
        for seed in self.seeds:
            if seed not in suite.seeds:
                problems.append(
                    f"--seed {seed}: suite {suite.name!r} has seeds {list(suite.seeds)}"
                )
        if problems:
            raise UserError("\n".join(problems))


@dataclass
class RunRequest:
    """Everything ``tlbench run`` was asked: the Python API's one argument (``run_suite``)."""

    suite: str | Path | Suite
    out_dir: Path | None = None
    resume: Path | str | None = None
    retry_failed: bool = False
    refresh: bool = False  # recompute the cached features of the suite's models
    device: str = "auto"
    cache_dir: Path | None = None
    selection: Selection = field(default_factory=Selection)
    plugins: PluginConfig = field(default_factory=PluginConfig)
    results_root: Path = Path("results")
    argv: Sequence[str] | None = None
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)


def plan_cells(suite: Suite, selection: Selection) -> list[Cell]:
    selection.check(suite)
    cells = [c for c in expand_cells(suite) if selection.keeps(c)]
    if not cells:
        raise UserError(
            f"{suite.path}: the selection leaves no cells to run (every remaining cell is excluded)"
        )
    return cells


def prepare(request: RunRequest, host: PluginHost) -> tuple[Suite, list[Cell], RunDir]:
    """Everything about a request that can be known to fail before any work: the executor's
    options, the suite, its plugins' requirements, the availability of its models and datasets,
    the selection and the run directory (``--resume`` of a run that is not there). Returns the
    suite, the cells it selects and the run directory, chosen but not created."""
    request.executor.check(request.device)
    suite = open_suite(request.suite, host)
    preflight(suite, host)
    cells = plan_cells(suite, request.selection)
    return suite, cells, choose_run_dir(request, suite)


def open_suite(suite: str | Path | Suite, host: PluginHost) -> Suite:
    if isinstance(suite, Suite):
        return suite
    return load_suite(find_suite(str(suite)), host.registry)


def preflight(suite: Suite, host: PluginHost) -> None:
    """Everything that can be known to fail before any work: unmet plugin requirements and
    components that cannot run here (missing weights package, missing dataset files)."""
    from tlbench.cell import suite_relative

    problems = []
    if suite.requires:
        from tlbench.plugins import check_requirements

        problems += [
            f"{suite.path}: requires: {msg}" for msg in check_requirements(list(suite.requires))
        ]
    for kind in ("model", "dataset"):
        for entry in suite.entries(kind):
            registered, argument = host.registry.lookup(kind, entry.ref)
            options = suite_relative(entry.options, Path(suite.path).resolve().parent)
            available = registered.spec.availability(argument, options)
            if available is not True:
                problems.append(
                    f"{suite.path}: {entry.field}: {kind} {entry.ref!r} is not available: {available}"
                )
    if problems:
        raise UserError("\n".join(problems))


def choose_run_dir(request: RunRequest, suite: Suite) -> RunDir:
    """``--resume DIR|latest`` names an existing run; ``--out DIR`` wins otherwise (an existing
    one is resumed, never clobbered); by default a new ``results/<suite>/<run-id>``
    (``RunDir.choose``). Creates nothing, so a dry run leaves no trace."""
    problem = name_error(suite.name)
    if problem:  # parse_suite refuses these; a Suite built in Python must not escape either
        raise UserError(f"suite name {suite.name!r}: {problem}")
    return RunDir.choose(
        suite.name, resume=request.resume, out=request.out_dir, results_root=request.results_root
    )


def cell_state(previous: Mapping | None, retry_failed: bool) -> str:
    """``pending``, ``recorded`` (skipped on resume) or ``retry`` (recorded failed, rerun).
    The one rule for resuming, for cells and for transferability estimates alike."""
    if previous is None:
        return "pending"
    status = previous.get("status")
    if status in DONE or (status in RETRYABLE and not retry_failed):
        return "recorded"
    return "retry" if status in RETRYABLE else "pending"


def final_records(cells: Iterable[Cell], store: ResultsStore) -> list[dict]:
    """The last record of each of ``cells`` that ``store`` holds, in the cells' order."""
    latest = store.latest_by_hash()
    return [latest[h] for h in (config_hash(c) for c in cells) if h in latest]


def pending_cells(
    cells: Iterable[Cell], store: ResultsStore, retry_failed: bool
) -> tuple[list[Cell], int]:
    latest = store.latest_by_hash()
    todo, skipped = [], 0
    for cell in cells:
        if cell_state(latest.get(config_hash(cell)), retry_failed) == "recorded":
            skipped += 1
        else:
            todo.append(cell)
    return todo, skipped


@dataclass(frozen=True)
class CellPlan:
    cell: Cell
    config_hash: str
    state: str
    recorded_status: str | None = None


@dataclass(frozen=True)
class Plan:
    suite: Suite
    run_dir: Path
    run_dir_exists: bool
    cells: tuple[CellPlan, ...]
    cache_root: Path
    cache_namespaces: tuple[dict, ...] = field(default_factory=tuple)

    @property
    def todo(self) -> list[CellPlan]:
        return [c for c in self.cells if c.state != "recorded"]

    def shared_work(self) -> dict:
        """Work the cells to run share: each is done once per run (and cached across runs).

        ``feature_pools``: frozen features and frozen-prefix activations are stored per image,
        one pool per (model, dataset), so every seed, strategy and estimator of a pair reads
        the images its pool already holds (seeds share where their splits share images and the
        weights do not depend on the seed). ``sweeps``: cells whose fine-tuning options list
        several configurations, by schedule, and their candidates."""
        todo = [c.cell for c in self.todo]
        sweeps = {"asha": 0, "grid": 0, "candidates": 0}
        for cell in todo:
            options = cell.strategy_options
            if "sweep" not in options:
                continue
            candidates = 1
            for name in ("lr", "weight_decay"):
                values = options.get(name)
                if name == "lr" and values is None:  # the recipe's own grid
                    values = options.get(_recipe_lr(cell))
                if isinstance(values, list):
                    candidates *= len(values)
            if candidates > 1:
                sweeps[options["sweep"] if options["sweep"] in sweeps else "asha"] += 1
                sweeps["candidates"] += candidates
        return {
            "source_models": len({(c.model_ref, _frozen(c.model_options), c.seed) for c in todo}),
            "datasets": len({(c.dataset_ref, _frozen(c.dataset_options)) for c in todo}),
            "model_dataset_pairs": len({(c.model, c.dataset) for c in todo}),
            "prepared_groups": len({(c.model, c.dataset, c.seed) for c in todo}),
            "feature_pools": len(
                {
                    (
                        c.model_ref,
                        _frozen(c.model_options),
                        c.dataset_ref,
                        _frozen(c.dataset_options),
                    )
                    for c in todo
                }
            ),
            "sweeps": sweeps,
        }

    def to_json(self) -> dict:
        counts = {
            state: sum(c.state == state for c in self.cells)
            for state in ("pending", "retry", "recorded")
        }
        return {
            "suite": self.suite.name,
            "suite_path": str(self.suite.path),
            "run_dir": str(self.run_dir),
            "run_dir_exists": self.run_dir_exists,
            "cells": len(self.cells),
            "to_run": len(self.todo),
            "counts": counts,
            "shared_work": self.shared_work(),
            "cache": {"root": str(self.cache_root), "namespaces": list(self.cache_namespaces)},
            "plan": [
                {
                    "model": p.cell.model,
                    "dataset": p.cell.dataset,
                    "strategy": p.cell.strategy,
                    "seed": p.cell.seed,
                    "config_hash": p.config_hash,
                    "state": p.state,
                    "recorded_status": p.recorded_status,
                }
                for p in self.cells
            ],
        }


def _frozen(options) -> str:
    from tlbench.hashing import stable_hash

    return stable_hash(dict(options))


def make_plan(
    request: RunRequest,
    host: PluginHost,
    suite: Suite,
    cells: list[Cell] | None = None,
    run_dir: RunDir | None = None,
) -> Plan:
    from tlbench.cache import Cache

    if cells is None:
        cells = plan_cells(suite, request.selection)
    if run_dir is None:
        run_dir = choose_run_dir(request, suite)
    run_dir.check_owner(suite.name)
    latest = run_dir.cells.latest_by_hash()
    planned = []
    for cell in cells:
        digest = config_hash(cell)
        previous = latest.get(digest)
        planned.append(
            CellPlan(
                cell,
                digest,
                cell_state(previous, request.retry_failed),
                previous.get("status") if previous else None,
            )
        )
    cache = Cache(request.cache_dir)
    return Plan(
        suite, run_dir.path, run_dir.exists, tuple(planned), cache.root, tuple(cache.info())
    )


def render_plan(plan: Plan, console) -> None:
    from rich.table import Table
    from rich.text import Text

    data = plan.to_json()
    where = (
        "existing run, resumed"
        if plan.run_dir_exists
        else "new run directory (not created by a dry run)"
    )
    console.print(
        f"suite {data['suite']} ({data['suite_path']}): {data['cells']} cells, {data['to_run']} to run",
        highlight=False,
    )
    console.print(f"run directory: {data['run_dir']} ({where})", highlight=False)
    counts = data["counts"]
    console.print(
        f"already recorded: {counts['recorded']}; recorded failed, rerun with --retry-failed: {counts['retry']}; pending: {counts['pending']}",
        highlight=False,
    )
    work = data["shared_work"]
    console.print(
        f"shared work: {work['source_models']} source model loads, {work['datasets']} datasets to decode, "
        f"{work['model_dataset_pairs']} (model, dataset) pairs, {work['prepared_groups']} prepared (model, dataset, seed) groups",
        highlight=False,
    )
    console.print(
        f"shared features: {work['feature_pools']} per-image feature pools serve {data['to_run']} cells; "
        "every seed, strategy and estimator of a (model, dataset) reads what its pool holds and "
        "computes only images no earlier cell or run did (frozen-prefix activations alike)",
        highlight=False,
    )
    sweeps = work["sweeps"]
    if sweeps["asha"] or sweeps["grid"]:
        console.print(
            f"sweeps: {sweeps['asha'] + sweeps['grid']} cells, {sweeps['candidates']} candidates; "
            f'{sweeps["asha"]} by successive halving (sweep = "asha": all train 1 epoch, the '
            f'better half on val continues), {sweeps["grid"]} every candidate to its end (sweep = "grid")',
            highlight=False,
        )
    cached = (
        ", ".join(f"{row['namespace']}: {row['entries']}" for row in data["cache"]["namespaces"])
        or "empty"
    )
    console.print(f"cache {data['cache']['root']}: {cached}", highlight=False)
    table = Table(title="cells", title_justify="left")
    for column in ("model", "dataset", "strategy", "seed", "state"):
        table.add_column(column)
    for row in data["plan"]:
        state = (
            row["state"]
            if row["recorded_status"] is None
            else f"{row['state']} ({row['recorded_status']})"
        )
        table.add_row(
            *(Text(str(row[key])) for key in ("model", "dataset", "strategy", "seed")), state
        )
    console.print(table)


def _recipe_lr(cell) -> str:
    """The option holding the learning-rate grid a cell sweeps when ``lr`` is not given: the
    from-scratch recipe's for ``scratch:`` models (the engine decides from the built model,
    ``tlbench.engine.training.training_recipe``; the plan must not build one)."""
    recipe = cell.strategy_options.get("recipe") or "auto"
    scratch = recipe == "from-scratch" or (
        recipe == "auto" and str(cell.model_ref).startswith("scratch:")
    )
    return "scratch_lr" if scratch else "finetune_lr"
