"""Built-in fine-tuning strategies, registered through the public ``register_strategies`` hook.

Registering imports nothing heavy: each factory is a lazy ``"module:attr"`` string, and the
strategy objects import ``tlbench.engine`` (and torch) only when a cell runs. Every strategy is a
``Recipe`` (what trains) handed to ``tlbench.engine.finetune``; default sweeps and where they come
from are documented in docs/strategies.md.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tlbench.api import (
    FineTuneStrategy,
    Option,
    StrategySpec,
    UserError,
    head_names,
    hookimpl,
    training_options,
)
from tlbench.builtin.feature_strategies import FEATURE_OPTIONS, tuning_record
from tlbench.builtin.layer_choice import (
    GroupStrategy,
    by_fraction,
    model_groups,
    select,
    unit_option,
)

_FACTORY = "tlbench.builtin.strategies:"


class FullFineTune(FineTuneStrategy):
    pass


@dataclass
class PartialUnfreeze(GroupStrategy):
    """The head and a choice of layer groups train: ``groups`` by position or name, or the last
    ``k``, or by default the fewest output-side blocks holding at least ``fraction`` of the
    backbone's parameters (docs/strategies.md says why). The frozen prefix's activations are
    cached."""

    cache_prefix: bool = True

    def choose(self, ctx, model, groups):
        k, spec, unit = self.options["k"], self.options["groups"], self.options["unit"]
        if k is not None and spec is not None:
            raise UserError(
                f"{ctx.cell.label}: strategy options 'k' and 'groups' both choose what trains; give one"
            )
        if spec is not None:
            return select(groups, spec, f"{ctx.cell.label}: strategy option 'groups'")
        if k is None:
            return by_fraction(groups, self.options["fraction"])
        if k > len(groups):
            other = "stage" if unit == "block" else "block"
            raise UserError(
                f"{ctx.cell.label}: strategy option 'k' = {k} but {ctx.source.arch} has only {len(groups)} layer groups with unit = {unit!r} (use k <= {len(groups)}; with unit = {other!r} it has {len(model_groups(model, other))} layer groups)"
            )
        return list(groups[len(groups) - k :]) if k else []


class BitFit(FineTuneStrategy):
    """Biases only, plus the new head (Ben Zaken et al. 2022)."""

    def trainable(self, model) -> list[str]:
        return [n for n, _ in model.named_parameters() if n.endswith(".bias")] + head_names(model)


@dataclass
class LinearProbeThenFineTune(FineTuneStrategy):
    """LP-FT (Kumar et al. 2022): the head starts from a linear probe on frozen features, then
    everything trains. The probe's strength is chosen on val once; the refit's probe is refit on
    train+val, so test data never informs it.

    By default (``probe_scaling = "global"``) the probe scales all feature dimensions by one
    number, not each to unit variance as the linear-probe strategy does. Per-dimension
    standardisation, folded into the head, multiplies low-variance directions by up to 1/std: on
    digits the probed lite0 head produced logits of ~250, and the first fine-tuning epoch, moving
    features slightly along those directions, took val top-1 from 93.4 to 75.7 (test ended at
    94.2, below the probe alone). With one scale the same cell keeps val above 91 throughout and
    ends at 96.7; on the quickstart's four LP-FT cells test top-1 rose by 1.1-4.4 points and val
    never fell (docs/strategies.md).

    Its features come from the bank the linear-probe cell of the same (model, dataset) filled;
    the probe itself is that cell's only with ``probe_scaling = "feature"`` (the same fit,
    shared through ``tlbench.engine.probes``)."""

    _probes: dict = field(default_factory=dict)
    _reuse: dict = field(default_factory=lambda: {"computed": 0, "reused": 0})
    _probe_time: dict = field(default_factory=dict)  # the probe search's seconds (_probe)

    @property
    def probe_scaling(self) -> str:
        return self.options.get("probe_scaling") or "global"

    def setup(self, model, ctx, phase: str):
        import torch

        head = self._probe(ctx, phase)
        classifier = model.get_classifier()
        with torch.no_grad():
            classifier.weight.copy_(head.weight.to(classifier.weight))
            classifier.bias.copy_(head.bias.to(classifier.bias))
        return model

    def _features(self, ctx, splits):
        from tlbench.engine import cell_features

        feats = cell_features(ctx, splits)
        self._reuse["computed"] += feats.reuse.computed
        self._reuse["reused"] += feats.reuse.reused
        return feats

    def _probe(self, ctx, phase: str):
        from tlbench.engine import DEFAULT_L2_GRID
        from tlbench.engine.logistic import DEFAULT_REFINE_STEPS
        from tlbench.engine.probes import probe_fit, probe_search

        if "search" not in self._probes:
            started = time.perf_counter()
            feats = self._features(ctx, ("train", "val"))
            searching = time.perf_counter()
            self._probes["search"] = probe_search(
                ctx,
                feats,
                grid=DEFAULT_L2_GRID,
                refine_steps=DEFAULT_REFINE_STEPS,
                scaling=self.probe_scaling,
            )
            done = time.perf_counter()
            self._probe_time = {
                "features_s": searching - started,
                "search_s": done - searching,
                "phase": phase,
            }
        search = self._probes["search"].value
        if phase == "search":
            return search.head
        if "refit" not in self._probes:
            self._probes["refit"] = probe_fit(
                ctx,
                self._features(ctx, ("trainval",)),
                "trainval",
                l2=search.l2,
                scaling=self.probe_scaling,
            )
        return self._probes["refit"].value

    def run(self, ctx):
        result = super().run(ctx)
        search = self._probes["search"]
        result.hparams["probe_l2"] = search.value.l2
        result.hparams["probe_scaling"] = self.probe_scaling
        result.hparams["sweep_probe"] = search.value.tried
        result.hparams["probe_shared"] = search.shared
        result.hparams["tuning"] = self._tuning(result.hparams["tuning"], search)
        result.cost.update(
            features_computed=self._reuse["computed"], features_reused=self._reuse["reused"]
        )
        return result

    def _tuning(self, fine_tune: dict, search) -> dict:
        """Both stages' tuning: the probe's strengths solved on val and the fine-tuning sweep,
        each under ``stages``, with their sums in the fields every strategy records. The probe
        is searched while the first fine-tuning candidate is built, so its seconds (and its
        features') are taken out of the sweep's. A probe read from the cache (``shared``) was
        paid for by the cell that fitted it: its seconds here are the read's."""
        timed = self._probe_time
        fine_tune = dict(fine_tune)
        if timed.get("phase") == "search":
            inside = timed["features_s"] + timed["search_s"]
            fine_tune["train_s"] = round(max(0.0, fine_tune["train_s"] - inside), 3)
        probe = tuning_record(len(search.value.tried), timed.get("search_s", 0.0), "solver")
        probe["shared"] = search.shared
        return {
            "configurations": probe["configurations"] + fine_tune["configurations"],
            "epochs": fine_tune["epochs"],
            "train_s": round(probe["train_s"] + fine_tune["train_s"], 3),
            "schedule": f"solver + {fine_tune['schedule']}",
            "stages": {"probe": probe, "fine-tune": fine_tune},
        }


# ------------------------------------------------------------------------------ linear probe


@dataclass
class LinearProbe:
    """Logistic regression on cached frozen features (Kornblith et al. 2019; CLIP App. A.3)."""

    options: dict

    def run(self, ctx):
        from tlbench.components import StrategyResult
        from tlbench.engine import (
            DEFAULT_L2_GRID,
            CostMeter,
            cell_predictions,
            resolve_device,
            resolve_precision,
        )
        from tlbench.engine.logistic import accuracy

        device = resolve_device(ctx.device)
        precision = resolve_precision(self.options["precision"], device)
        meter = CostMeter(device, precision)
        from tlbench.engine import cell_features
        from tlbench.engine.probes import probe_fit, probe_search

        with meter.phase("features_s"):
            feats = cell_features(
                ctx,
                ("train", "val", "trainval", "test"),
                precision=precision,
                batch_size=self.options.get("extract_batch_size") or "auto",
            )
        grid = tuple(self.options["l2"] or DEFAULT_L2_GRID)
        started = time.perf_counter()
        with meter.phase("train_s"):
            search = probe_search(
                ctx,
                feats,
                grid=grid,
                refine_steps=self.options["refine_steps"],
                scaling="feature",
                precision=precision,
            ).value
            search_s = time.perf_counter() - started
            head = (
                probe_fit(
                    ctx, feats, "trainval", l2=search.l2, scaling="feature", precision=precision
                ).value
                if self.options["refit"]
                else search.head
            )
        meter.train_images = len(feats["train"][1])
        with meter.phase("eval_s"):
            logits = head.logits(feats["test"][0].to(device))
            top1 = accuracy(logits, feats["test"][1])
        trainable = head.weight.numel() + head.bias.numel()
        return StrategyResult(
            metrics={"top1": round(top1, 3), "val_top1": round(search.val_top1, 3)},
            hparams={
                "l2": search.l2,
                "refit": self.options["refit"],
                "precision": precision,
                "sweep": search.tried,
                # The strengths tried, each solved to its optimum (no epochs), beside the
                # trained strategies' "tuning" so reports can show tuning effort side by side.
                "tuning": tuning_record(len(search.tried), search_s, "solver"),
            },
            cost=meter.as_dict(trainable=trainable, total=feats.backbone_params + trainable)
            | {"prefix_cache": True}
            | feats.cost(),
            predictions=cell_predictions(ctx, logits, feats["test"][1]),
        )


# ------------------------------------------------------------------------------ factories


def make_linear_probe(options: Mapping[str, Any]) -> LinearProbe:
    return LinearProbe(dict(options))


def make_partial_unfreeze(options: Mapping[str, Any]) -> PartialUnfreeze:
    return PartialUnfreeze(dict(options))


def make_full_finetune(options: Mapping[str, Any]) -> FullFineTune:
    return FullFineTune(dict(options))


def make_lp_ft(options: Mapping[str, Any]) -> LinearProbeThenFineTune:
    return LinearProbeThenFineTune(dict(options))


def make_bitfit(options: Mapping[str, Any]) -> BitFit:
    return BitFit(dict(options))


LINEAR_PROBE_OPTIONS = (
    Option(
        "l2",
        float,
        default=None,
        help="L2 strengths to search (default: 1e-6..1e2 log grid, then interval halving).",
        exclusive_minimum=0.0,
        sweep=True,
    ),
    Option(
        "refine_steps",
        int,
        default=3,
        help="Interval-halving rounds around the best grid point.",
        minimum=0,
    ),
) + FEATURE_OPTIONS

SPECS = (
    StrategySpec(
        "linear-probe",
        factory=_FACTORY + "make_linear_probe",
        description="Frozen backbone; L2 logistic regression on cached features, strength chosen on val.",
        options=LINEAR_PROBE_OPTIONS,
        tags=("frozen", "cached"),
        version="3",  # 2: float64 L-BFGS to max |gradient| <= 1e-6; 3: preconditioned, converges
    ),
    StrategySpec(
        "partial-unfreeze",
        factory=_FACTORY + "make_partial_unfreeze",
        description="The head and chosen layer groups train (default: the fewest output-side blocks holding >= 25% of the backbone's parameters); frozen-prefix activations cached.",
        options=(
            Option(
                "fraction",
                float,
                default=0.25,
                help="Default choice: the fewest output-side groups holding at least this share of the backbone's parameters.",
                minimum=0.0,
                maximum=1.0,
            ),
            Option(
                "k",
                int,
                default=None,
                help="Instead: the last k layer groups of the unit train (0: head only).",
                minimum=0,
            ),
            Option(
                "groups",
                str,
                default=None,
                help="Instead: the groups that train, comma-separated positions (-1), slices (-3:), first/middle/last, or module names (blocks.5).",
            ),
            unit_option("block"),
        )
        + training_options(lr=[3e-4, 1e-3, 3e-3], epochs=15),
        tags=("partial", "cached"),
        # 2: default is ~25% of parameters by whole blocks, not timm's last 2 stages;
        # 3: converging recipe (3-lr grid, 15-epoch budget, patience 3, asha grace period, from-scratch recipe)
        version="3",
    ),
    StrategySpec(
        "full-finetune",
        factory=_FACTORY + "make_full_finetune",
        description="Every parameter trains: AdamW, warmup + cosine, early stopping on val, refit on train+val.",
        options=training_options(lr=[1e-4, 3e-4, 1e-3], epochs=15),
        tags=("full",),
        version="2",  # 2: converging recipe (see partial-unfreeze's 3)
    ),
    StrategySpec(
        "lp-ft",
        factory=_FACTORY + "make_lp_ft",
        description="Linear probe first, then full fine-tuning from the probed head (Kumar et al. 2022).",
        options=(
            Option(
                "probe_scaling",
                str,
                default="global",
                help="The probe's feature scaling: global = one scale for all dimensions (keeps fine-tuning stable); feature = per-dimension standardisation, the linear-probe cell's fit, whose head is then shared.",
                choices=("global", "feature"),
            ),
        )
        + training_options(lr=[3e-5, 1e-4, 3e-4], epochs=15),
        tags=("full",),
        # 2, 3: its probe is solved as the linear probe's versions 2 and 3; 4: converging recipe
        version="4",
    ),
    StrategySpec(
        "bitfit",
        factory=_FACTORY + "make_bitfit",
        description="Only biases and the new head train (Ben Zaken et al. 2022).",
        options=training_options(lr=[1e-3, 3e-3, 1e-2], epochs=15, weight_decay=0.0),
        tags=("parameter-efficient",),
        version="2",  # 2: converging recipe (see partial-unfreeze's 3)
    ),
)


@hookimpl
def register_strategies(register):
    for spec in SPECS:
        register(spec)
