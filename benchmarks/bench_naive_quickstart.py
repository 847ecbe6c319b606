"""The full protocol written by hand: plain PyTorch + timm + scikit-learn, no tlbench engine.

This is the "hand-written loop" that `tlbench run` is compared with (docs/benchmarks.md,
"Protocol grid"; benchmarks/bench_protocol_grid.py drives both). Same cells, seeds, epochs,
sweeps and refits as tlbench's strategy defaults, which it reads from the strategy specs so the
two cannot drift apart; what a competent user writes without a caching engine:

* every cell rebuilds its model and re-reads and re-transforms its images (a torch ``Dataset``
  over PIL images, timm's ``create_transform(**resolve_data_config(...))`` at 64 px, grayscale
  converted to RGB, ``DataLoader(num_workers=0)``), nothing is shared between cells;
* linear-probe: features extracted once per cell with the full backbone, then scikit-learn
  ``LogisticRegression(lbfgs)`` over the same strengths tlbench searches (log grid 1e-6..1e2 and
  three rounds of interval halving, ``C = 1 / (l2 * n)``) with tlbench's tolerance and iteration
  cap, on float64 features, refit on train+val;
* the fine-tuning strategies: AdamW (timm's factory: no decay on biases and norms), warmup 0.5
  epoch + cosine (timm's scheduler), batch 64, BatchNorm running statistics frozen, early
  stopping with patience 2 on val, **every configuration of the default sweep trained to its
  end** (no pruning), then a refit on train+val for the chosen epoch count; partial-unfreeze
  freezes its prefix with ``requires_grad=False`` but still runs it forward every step; lp-ft's
  probe scales all features by one number, as tlbench's does (docs/strategies.md);
* seeds: each seed is its own cells, as a loop over seeds runs them: features of images two seeds
  share are extracted again.

Only weight loading (``tlbench.weights``: the packaged ImageNet weights and the seeded
from-scratch init) and the split indices (``tlbench.splits.make_splits`` on the built-in dataset
factories) come from tlbench, so both sides score the same images from the same starting weights.
Prints one line per cell (top-1, seconds) and the total; ``--json`` writes them to a file.

    .venv/bin/python benchmarks/bench_naive_quickstart.py [--models lite0-imagenet] \
        [--strategies linear-probe full-finetune] [--seeds 0 1 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from timm.data import create_transform, resolve_data_config
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from torch import nn
from torch.utils.data import DataLoader, Dataset

PX = 64
BATCH = 64
SEED = 0
MODELS = {"lite0-imagenet": "efficientnet_lite0.in1k", "lite0-scratch": "tf_efficientnet_lite0"}
DATASETS = {
    "digits": {},
    "fashion-mnist": {"train_size": 1000, "test_size": 2000},
}
STRATEGY_NAMES = ("linear-probe", "partial-unfreeze", "full-finetune", "lp-ft", "bitfit", "lora")


def strategy_defaults() -> dict[str, dict]:
    """Each strategy's default sweep, epochs, refit and weight decay, from tlbench's specs."""
    import sys

    from tlbench.builtin.strategies import SPECS

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins" / "tlbench-peft"))
    specs = {spec.name: spec for spec in SPECS}
    try:
        import tlbench_peft

        tlbench_peft.register_strategies(register=lambda spec: specs.setdefault(spec.name, spec))
    except ImportError:
        pass
    out = {"linear-probe": {}}
    for name in STRATEGY_NAMES[1:]:
        if name not in specs:
            continue
        d = {o.name: o.default for o in specs[name].options}
        out[name] = {
            "lrs": list(d["lr"]),
            "epochs": d["epochs"],
            "refit": d["refit"],
            "wd": d["weight_decay"][0],
            "k": d.get("k"),
            "unit": d.get("unit"),
            "fraction": d.get("fraction"),
        }
    return out


STRATEGIES = strategy_defaults()
L2_GRID = [10.0**e for e in range(-6, 3)]
REFINE_STEPS = 3
PATIENCE = 2


def solver_settings() -> tuple[float, int]:
    """(tolerance, iteration cap) tlbench's probe uses, read from its module (not hard-coded)."""
    from tlbench.engine import logistic

    return logistic.DEFAULT_TOL, logistic.DEFAULT_MAX_ITER


