"""Transferability estimation over a suite: score every (model, dataset, seed) pair with the
suite's estimators, without fine-tuning, and record each score as it is computed.

``run_estimators`` reads the frozen backbone's features of the pair's training split (through
the engine's cached ``extract_features``, the same cache entry a linear probe reads) and, for
estimators that declare ``needs_source_head``, the source model's logits over its own classes.
Records go to ``estimates.jsonl`` in the run directory with the same durable appends as
``cells.jsonl`` (one ``write`` under ``flock``, then ``fsync``), so an interrupted run resumes.

One record per (model, dataset, seed, estimator)::

    {"schema": 1, "kind": "estimate", "suite", "model", "dataset", "seed", "estimator",
     "status": "ok" | "skipped" | "failed", "score", "wall_s", "features_s", "error", ...}

``wall_s`` is the estimator's own time; ``features_s`` is the time spent producing the inputs it
reads (backbone features, or source logits for LEEP/NCE), ``0``-ish when they came from the
cache (``features_cached`` says so). ``rank_correlation`` measures how well scores rank models.
"""

from __future__ import annotations

import math
import os
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tlbench import __version__
from tlbench.cache import stable_hash
from tlbench.cell import escapes_cell
from tlbench.components import Cell
from tlbench.errors import UserError
from tlbench.planning import cell_state
from tlbench.rundir import ESTIMATES, SCHEMA_VERSION, ResultsStore, RunDir, now_iso
from tlbench.suite import Entry, Suite, expand_cells

ESTIMATES_FILE = ESTIMATES  # the name older imports use; the run directory spells it
FEATURES_SPLIT = "train"  # estimators see what a strategy trains on, never val or test


# ---------------------------------------------------------------------------------------- records


def estimates_store(run_dir: RunDir | os.PathLike | str) -> ResultsStore:
    """``RunDir.estimates``: the session's own store when given its ``RunDir`` (read once and
    kept), else that of the directory at ``run_dir``."""
    return run_dir.estimates if isinstance(run_dir, RunDir) else RunDir(run_dir).estimates


def load_estimates(run_dir: RunDir | os.PathLike | str) -> list[dict]:
    """The last record per (model, dataset, seed, estimator) of ``run_dir/estimates.jsonl``."""
    latest: dict[tuple, dict] = {}
    for record in estimates_store(run_dir).read():
        latest[_record_key(record)] = record
    return list(latest.values())


def _record_key(record: Mapping[str, Any]) -> tuple:
    return (record.get("model"), record.get("dataset"), record.get("seed"), record.get("estimator"))


def estimate_hash(cell: Cell, estimator: Entry) -> str:
    """Identifies what an estimate computes, for resume (like ``suite.config_hash`` for cells)."""
    return stable_hash(
        {
            "model": [cell.model_ref, dict(cell.model_options)],
            "dataset": [cell.dataset_ref, dict(cell.dataset_options)],
            "estimator": [estimator.ref, dict(estimator.options)],
            "seed": cell.seed,
            "ids": [cell.model, cell.dataset, estimator.id],
            "versions": {**_pair_versions(cell), "estimator": estimator.version},
        }
    )


def _pair_versions(cell: Cell) -> dict:
    # An estimate depends on the model, the dataset and the split protocol, not on a strategy.
    return {k: v for k, v in cell.versions.items() if k in ("model", "dataset", "protocol")}


def base_estimate(cell: Cell, estimator: Entry) -> dict:
    return {
        "schema": SCHEMA_VERSION,
        "kind": "estimate",
        "suite": cell.suite,
        "config_hash": estimate_hash(cell, estimator),
        "model": cell.model,
        "dataset": cell.dataset,
        "seed": cell.seed,
        "estimator": estimator.id,
        "model_ref": cell.model_ref,
        "dataset_ref": cell.dataset_ref,
        "estimator_ref": estimator.ref,
        "versions": {**_pair_versions(cell), "estimator": estimator.version},
        "options": {
            "model": dict(cell.model_options),
            "dataset": dict(cell.dataset_options),
            "estimator": dict(estimator.options),
        },
        "status": "running",
        "score": None,
        "wall_s": None,
        "features_s": None,
        "error": None,
        "started_at": now_iso(),
        "tlbench_version": __version__,
    }


