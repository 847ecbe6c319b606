"""Linear-probe strength search on cached features: tlbench.engine.search_logistic (torch
L-BFGS, each fit warm-started from the nearest strength already solved) vs scikit-learn
``LogisticRegression(warm_start=True)`` fitting the same strengths in the same order, each fit
warm-started from the same nearest solution (``coef_``/``intercept_`` set before ``fit``, which
is what ``warm_start`` reads), the same objective (``C = 1 / (l2 * n)``), the same tolerance and
iteration cap (read from ``tlbench.engine.logistic``, not hard-coded), float64 features on both
sides. Reports wall time, the ratio, and the validation top-1 of every strength on both sides
(the comparison holds at equal validation accuracy only if those agree).

    .venv/bin/python benchmarks/bench_linear_probe.py [--dataset fashion-mnist|digits] [--px 64]
"""

from __future__ import annotations

import argparse
import math

import common
import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from tlbench.engine import cell_features, logistic, search_logistic


def sklearn_search(train, val, strengths) -> dict[float, float]:
    """Val top-1 per strength; each fit warm-starts from the nearest strength fitted before."""
    tol, max_iter = logistic.DEFAULT_TOL, logistic.DEFAULT_MAX_ITER
    x = train[0].numpy().astype(np.float64)
    scaler = StandardScaler().fit(x)
    xtr, xva = scaler.transform(x), scaler.transform(val[0].numpy().astype(np.float64))
    ytr, yva = train[1].numpy(), val[1].numpy()
    solutions, scores = {}, {}
    for l2 in strengths:
        clf = LogisticRegression(
            C=1.0 / (l2 * len(ytr)), max_iter=max_iter, tol=tol, warm_start=True
        )
        if solutions:
            nearest = min(solutions, key=lambda s: abs(math.log(s) - math.log(l2)))
            clf.coef_, clf.intercept_ = (a.copy() for a in solutions[nearest])
        clf.fit(xtr, ytr)
        solutions[l2] = (clf.coef_, clf.intercept_)
        scores[l2] = 100.0 * clf.score(xva, yva)
    return scores


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion-mnist", choices=("fashion-mnist", "digits"))
    parser.add_argument("--px", type=int, default=64)
    parser.add_argument("--model", default="efficientnet_lite0.in1k")
    parser.add_argument("--train-size", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    start_stamp = common.stamp()
    store = common.cache("features")
    src = common.source(args.model, args.px, store)
    data = common.prepared(args.dataset, src, args.px, store, train_size=args.train_size)
    ctx = common.context(src, data, "linear-probe", {}, store)
    feats = cell_features(ctx, ("train", "val"))
    device = torch.device("cpu")
    ours, theirs = [], []
    for r in range(args.repeats):
        for side in ("ours", "sklearn") if r % 2 == 0 else ("sklearn", "ours"):
            if side == "ours":
                with common.timer() as t:
                    search = search_logistic(
                        feats["train"], feats["val"], data.num_classes, device=device
                    )
                ours.append(t.seconds)
            else:
                strengths = [row["l2"] for row in search.tried]  # round 0 runs ours first
                with common.timer() as t:
                    sk_scores = sklearn_search(feats["train"], feats["val"], strengths)
                theirs.append(t.seconds)
    ours_scores = {row["l2"]: row["val_top1"] for row in search.tried}
    sk_best = max(sk_scores, key=lambda s: (sk_scores[s], s))
    gaps = [abs(ours_scores[s] - sk_scores[s]) for s in ours_scores]
    a, b = common.median(ours), common.median(theirs)
    n, dim = len(feats["train"][1]), feats["train"][0].shape[1]
    common.print_table(
        f"Linear-probe search, {args.dataset}, {args.model} at {args.px} px, {n} train x {dim} "
        f"features, {len(ours_scores)} strengths, tol {logistic.DEFAULT_TOL:g}, "
        f"max_iter {logistic.DEFAULT_MAX_ITER}, median of {args.repeats}",
        ["side", "seconds", "chosen l2", "val top-1 at chosen"],
        [
            ["tlbench search_logistic", a, search.l2, search.val_top1],
            ["scikit-learn warm_start", b, sk_best, sk_scores[sk_best]],
            ["sklearn / tlbench", b / a, "", ""],
        ],
    )
    print(f"val top-1 per strength, max |difference| {max(gaps):.2f} points")
    common.log_result(
        "linear_probe",
        args,
        {
            "tlbench_s": ours,
            "sklearn_s": theirs,
            "ratio": b / a,
            "tlbench_val": ours_scores,
            "sklearn_val": sk_scores,
            "max_val_gap": max(gaps),
        },
        start_stamp=start_stamp,
    )


if __name__ == "__main__":
    main()
