"""Quickstart-like grid, tlbench's engine (shared caches) vs a naive per-cell loop.

Cells: {efficientnet_lite0.in1k, scratch:tf_efficientnet_lite0} x {digits, fashion-mnist
train_size=1000} x strategies, at 64 px, 1 seed. Both modes use the same cells, epochs and sweeps.
The naive loop is what a user writes by hand: no cache shared between cells or candidates, every
linear-probe candidate re-extracts its features, partial-unfreeze runs the full backbone every
epoch. Prints wall time per mode, the ratio, and the largest top-1 difference.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_grid.py [--px 64] [--datasets digits fashion-mnist]
"""

from __future__ import annotations

import argparse
import json

import common

from tlbench.builtin import strategies as builtin
from tlbench.cache import Cache
from tlbench.engine import extract_features, fit_logistic, search_logistic
from tlbench.engine.logistic import accuracy
from tlbench.specs import resolve_options

MODELS = ("efficientnet_lite0.in1k", "scratch:tf_efficientnet_lite0")
DATASETS = ("digits", "fashion-mnist")


def specs() -> dict:
    found = {s.name: s for s in builtin.SPECS}
    try:
        import tlbench_peft

        tlbench_peft.register_strategies(register=lambda s: found.setdefault(s.name, s))
    except ImportError:
        pass
    return found


def naive_linear_probe(ctx, options):
    """Features recomputed for every candidate strength, as a hand-written sweep would."""
    uncached = dict(device=ctx.device, cache=None)

    def feats(split):
        return extract_features(
            lambda: ctx.source.build(num_classes=0, in_chans=ctx.data.in_chans, seed=ctx.seed),
            ctx.data,
            split,
            **uncached,
        )

    probe = search_logistic(feats("train"), feats("val"), ctx.data.num_classes, device=ctx.device)
    for _ in probe.tried[1:]:  # the other candidates' feature passes (the fit is the same)
        feats("train"), feats("val")
    head = fit_logistic(*feats("trainval"), ctx.data.num_classes, l2=probe.l2, device=ctx.device)
    return accuracy(head.logits(feats("test")[0]), ctx.data.labels("test"))


def run_cell(mode, strategy, src, data, dataset, store, overrides):
    spec = specs()[strategy]
    given = {k: v for k, v in overrides.items() if k in {o.name for o in spec.options}}
    options = resolve_options(spec.options, given)
    cell_store = store if mode == "tlbench" else Cache(enabled=False)
    ctx = common.context(src, data, strategy, options, cell_store, dataset=dataset)
    if mode == "naive" and strategy == "linear-probe":
        return naive_linear_probe(ctx, options)
    runner = spec.load_factory()(options)
    if mode == "naive" and hasattr(runner, "cache_prefix"):
        runner.cache_prefix = False
    return runner.run(ctx).metrics["top1"]


def run_mode(mode, args, overrides):
    store = common.cache(f"grid-{mode}")
    store.clear()
    scores = {}
    with common.timer() as total:
        for model in args.models:
            src = common.source(model, args.px, store)
            for dataset in args.datasets:
                data = common.prepared(
                    dataset,
                    src,
                    args.px,
                    store,
                    train_size=1000 if dataset == "fashion-mnist" else None,
                )
                for strategy in args.strategies:
                    with common.timer() as t:
                        scores[(model, dataset, strategy)] = run_cell(
                            mode, strategy, src, data, dataset, store, overrides
                        )
                    print(
                        f"{mode:8s} {model:32s} {dataset:14s} {strategy:17s} top1={scores[(model, dataset, strategy)]:6.2f} {t.seconds:7.1f}s",
                        flush=True,
                    )
    return total.seconds, scores


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--px", type=int, default=64)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS))
    parser.add_argument("--strategies", nargs="+", default=sorted(specs()))
    parser.add_argument(
        "--options", default="{}", help='JSON overrides for every strategy, e.g. {"epochs": 2}'
    )
    parser.add_argument("--modes", nargs="+", default=["tlbench", "naive"])
    args = parser.parse_args()
    overrides = json.loads(args.options)
    results = {mode: run_mode(mode, args, overrides) for mode in args.modes}
    for mode, (seconds, _) in results.items():
        print(f"{mode}: {seconds:.1f} s")
    if len(results) == 2:
        (a, sa), (b, sb) = results["tlbench"], results["naive"]
        print(
            f"naive / tlbench wall time: {b / a:.1f}x; max |top1 difference| {max(abs(sa[k] - sb[k]) for k in sa):.2f} points"
        )


if __name__ == "__main__":
    main()
