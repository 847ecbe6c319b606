"""Classifiers on frozen features besides the linear probe: weighted k-nearest neighbours (Wu et
al. 2018; DINO's protocol, Caron et al. 2021) and the nearest class mean (Mensink et al. 2013;
SimpleShot's feature normalisations, Wang et al. 2019).

Both read the same cached features a linear probe reads (``tlbench.engine.cell_features``),
choose their one hyperparameter on val, then answer the test split once from train+val (the
refit, as every strategy does) and hand per-example predictions to the runner.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tlbench.api import Option, StrategySpec, UserError, hookimpl
from tlbench.specs import PRECISIONS

# Every strategy that classifies frozen features takes these options (the probe, k-NN, NCM).
PRECISION = Option(
    "precision",
    str,
    default="auto",
    help="Feature extraction precision.",
    choices=PRECISIONS,
)
REFIT = Option(
    "refit",
    bool,
    default=True,
    help="Answer the test split from train+val with the choice made on val (true), or from train only.",
)
EXTRACT_BATCH_SIZE = Option(
    "extract_batch_size",
    int,
    default=None,
    help="Images per feature-extraction batch; default: sized to the memory available (at most 256).",
    minimum=1,
)
FEATURE_OPTIONS = (PRECISION, REFIT, EXTRACT_BATCH_SIZE)

_FACTORY = "tlbench.builtin.feature_strategies:"
NORMALISATIONS = ("none", "l2", "cl2n")
QUERY_CHUNK = 1024  # test rows per similarity matrix: bounds memory at chunk x bank floats


def tuning_record(configurations: int, seconds: float, schedule: str, epochs: float = 0.0) -> dict:
    """``hparams.tuning`` of a strategy that tunes without training epochs: the configurations
    scored on val and the seconds that took (``tlbench.report.records.tuning`` reads it), so
    reports can set its tuning budget beside the trained strategies'. ``schedule``: "grid"
    (every candidate scored once) or "solver" (each candidate solved to its optimum)."""
    return {
        "configurations": configurations,
        "epochs": float(epochs),
        "train_s": round(seconds, 3),
        "schedule": schedule,
    }


@dataclass
class FeatureClassifier:
    """Shared run: features, a choice on val, a refit on train+val, one pass over test."""

    options: dict

    def check(self, ctx) -> None:
        pass

    def run(self, ctx):
        from tlbench.api import StrategyResult
        from tlbench.engine import (
            CostMeter,
            cell_features,
            cell_predictions,
            resolve_device,
            resolve_precision,
        )

        self.check(ctx)
        device = resolve_device(ctx.device)
        precision = resolve_precision(self.options["precision"], device)
        meter = CostMeter(device, precision)
        with meter.phase("features_s"):
            feats = cell_features(
                ctx,
                ("train", "val", "trainval", "test"),
                precision=precision,
                batch_size=self.options.get("extract_batch_size") or "auto",
            )
        num_classes = ctx.data.num_classes
        with meter.phase("train_s"):
            started = time.perf_counter()
            choice, val_top1, tried = self.choose(feats["train"], feats["val"], num_classes)
            tuning = tuning_record(len(tried), time.perf_counter() - started, "grid")
            fit = feats["trainval"] if self.options["refit"] else feats["train"]
        with meter.phase("eval_s"):
            logits = self.logits(fit, feats["test"][0], num_classes, choice)
        test_labels = feats["test"][1]
        top1 = 100.0 * (logits.argmax(1) == test_labels).float().mean().item()
        cost = meter.as_dict(
            trainable=self.fitted_values(fit, num_classes), total=feats.backbone_params
        )
        return StrategyResult(
            metrics={"top1": round(top1, 3), "val_top1": round(val_top1, 3)},
            hparams={
                **choice,
                "refit": self.options["refit"],
                "precision": precision,
                "sweep": tried,
                "tuning": tuning,
            },
            cost=cost | {"prefix_cache": True},
            predictions=cell_predictions(ctx, logits, test_labels),
        )

    def choose(self, train, val, num_classes) -> tuple[dict, float, list[dict]]:
        """The candidate with the best val top-1 (the first listed wins a tie)."""
        tried, best = [], None
        for choice in self.candidates(len(train[1])):
            logits = self.logits(train, val[0], num_classes, choice)
            top1 = 100.0 * (logits.argmax(1) == val[1]).float().mean().item()
            tried.append({**choice, "val_top1": round(top1, 3)})
            if best is None or top1 > best[1]:
                best = (choice, top1)
        return best[0], best[1], tried


# ------------------------------------------------------------------------------ k-NN


@dataclass
class WeightedKnn(FeatureClassifier):
    """Wu et al. 2018 / DINO: cosine similarity between L2-normalised features; each of the k
    nearest training examples votes for its class with weight exp(similarity / T). The logits
    are the log of the normalised votes, so their softmax is the vote share."""

    def check(self, ctx) -> None:
        if not self.options["temperature"] > 0:
            raise UserError(
                f"{ctx.cell.label}: strategy option 'temperature' must be > 0, got {self.options['temperature']!r}"
            )

    def candidates(self, bank_size: int) -> list[dict]:
        ks = dict.fromkeys(min(k, bank_size) for k in self.options["k"])  # listed order, once
        return [{"k": k, "temperature": self.options["temperature"]} for k in ks]

    def logits(self, bank, queries, num_classes: int, choice: dict):
        return knn_logits(
            bank[0], bank[1], queries, num_classes, k=choice["k"], temperature=choice["temperature"]
        )

    def fitted_values(self, bank, num_classes: int) -> int:
        return 0  # nothing is fitted: the training features are the memory bank


def knn_logits(
    bank_features, bank_labels, queries, num_classes: int, *, k: int, temperature: float
):
    """(N, classes) log vote shares of a temperature-weighted k-NN vote (cosine similarity)."""
    import torch
    import torch.nn.functional as F

    bank = F.normalize(bank_features.float(), dim=1)
    k = min(k, len(bank))
    out = []
    for start in range(0, len(queries), QUERY_CHUNK):
        query = F.normalize(queries[start : start + QUERY_CHUNK].float(), dim=1)
        similarity, index = (query @ bank.T).topk(k, dim=1)
        weights = (similarity / temperature).exp()
        votes = torch.zeros(len(query), num_classes).scatter_add_(1, bank_labels[index], weights)
        out.append((votes / votes.sum(1, keepdim=True)).clamp_min(1e-12).log())
    return torch.cat(out)


# ------------------------------------------------------------------------------ nearest class mean


@dataclass
class NearestClassMean(FeatureClassifier):
    """Mensink et al. 2013: each test example goes to the class whose training mean is nearest
    in Euclidean distance, with logits -d^2 / 2 (their probabilistic NCM). The features are used
    as they are, L2-normalised, or centred on the training mean and then L2-normalised (CL2N,
    SimpleShot); which one is chosen on val."""

    def candidates(self, bank_size: int) -> list[dict]:
        return [{"normalize": name} for name in self.options["normalize"]]

    def logits(self, fit, queries, num_classes: int, choice: dict):
        return ncm_logits(fit[0], fit[1], queries, num_classes, normalize=choice["normalize"])

    def fitted_values(self, fit, num_classes: int) -> int:
        return num_classes * fit[0].shape[1]


def ncm_logits(features, labels, queries, num_classes: int, *, normalize: str):
    """(N, classes) -||x - mean_c||^2 / 2 after the chosen normalisation."""
    import torch

    features, queries = _normalised(features.float(), queries.float(), normalize)
    means = torch.zeros(num_classes, features.shape[1]).index_add_(0, labels, features)
    counts = torch.bincount(labels, minlength=num_classes).clamp_min(1)
    means = means / counts[:, None]
    logits = -0.5 * torch.cdist(queries.double(), means.double()).pow(2)
    missing = torch.bincount(labels, minlength=num_classes) == 0
    return logits.float().masked_fill(missing[None, :], float("-inf"))


def _normalised(features, queries, normalize: str):
    import torch.nn.functional as F

    if normalize == "cl2n":
        center = features.mean(0, keepdim=True)  # the fitting set's mean, never the queries'
        features, queries = features - center, queries - center
    if normalize in ("l2", "cl2n"):
        features, queries = F.normalize(features, dim=1), F.normalize(queries, dim=1)
    return features, queries


# ------------------------------------------------------------------------------ registration


def make_knn(options: Mapping[str, Any]) -> WeightedKnn:
    return WeightedKnn(dict(options))


def make_ncm(options: Mapping[str, Any]) -> NearestClassMean:
    return NearestClassMean(dict(options))


SPECS = (
    StrategySpec(
        "knn",
        factory=_FACTORY + "make_knn",
        description="Weighted k-NN on frozen L2-normalised features (Wu et al. 2018; DINO): cosine similarity, votes exp(s/T), k chosen on val.",
        options=(
            Option(
                "k",
                int,
                default=[10, 20, 50, 100, 200],
                help="Neighbours; a list is chosen on val (DINO uses 20, Wu et al. 200).",
                minimum=1,
                sweep=True,
            ),
            Option(
                "temperature",
                float,
                default=0.07,
                help="Vote weight exp(similarity / temperature) (0.07 in both papers).",
                minimum=0.0,
            ),
        )
        + FEATURE_OPTIONS,
        tags=("frozen", "cached", "non-parametric"),
    ),
    StrategySpec(
        "ncm",
        factory=_FACTORY + "make_ncm",
        description="Nearest class mean on frozen features (Mensink et al. 2013); raw, L2 or centred+L2 (SimpleShot) features chosen on val.",
        options=(
            Option(
                "normalize",
                str,
                default=list(NORMALISATIONS),
                help="Feature normalisation: none, l2, or cl2n (centre on the training mean, then L2); a list is chosen on val.",
                choices=NORMALISATIONS,
                sweep=True,
            ),
        )
        + FEATURE_OPTIONS,
        tags=("frozen", "cached"),
    ),
)


@hookimpl
def register_strategies(register):
    for spec in SPECS:
        register(spec)
