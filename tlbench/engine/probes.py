"""Linear probes on banked features, cached under what determines them: the features (weights,
split images, preprocessing, precision), the strengths searched, the feature scaling and the
solver's cap and tolerance. Cells that fit the same probe share it: LP-FT with
``probe_scaling = "feature"`` starts from exactly the head the linear-probe cell of the same
(model, dataset, seed) chose, and a rerun or another strategy's variant reads it back.
"""

from __future__ import annotations

from dataclasses import dataclass

import tlbench.engine.logistic as logistic
from tlbench.engine.features import CellFeatures, features_key
from tlbench.engine.logistic import LinearHead, LogisticSearch
from tlbench.engine.runtime import resolve_device, resolve_precision

PROBE_VERSION = 4  # bump when what a cached probe holds, or how it is fit, changes


@dataclass(frozen=True)
class Probe:
    """A probe and whether it came from the cache (fitted by an earlier cell or run)."""

    value: LogisticSearch | LinearHead
    shared: bool


def _key(ctx, splits: tuple[str, ...], precision: str, **fit) -> dict:
    device = resolve_device(ctx.device)
    return {
        "features": {
            s: features_key(ctx.data, s, ctx.source.fingerprint, precision) for s in splits
        },
        "num_classes": ctx.data.num_classes,
        # Read at call time: the solver's settings are the module's, whatever they are now.
        "max_iter": logistic.DEFAULT_MAX_ITER,
        "tol": logistic.DEFAULT_TOL,
        "device": device.type,
        "version": PROBE_VERSION,
        **fit,
    }


def _head_value(head: LinearHead) -> dict:
    return {"weight": head.weight.cpu(), "bias": head.bias.cpu(), "l2": float(head.l2)}


def _head(value: dict) -> LinearHead:
    return LinearHead(value["weight"], value["bias"], value["l2"])


def probe_search(
    ctx,
    feats: CellFeatures,
    *,
    grid: tuple[float, ...],
    refine_steps: int,
    scaling: str,
    precision: str = "auto",
) -> Probe:
    """``search_logistic`` on the cell's train/val features, through the cache."""
    device = resolve_device(ctx.device)
    precision = resolve_precision(precision, device)
    computed = []

    def compute() -> dict:
        computed.append(True)
        search = logistic.search_logistic(
            feats["train"],
            feats["val"],
            ctx.data.num_classes,
            grid=grid,
            refine_steps=refine_steps,
            device=device,
            max_iter=logistic.DEFAULT_MAX_ITER,
            tol=logistic.DEFAULT_TOL,
            scaling=scaling,
        )
        return {
            "head": _head_value(search.head),
            "l2": float(search.l2),
            "val_top1": float(search.val_top1),
            "tried": search.tried,
        }

    key = _key(
        ctx,
        ("train", "val"),
        precision,
        grid=sorted(float(g) for g in grid),
        refine_steps=refine_steps,
        scaling=scaling,
        fit="search",
    )
    value = ctx.cache.get_or_compute("probe", key, compute)
    search = LogisticSearch(
        head=_head(value["head"]),
        l2=value["l2"],
        val_top1=value["val_top1"],
        tried=[dict(row) for row in value["tried"]],
    )
    return Probe(search, shared=not computed)


def probe_fit(
    ctx, feats: CellFeatures, split: str, *, l2: float, scaling: str, precision: str = "auto"
) -> Probe:
    """``fit_logistic`` on one split's features (the refit on ``trainval``), through the cache."""
    device = resolve_device(ctx.device)
    precision = resolve_precision(precision, device)
    computed = []

    def compute() -> dict:
        computed.append(True)
        head = logistic.fit_logistic(
            *feats[split],
            ctx.data.num_classes,
            l2=l2,
            device=device,
            max_iter=logistic.DEFAULT_MAX_ITER,
            tol=logistic.DEFAULT_TOL,
            scaling=scaling,
        )
        return _head_value(head)

    parts = ("train", "val") if split == "trainval" else (split,)
    key = _key(ctx, parts, precision, l2=float(l2), scaling=scaling, fit=split)
    return Probe(_head(ctx.cache.get_or_compute("probe", key, compute)), shared=not computed)
