"""Linear-probe sweep on cached features: tlbench.engine.search_logistic (torch L-BFGS, warm
starts) vs scikit-learn LogisticRegression(lbfgs) over the same strengths, same tolerance and
iteration cap. Reports wall time, the ratio, and the val accuracy each picks.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_linear_probe.py [--dataset fashion|digits] [--px 64]
"""

from __future__ import annotations

import argparse

import common
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from tlbench.engine import cell_features, search_logistic
from tlbench.engine.logistic import DEFAULT_MAX_ITER, DEFAULT_TOL


def sklearn_sweep(train, val, strengths):
    scaler = StandardScaler().fit(train[0].numpy())
    xtr, xva = scaler.transform(train[0].numpy()), scaler.transform(val[0].numpy())
    n = len(train[1])
    scores = {}
    for l2 in strengths:
        clf = LogisticRegression(C=1.0 / (l2 * n), max_iter=DEFAULT_MAX_ITER, tol=DEFAULT_TOL)
        clf.fit(xtr, train[1].numpy())
        scores[l2] = 100.0 * clf.score(xva, val[1].numpy())
    best = max(scores, key=lambda s: (scores[s], s))
    return best, scores[best]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", default="fashion-mnist", choices=("fashion-mnist", "digits"))
    parser.add_argument("--px", type=int, default=64)
    parser.add_argument("--model", default="efficientnet_lite0.in1k")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    store = common.cache("features")
    src = common.source(args.model, args.px, store)
    data = common.prepared(args.dataset, src, args.px, store, train_size=1000)
    ctx = common.context(src, data, "linear-probe", {}, store)
    feats = cell_features(ctx, ("train", "val"))
    ours, theirs = [], []
    for _ in range(args.repeats):
        with common.timer() as t:
            search = search_logistic(
                feats["train"], feats["val"], data.num_classes, device=ctx.device
            )
        ours.append(t.seconds)
        strengths = [row["l2"] for row in search.tried]
        with common.timer() as t:
            sk_l2, sk_val = sklearn_sweep(feats["train"], feats["val"], strengths)
        theirs.append(t.seconds)
    a, b = float(np.median(ours)), float(np.median(theirs))
    print(
        f"dataset={args.dataset} px={args.px} model={args.model} n_train={len(feats['train'][1])} dim={feats['train'][0].shape[1]} fits={len(strengths)}"
    )
    print(f"tlbench  : {a:7.2f} s  best l2={search.l2:.3g}  val_top1={search.val_top1:.2f}")
    print(f"sklearn  : {b:7.2f} s  best l2={sk_l2:.3g}  val_top1={sk_val:.2f}")
    print(f"speed-up : {b / a:.1f}x   val difference: {search.val_top1 - sk_val:+.2f} points")


if __name__ == "__main__":
    main()