def pair_label(cell: Cell) -> str:
    """How messages name one estimate's (model, dataset, seed)."""
    return f"estimate {cell.model} x {cell.dataset} (seed {cell.seed})"


def estimator_culprit(registry, entry: Entry) -> str:
    """``estimator 'logme' (plugin 'tlbench.builtin.estimators')``, for a message."""
    try:
        registered, _ = registry.lookup("estimator", entry.ref)
    except UserError:
        return f"estimator {entry.ref!r}"
    return f"estimator {entry.ref!r} (plugin {registered.plugin!r})"


def _error(exc: BaseException, label: str, culprit: str | None = None, where: str = "") -> dict:
    """An ``error`` entry whose message is one line: the pair, who failed, what it raised."""
    text = " ".join(str(exc).split())
    if isinstance(exc, UserError):
        said = f"{culprit}: {text}" if culprit else text
    else:
        said = f"{culprit or 'tlbench'} raised {type(exc).__name__}{where}" + (
            f": {text}" if text else ""
        )
    return {
        "type": type(exc).__name__,
        "message": f"{label}: {said}",
        "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
    }


# ---------------------------------------------------------------------------------------- planning


def estimate_pairs(suite: Suite, selection=None) -> list[Cell]:
    """One representative cell per (model, dataset, seed) the suite runs, in grid order.

    The representative's strategy is irrelevant: only the model, dataset and seed are read.
    ``selection`` (a ``tlbench.planning.Selection``) narrows models, datasets and seeds.
    """
    pairs: dict[tuple, Cell] = {}
    for cell in expand_cells(suite):
        if selection is not None and not selection.keeps(cell, by_strategy=False):
            continue
        pairs.setdefault((cell.model, cell.dataset, cell.seed), cell)
    return list(pairs.values())


# ---------------------------------------------------------------------------------------- running


def run_estimators(
    suite: Suite,
    runner,
    run_dir: RunDir | os.PathLike | str,
    *,
    selection=None,
    retry_failed: bool = False,
) -> list[dict]:
    """Score every (model, dataset, seed) of ``suite`` with each of ``suite.estimators``.

    ``runner`` is a ``tlbench.cell.CellRunner`` (its model, data and cache are reused). Records
    already in ``run_dir/estimates.jsonl`` with status ok or skipped are kept, as are failed ones
    unless ``retry_failed``. Returns the latest record of every estimate of the suite.
    """
    if not suite.estimators:
        return []
    store = estimates_store(run_dir)
    latest = {r.get("config_hash"): r for r in store.read()}
    wanted = []
    for cell in estimate_pairs(suite, selection):
        hashes = {e.id: estimate_hash(cell, e) for e in suite.estimators}
        wanted += hashes.values()
        todo = [
            e
            for e in suite.estimators
            if cell_state(latest.get(hashes[e.id]), retry_failed) != "recorded"
        ]
        if not todo:
            continue
        runner.log(
            f"estimating {cell.model} on {cell.dataset} (seed {cell.seed}): {', '.join(e.id for e in todo)}"
        )
        for record in estimate_pair(cell, todo, runner):
            store.append(record)
            latest[record["config_hash"]] = record
    return [latest[h] for h in wanted if h in latest]


@dataclass
class PairInputs:
    """What a pair's estimators read, and what producing it cost."""

    features: Any  # torch.Tensor (N, D)
    labels: Any  # torch.Tensor (N,)
    features_s: float
    features_cached: bool
    logits: Any = None  # torch.Tensor (N, Z), or None when there is no source head
    logits_s: float | None = None
    logits_cached: bool = False
    no_head: str | None = None  # why there are no logits
    logits_error: dict | None = None  # the source head exists but running it failed
    source_classes: int | None = None