# ------------------------------------------------------------------------------ data and models


class Images(Dataset):
    def __init__(self, images: np.ndarray, labels: np.ndarray, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        image = Image.fromarray(self.images[i]).convert("RGB")
        return self.transform(image), int(self.labels[i])


def load_splits(dataset: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Images and labels per split, at the indices tlbench uses for ``SEED``."""
    from tlbench.datasetlib import local
    from tlbench.splits import make_splits

    factory = {"digits": local.digits, "fashion-mnist": local.fashion_mnist}[dataset]
    factory.cache_clear()  # decoded afresh, as a hand-written loop does, not from the memo
    target = factory(None, {})
    splits = make_splits(target, DATASETS[dataset], SEED)
    train = (np.asarray(target.train.images), np.asarray(target.train.labels))
    test_pool = (
        train
        if splits.test_from == "train"
        else (
            np.asarray(target.test.images),
            np.asarray(target.test.labels),
        )
    )
    out = {s: tuple(a[getattr(splits, s)] for a in train) for s in ("train", "val")}
    out["trainval"] = tuple(
        np.concatenate([a, b]) for a, b in zip(out["train"], out["val"], strict=True)
    )
    out["test"] = tuple(a[splits.test] for a in test_pool)
    return out


def make_source(model_id: str):
    """The weights tlbench's quickstart starts from (packaged ImageNet, or seeded random init)."""
    from tlbench.builtin.model_sources import PACKAGED, packaged_model, scratch_model
    from tlbench.cache import Cache
    from tlbench.components import BuildContext

    context = BuildContext(cache=Cache(Path(tempfile.mkdtemp())), device="cpu", seed=SEED)
    name = MODELS[model_id]
    if model_id.endswith("scratch"):
        return scratch_model(name, {"input_size": PX}, context)
    return packaged_model(PACKAGED[name], None, {"input_size": PX}, context)


def loaders(model: nn.Module, splits, num_classes: int):
    config = resolve_data_config({"input_size": (3, PX, PX)}, model=model)
    transform = create_transform(**config, is_training=False)

    def loader(split: str, shuffle: bool = False, epoch: int = 0) -> DataLoader:
        generator = torch.Generator().manual_seed(SEED * 1000 + epoch)
        return DataLoader(
            Images(*splits[split], transform),
            batch_size=BATCH if shuffle else 2 * BATCH,
            shuffle=shuffle,
            generator=generator,
            num_workers=0,
        )

    return loader


# ------------------------------------------------------------------------------ linear probe


@torch.no_grad()
def features(backbone: nn.Module, loader: DataLoader) -> tuple[np.ndarray, np.ndarray]:
    backbone.eval()
    xs, ys = [], []
    for x, y in loader:
        xs.append(backbone(x))
        ys.append(y)
    return torch.cat(xs).numpy(), torch.cat(ys).numpy()


def fit_probe(
    train, l2: float, one_scale: bool = False
) -> tuple[StandardScaler, LogisticRegression]:
    """``one_scale``: every feature divided by the same number (their mean standard deviation),
    as tlbench's LP-FT probe does; otherwise each standardised (the linear-probe protocol)."""
    x = train[0].astype(np.float64)
    scaler = StandardScaler().fit(x)
    if one_scale:
        scaler.scale_ = np.full_like(scaler.scale_, np.sqrt(scaler.var_).mean())
    tol, max_iter = solver_settings()
    clf = LogisticRegression(C=1.0 / (l2 * len(train[1])), max_iter=max_iter, tol=tol)
    return scaler, clf.fit(scaler.transform(x), train[1])


def search_probe(train, val, one_scale: bool = False) -> float:
    """The strength with the best val top-1: the log grid, then interval halving around the best."""
    scores = {}

    def score(l2: float) -> None:
        if l2 not in scores:
            scaler, clf = fit_probe(train, l2, one_scale)
            scores[l2] = clf.score(scaler.transform(val[0].astype(np.float64)), val[1])

    def best() -> float:
        return max(scores, key=lambda s: (scores[s], s))

    for l2 in sorted(L2_GRID, reverse=True):
        score(l2)
    half_width = 1.0
    for _ in range(REFINE_STEPS):
        centre, half_width = math.log10(best()), half_width / 2
        score(10.0 ** (centre - half_width))
        score(10.0 ** (centre + half_width))
    return best()


def linear_probe(source, splits, num_classes: int) -> tuple[float, dict]:
    backbone = source.build(num_classes=0, in_chans=3, seed=SEED)
    loader = loaders(backbone, splits, num_classes)
    feats = {s: features(backbone, loader(s)) for s in ("train", "val", "test")}
    feats["trainval"] = tuple(
        np.concatenate([a, b]) for a, b in zip(feats["train"], feats["val"], strict=True)
    )
    l2 = search_probe(feats["train"], feats["val"])
    scaler, clf = fit_probe(feats["trainval"], l2)
    return 100.0 * clf.score(
        scaler.transform(feats["test"][0].astype(np.float64)), feats["test"][1]
    ), {"l2": l2}


# ------------------------------------------------------------------------------ fine-tuning


def lora_targets(model: nn.Module) -> list[str]:
    """Linear layers and non-grouped 1x1 convolutions outside the classifier (tlbench-peft's
    ``auto``)."""
    head = model.get_classifier()
    return [
        name
        for name, m in model.named_modules()
        if m is not head
        and (
            isinstance(m, nn.Linear)
            or (isinstance(m, nn.Conv2d) and m.groups == 1 and m.kernel_size == (1, 1))
        )
    ]


def build(strategy: str, source, splits, num_classes: int, loader) -> nn.Module:
    torch.manual_seed(SEED)
    model = source.build(num_classes=num_classes, in_chans=3, seed=SEED)
    head = {id(p) for p in model.get_classifier().parameters()}
    if strategy == "lora":
        from peft import LoraConfig, get_peft_model

        classifier = next(n for n, m in model.named_modules() if m is model.get_classifier())
        config = LoraConfig(
            r=8,
            lora_alpha=16,
            lora_dropout=0.0,
            target_modules=lora_targets(model),
            modules_to_save=[classifier],
        )
        return get_peft_model(model, config)
    if strategy == "lp-ft":
        backbone = copy.deepcopy(model)
        backbone.reset_classifier(0)
        train, val = (features(backbone, loader(s)) for s in ("train", "val"))
        scaler, clf = fit_probe(train, search_probe(train, val, True), one_scale=True)
        weight = torch.tensor(clf.coef_ / scaler.scale_, dtype=torch.float32)
        with torch.no_grad():
            model.get_classifier().weight.copy_(weight)
            model.get_classifier().bias.copy_(
                torch.tensor(clf.intercept_, dtype=torch.float32)
                - weight @ torch.tensor(scaler.mean_, dtype=torch.float32)
            )
    if strategy == "bitfit":
        for name, p in model.named_parameters():
            p.requires_grad_(name.endswith(".bias") or id(p) in head)
    if strategy == "partial-unfreeze":
        # The same layers tlbench's partial-unfreeze trains (its group choice, not its engine).
        from tlbench.builtin.layer_choice import by_fraction, model_groups, params_of

        options = STRATEGIES["partial-unfreeze"]
        groups = model_groups(model, options["unit"])
        k = options["k"]
        chosen = (
            by_fraction(groups, options["fraction"]) if k is None else groups[len(groups) - k :]
        )
        last = set(params_of(chosen))
        for name, p in model.named_parameters():
            p.requires_grad_(name in last or id(p) in head)
    return model


def train_mode(model: nn.Module) -> None:
    """Train mode with BatchNorm running statistics frozen, and fully frozen modules in eval."""
    model.train()
    for m in model.modules():
        params = list(m.parameters())
        if isinstance(m, nn.modules.batchnorm._BatchNorm) or (
            params and not any(p.requires_grad for p in params)
        ):
            m.eval()


@torch.no_grad()
def top1(model: nn.Module, loader: DataLoader) -> float:
    model.eval()
    correct = total = 0
    for x, y in loader:
        correct += (model(x).argmax(1) == y).sum().item()
        total += len(y)
    return 100.0 * correct / total


def train(model, loader, split, lr, wd, epochs, val_split=None):
    """Returns (best val top-1, best epoch, best weights)."""
    optimizer = create_optimizer_v2(model, opt="adamw", lr=lr, weight_decay=wd)
    steps = len(loader(split, shuffle=True))
    total = epochs * steps
    scheduler = CosineLRScheduler(
        optimizer,
        t_initial=total,
        lr_min=lr * 1e-2,
        warmup_t=min(int(0.5 * steps), total - 1),
        warmup_lr_init=lr * 1e-2,
        t_in_epochs=False,
    )
    best, best_epoch, best_state, step = None, epochs, None, 0
    torch.manual_seed(SEED)
    for epoch in range(epochs):
        train_mode(model)
        for x, y in loader(split, shuffle=True, epoch=epoch):
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            scheduler.step_update(num_updates=step)
        if val_split is None:
            continue
        score = top1(model, loader(val_split))
        if best is None or score > best:
            best, best_epoch, best_state = score, epoch + 1, copy.deepcopy(model.state_dict())
        elif epoch + 1 - best_epoch >= PATIENCE:
            break
    return best, best_epoch, best_state


def finetune(strategy: str, source, splits, num_classes: int) -> tuple[float, dict]:
    options = STRATEGIES[strategy]
    loader = loaders(source.build(num_classes=0), splits, num_classes)
    runs = []
    for lr in options["lrs"]:
        model = build(strategy, source, splits, num_classes, loader)
        val, epoch, state = train(
            model, loader, "train", lr, options["wd"], options["epochs"], "val"
        )
        runs.append((val, lr, epoch, model, state))
    _, lr, epoch, model, state = max(runs, key=lambda r: r[0])  # first wins ties
    if options["refit"]:
        model = build(strategy, source, splits, num_classes, loader)
        train(model, loader, "trainval", lr, options["wd"], epoch)
    else:
        model.load_state_dict(state)
    return top1(model, loader("test")), {"lr": lr, "epochs": epoch}


# ------------------------------------------------------------------------------ the grid


def main() -> None:
    global SEED, PX  # the helpers read them: split, init and data order; input resolution
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument(
        "--strategies", nargs="+", default=list(STRATEGIES), choices=list(STRATEGIES)
    )
    parser.add_argument("--json", type=Path, help="write per-cell top-1 and seconds here")
    parser.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        default=[0],
        help="as tlbench's seeds: train/val split, init, data order",
    )
    parser.add_argument(
        "--px", type=int, default=PX, help="input resolution (tlbench's input_size)"
    )
    parser.add_argument(
        "--epochs", type=int, default=None, help="override every fine-tuning strategy's epochs"
    )
    args = parser.parse_args()
    PX = args.px
    if args.epochs is not None:
        for name, options in STRATEGIES.items():
            if name != "linear-probe":
                options["epochs"] = args.epochs
    rows = []
    start = time.perf_counter()
    for model_id in args.models:
        for dataset in args.datasets:
            for seed in args.seeds:
                SEED = seed
                for strategy in args.strategies:
                    rows.append(run_cell(model_id, dataset, strategy))
                    if args.json:  # after every cell: a run stopped early keeps what it measured
                        total = time.perf_counter() - start
                        args.json.write_text(
                            json.dumps({"total_s": round(total, 1), "cells": rows}, indent=1)
                        )
    print(f"total {time.perf_counter() - start:.1f}s")


def run_cell(model_id: str, dataset: str, strategy: str) -> dict:
    t0 = time.perf_counter()
    # Per cell, as a hand-written loop does: weights, images and transforms afresh.
    source = make_source(model_id)
    splits = load_splits(dataset)
    num_classes = int(splits["train"][1].max()) + 1
    if strategy == "linear-probe":
        score, chosen = linear_probe(source, splits, num_classes)
    else:
        score, chosen = finetune(strategy, source, splits, num_classes)
    seconds = time.perf_counter() - t0
    print(
        f"{model_id:15s} {dataset:14s} seed {SEED} {strategy:17s} top1={score:6.2f} {seconds:7.1f}s {chosen}",
        flush=True,
    )
    return {
        "model": model_id,
        "dataset": dataset,
        "seed": SEED,
        "strategy": strategy,
        "top1": round(score, 3),
        "chosen": chosen,
        "seconds": round(seconds, 1),
    }


if __name__ == "__main__":
    main()