def estimate_pair(cell: Cell, estimators: Sequence[Entry], runner) -> list[dict]:
    """Records for ``estimators`` on one pair; a failure to load or extract fails them all, a
    failing estimator fails alone."""
    loaded, records = [], []
    label = pair_label(cell)
    for entry in estimators:
        record = {**base_estimate(cell, entry), "device": str(runner.device)}
        culprit = estimator_culprit(runner.registry, entry)
        try:
            loaded.append((entry, record, load_estimator(runner.registry, entry)))
        except BaseException as exc:
            if escapes_cell(exc):
                raise
            error = _error(exc, label, culprit, " in its factory")
            records.append(_finish(record, "failed", error=error))
    if not loaded:
        return records
    needs_head = any(bool(getattr(est, "needs_source_head", False)) for _, _, est in loaded)
    try:
        inputs = gather_inputs(cell, runner, needs_head)
    except BaseException as exc:  # one broken pair never stops the others
        if escapes_cell(exc):
            raise
        error = _inputs_error(exc, label)
        return records + [_finish(record, "failed", error=error) for _, record, _ in loaded]
    return records + [
        score_one(entry, record, estimator, inputs, label, runner.registry)
        for entry, record, estimator in loaded
    ]


def _inputs_error(exc: BaseException, label: str) -> dict:
    """A pair whose features could not be made: the model's or dataset's failure (a
    ``CellFailure`` already names the component), or tlbench's."""
    from tlbench.cell import CellFailure

    if isinstance(exc, CellFailure):
        return {**_error(exc.cause, label), "message": f"{label}: {exc.problem}"}
    return _error(exc, label, where=" while computing the pair's features")


def load_estimator(registry, entry: Entry):
    registered, _ = registry.lookup("estimator", entry.ref)
    estimator = registered.spec.load_factory()(dict(entry.options))
    if not callable(getattr(estimator, "score", None)):
        raise UserError(
            f"its factory returned {estimator!r}, which has no "
            "score(features, labels, source_logits) method"
        )
    return estimator


def gather_inputs(cell: Cell, runner, needs_head: bool) -> PairInputs:
    """Train-split features (engine cache, namespace ``features``) and, when asked for and the
    model has a source classifier, its logits (namespace ``source-logits``)."""
    ctx = runner.context(cell)  # a failure names the model or the dataset at fault
    source, data = ctx.source, ctx.data
    features, labels, features_s, features_cached = _features(cell, runner, source, data)
    inputs = PairInputs(features, labels, features_s, features_cached)
    if not needs_head:
        return inputs
    if source.build_with_source_head is None:
        inputs.no_head = f"model {cell.model!r} ({cell.model_ref}) has no source classifier (randomly initialised or headless weights)"
        return inputs
    try:
        logits, inputs.logits_s, inputs.logits_cached = _source_logits(cell, runner, source, data)
    except BaseException as exc:  # fails the estimators that read logits, not LogME or H-score
        if escapes_cell(exc):
            raise
        model = runner.culprit(cell, "model")
        inputs.logits_error = _error(exc, pair_label(cell), model, " computing its source logits")
        return inputs
    inputs.logits, inputs.source_classes = logits, int(logits.shape[1])
    return inputs


def _features(cell: Cell, runner, source, data):
    from tlbench.engine import extract_features
    from tlbench.engine.features import features_key
    from tlbench.engine.runtime import resolve_device, resolve_precision

    precision = resolve_precision("auto", resolve_device(runner.device))
    cached = runner.cache.contains(
        "features", features_key(data, FEATURES_SPLIT, source.fingerprint, precision)
    )
    started = time.perf_counter()
    features, labels = extract_features(
        lambda: source.build(num_classes=0, in_chans=data.in_chans, seed=cell.seed),
        data,
        FEATURES_SPLIT,
        device=runner.device,
        precision=precision,
        cache=runner.cache,
        weights_fingerprint=source.fingerprint,
    )
    return features, labels, time.perf_counter() - started, cached


def _source_logits(cell: Cell, runner, source, data):
    from tlbench.engine import extract_features
    from tlbench.engine.features import features_key
    from tlbench.engine.runtime import resolve_device, resolve_precision

    precision = resolve_precision("auto", resolve_device(runner.device))
    key = {
        **features_key(data, FEATURES_SPLIT, source.fingerprint, precision),
        "output": "source-logits",
    }
    cached = runner.cache.contains("source-logits", key)

    def compute() -> dict:
        # extract_features runs any frozen module over the split; here the module ends in the
        # source classifier, so its outputs are the logits.
        logits, _ = extract_features(
            lambda: source.build_with_source_head(in_chans=data.in_chans),
            data,
            FEATURES_SPLIT,
            device=runner.device,
            precision=precision,
        )
        return {"logits": logits}

    started = time.perf_counter()
    logits = runner.cache.get_or_compute("source-logits", key, compute)["logits"]
    return logits, time.perf_counter() - started, cached


def score_one(
    entry: Entry, record: dict, estimator, inputs: PairInputs, label: str = "", registry=None
) -> dict:
    needs_head = bool(getattr(estimator, "needs_source_head", False))
    record.update(
        n=int(inputs.labels.shape[0]),
        dim=int(inputs.features.shape[1]),
        num_classes=int(inputs.labels.unique().numel()),
    )
    if needs_head:
        if inputs.logits_error is not None:
            return _finish(record, "failed", error=inputs.logits_error)
        if inputs.logits is None:
            message = f"estimator {entry.id!r} needs the source model's predictions over its source classes; {inputs.no_head}"
            return _finish(record, "skipped", error={"type": "Skipped", "message": message})
        record.update(
            features_s=round(inputs.logits_s, 4),
            features_cached=inputs.logits_cached,
            input="source-logits",
            source_classes=inputs.source_classes,
        )
    else:
        record.update(
            features_s=round(inputs.features_s, 4),
            features_cached=inputs.features_cached,
            input="features",
        )
    started = time.perf_counter()
    try:
        score = float(
            estimator.score(inputs.features, inputs.labels, inputs.logits if needs_head else None)
        )
        if not math.isfinite(score):
            raise UserError(f"score() returned a non-finite score ({score}); expected a number")
    except BaseException as exc:
        if escapes_cell(exc):
            raise
        record["wall_s"] = round(time.perf_counter() - started, 4)
        culprit = estimator_culprit(registry, entry) if registry else f"estimator {entry.ref!r}"
        return _finish(record, "failed", error=_error(exc, label, culprit, " in score()"))
    record["wall_s"] = round(time.perf_counter() - started, 4)
    return _finish(record, "ok", score=score)


def _finish(
    record: dict, status: str, *, score: float | None = None, error: dict | None = None
) -> dict:
    record.update(status=status, score=score, error=error, finished_at=now_iso())
    return record


# ---------------------------------------------------------------------------------------- analysis


def rank_correlation(scores: Sequence[float], accuracies: Sequence[float]) -> dict:
    """Kendall's tau-b and weighted tau (hyperbolic weights favouring the top of both rankings,
    as TLlib and the LogME paper report) between estimator scores and actual accuracies.

    Pairs with a missing (NaN/None) value are dropped; with fewer than two left, or with a
    constant side, the correlations are NaN (undefined, not zero).
    """
    from scipy.stats import kendalltau, weightedtau

    kept = [
        (float(s), float(a))
        for s, a in zip(scores, accuracies, strict=True)
        if _finite(s) and _finite(a)
    ]
    result = {
        "kendall_tau": math.nan,
        "kendall_p": math.nan,
        "weighted_tau": math.nan,
        "n": len(kept),
    }
    if len(kept) < 2 or len({s for s, _ in kept}) < 2 or len({a for _, a in kept}) < 2:
        return result
    x, y = zip(*kept, strict=True)
    tau = kendalltau(x, y)
    result.update(
        kendall_tau=float(tau.statistic),
        kendall_p=float(tau.pvalue),
        weighted_tau=float(weightedtau(x, y).statistic),
    )
    return result


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False
