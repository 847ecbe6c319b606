"""timm mechanics every model source shares: building modules from weights, mapping and checking
state dicts, reading checkpoints safely, layer groups, data configs and model cards.

A model factory (the built-in ones live in ``tlbench.builtin.model_sources``) ends in a
``Weights`` recipe whose ``build`` goes through ``timm.create_model(..., pretrained=True,
pretrained_cfg_overlay=...)``, so channel adaptation (``adapt_input_conv``) and classifier removal
are timm's own; only the new head is ours.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import os
import pickle
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors import SafetensorError
from timm.data import ImageNetInfo, resolve_data_config
from timm.models import load_state_dict as timm_load_state_dict
from timm.models._manipulate import group_parameters

from tlbench.components import SourceModel
from tlbench.errors import UserError

CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
_SHOWN = 3  # mismatches listed in an error line; the rest are counted


# ---------------------------------------------------------------------------- recipes and building


@dataclass(frozen=True, eq=False)  # equality by identity: comparing tensors is meaningless here
class Weights:
    """How to rebuild one source model any number of times.

    Exactly one of ``state_dict`` (in-memory, timm key names) and ``file`` (a checkpoint timm
    reads) holds the weights; neither means random init from ``backbone_seed``.
    ``source_num_classes`` is the classifier the weights carry (0: headless).
    """

    arch: str
    state_dict: Mapping[str, torch.Tensor] | None = None
    file: str | None = None
    backbone_seed: int | None = None
    source_num_classes: int = 0

    def build(self, num_classes: int, in_chans: int = 3, seed: int = 0) -> torch.nn.Module:
        """Backbone with the source weights, stem adapted to ``in_chans``, and a fresh head for
        ``num_classes`` initialised from ``seed`` (0: pooled features out). Returned in eval mode."""
        model = self._create(0, in_chans)
        if num_classes:
            with seeded(seed):
                model.reset_classifier(num_classes)  # type: ignore[operator]  # a timm model
        return model.eval()

    def build_with_source_head(self, in_chans: int = 3) -> torch.nn.Module:
        """The model with the classifier its weights were trained with (for LEEP/NCE)."""
        if not self.source_num_classes:
            raise UserError(
                f"weights for {self.arch!r} carry no classifier, so there is no source head to keep"
            )
        return self._create(self.source_num_classes, in_chans).eval()

    def _create(self, num_classes: int, in_chans: int) -> torch.nn.Module:
        if self.state_dict is None and self.file is None:
            with seeded(self.backbone_seed or 0):
                return timm.create_model(
                    self.arch, pretrained=False, num_classes=num_classes, in_chans=in_chans
                )
        # timm pops and rewrites entries of the dict it is handed, so it gets a shallow copy.
        source = (
            {"state_dict": dict(self.state_dict)}
            if self.state_dict is not None
            else {"file": self.file}
        )
        overlay = {**source, "num_classes": self.source_num_classes}
        model = timm.create_model(
            self.arch,
            pretrained=True,
            pretrained_cfg_overlay=overlay,
            num_classes=num_classes,
            in_chans=in_chans,
        )
        # Keep the weights out of the config timm stores on the module (it gets printed and serialised).
        model.pretrained_cfg.pop("state_dict", None)  # type: ignore[union-attr,operator]
        return model


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block under ``torch.manual_seed(seed)`` without disturbing the caller's RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def layer_groups(model: torch.nn.Module, coarse: bool = True) -> list[list[str]]:
    """Parameter names in ordered groups, input side first, from timm's ``group_matcher``:
    stages with ``coarse=True``, blocks with ``coarse=False`` where the model offers them.

    Strategies use it for "train all but the last k groups" and to name layer groups. Models
    without a ``group_matcher`` fall back to one group per top-level child module, in
    registration order.
    """
    matcher = getattr(model, "group_matcher", None)
    if matcher is not None:
        try:
            groups = group_parameters(model, matcher(coarse=coarse))
            return [groups[i] for i in sorted(groups) if groups[i]]
        except NotImplementedError:
            pass
    by_child: dict[str, list[str]] = {}
    for name, _ in model.named_parameters():
        by_child.setdefault(name.split(".", 1)[0], []).append(name)
    return list(by_child.values())


# ---------------------------------------------------------------------------- state-dict checks


def map_by_order(
    source: Mapping[str, torch.Tensor], target: Mapping[str, Any], origin: str
) -> dict[str, torch.Tensor]:
    """Rename ``source`` onto ``target``'s keys pairwise in order, checking every shape.

    ``target`` only needs tensors with ``.shape`` (meta tensors do). Raises ``UserError`` naming
    the first mismatching pairs, so a reordered or foreign checkpoint cannot load silently.
    """
    if len(source) != len(target):
        raise UserError(
            f"{origin}: has {len(source)} tensors but the timm model has {len(target)}; they must map one-to-one in order"
        )
    bad = [
        f"{s} {tuple(sv.shape)} -> {t} {tuple(tv.shape)}"
        for (s, sv), (t, tv) in zip(source.items(), target.items(), strict=True)
        if tuple(sv.shape) != tuple(tv.shape)
    ]
    if bad:
        raise UserError(
            f"{origin}: shapes do not map in order onto the timm model ({len(bad)} mismatches): {_few(bad)}"
        )
    return {t: sv for (_, sv), t in zip(source.items(), target, strict=True)}


def check_fits(
    state_dict: Mapping[str, torch.Tensor], target: Mapping[str, Any], origin: str
) -> None:
    """Raise ``UserError`` listing missing, unexpected and mis-shaped keys, if any."""
    missing = [k for k in target if k not in state_dict]
    unexpected = [k for k in state_dict if k not in target]
    shapes = [
        f"{k} (checkpoint {tuple(v.shape)} vs model {tuple(target[k].shape)})"
        for k, v in state_dict.items()
        if k in target and tuple(v.shape) != tuple(target[k].shape)
    ]
    problems = [
        f"{label} {_few(items)}"
        for label, items in (
            ("missing keys:", missing),
            ("unexpected keys:", unexpected),
            ("shape mismatches:", shapes),
        )
        if items
    ]
    if problems:
        raise UserError(f"{origin}: does not fit the timm model: " + "; ".join(problems))


def _few(items: list[str]) -> str:
    more = f" (+{len(items) - _SHOWN} more)" if len(items) > _SHOWN else ""
    return ", ".join(items[:_SHOWN]) + more


def template(arch: str, num_classes: int | None = None) -> dict[str, torch.Tensor]:
    """The state dict ``arch`` expects, on the meta device: shapes without allocating weights."""
    kwargs: dict[str, Any] = {} if num_classes is None else {"num_classes": num_classes}
    with torch.device("meta"):
        return timm.create_model(arch, pretrained=False, **kwargs).state_dict()


def read_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a local checkpoint the way timm does, refusing pickles that would run code."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint file {str(path)!r} does not exist")
    if path.suffix not in CHECKPOINT_SUFFIXES:
        raise UserError(
            f"checkpoint file {str(path)!r}: expected one of {', '.join(CHECKPOINT_SUFFIXES)}"
        )
    try:
        # timm's loader unwraps {'state_dict': ...} / {'model': ...} and strips 'module.' prefixes;
        # torch.load(weights_only=True) inside it refuses any pickle that would import or call code.
        state_dict = timm_load_state_dict(str(path), weights_only=True)
    except (
        pickle.UnpicklingError,
        RuntimeError,
        EOFError,
        OSError,
        ValueError,
        SafetensorError,
    ) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"refusing to load checkpoint {str(path)!r}: not a plain weights file (a pickle that would execute code, or corrupt): {first}"
        ) from None
    if not isinstance(state_dict, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state_dict.values()
    ):
        raise UserError(f"checkpoint file {str(path)!r} does not hold a state dict of tensors")
    return dict(state_dict)


# ---------------------------------------------------------------------------- names and configs


def check_arch(arch: str, pretrained: bool = False) -> tuple[str, str]:
    """Split ``arch[.tag]`` and check both against timm's registry, suggesting close names."""
    name, tag = timm.models.split_model_name_tag(arch)
    if not timm.models.is_model(name):
        raise UserError(
            f"unknown timm architecture {name!r}. {_did_you_mean(name, timm.list_models())}"
        )
    if tag or pretrained:
        tags = [t.split(".", 1)[1] for t in timm.list_pretrained(f"{name}.*")]
        if not tags:
            raise UserError(
                f"timm architecture {name!r} has no pretrained weights; use 'scratch:{name}' or the 'file' model"
            )
        if tag not in tags:
            what = f"unknown pretrained tag {tag!r}" if tag else "no pretrained tag given"
            raise UserError(f"{what} for {name!r}. {_did_you_mean(tag, tags, prefix=name + '.')}")
    return name, tag


def _did_you_mean(word: str, choices: list[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(word, choices, n=3, cutoff=0.5)
    if not close:
        close = [c for c in choices if word and (word in c or c in word)][:3]
    hint = f"Did you mean {', '.join(repr(prefix + c) for c in close)}? " if close else ""
    if len(choices) <= 20:
        return hint + f"Available: {', '.join(prefix + c for c in choices)}."
    return hint + "See timm.list_models() / timm.list_pretrained()."


def data_config(arch: str, input_size: int | None) -> dict:
    """timm's data config for ``arch[.tag]``, with the resolution override applied."""
    with torch.device("meta"):
        model = timm.create_model(arch, pretrained=False)
    config = dict(resolve_data_config({}, model=model))
    if input_size:
        config["input_size"] = (config["input_size"][0], input_size, input_size)
    return config


def model_card(
    arch: str, weights: Weights, options: Mapping[str, Any], config: dict, **extra
) -> dict:
    with torch.device("meta"):
        backbone = timm.create_model(arch, pretrained=False, num_classes=0)
    card = {
        "architecture": arch,
        **extra,
        "total_params": _params(backbone)
        + _head_params(backbone.num_features, weights.source_num_classes),  # type: ignore[arg-type]
        "backbone_params": _params(backbone),
        "num_features": backbone.num_features,
        "source_num_classes": weights.source_num_classes,
        "data_config": {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()},
    }
    if options.get("input_size"):
        card["input_size_override"] = options["input_size"]
    return card


def _params(model: torch.nn.Module) -> int:
    from tlbench.engine.runtime import count_params

    return count_params(model)[1]


def _head_params(num_features: int, num_classes: int) -> int:
    return (num_features + 1) * num_classes if num_classes else 0


def source_model(
    name: str,
    weights: Weights,
    weights_label: str,
    fingerprint: str,
    config: dict,
    card: dict,
    source_classes=None,
    training_images=None,
) -> SourceModel:
    return SourceModel(
        name=name,
        arch=timm.models.split_model_name_tag(weights.arch)[0],
        weights=weights_label,
        fingerprint=fingerprint,
        data_config=config,
        build=weights.build,
        card=card,
        source_classes=source_classes,
        build_with_source_head=weights.build_with_source_head
        if weights.source_num_classes
        else None,
        training_images=training_images,
    )


@functools.cache
def imagenet_class_names() -> tuple[str, ...]:
    info = ImageNetInfo()
    return tuple(info.index_to_description(i) for i in range(info.num_classes()))


# ---------------------------------------------------------------------------- files


def save_safetensors(value: Mapping[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in value.items()}, str(path))


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def classifier_size(arch: str, state_dict: Mapping[str, torch.Tensor]) -> int:
    """Outputs of the checkpoint's classifier (named by timm's pretrained_cfg), 0 if it has none."""
    cfg = timm.models.get_pretrained_cfg(arch) or timm.models.get_pretrained_cfg(
        timm.models.split_model_name_tag(arch)[0]
    )
    names = (cfg.classifier if cfg else None) or ()
    for head in (names,) if isinstance(names, str) else names:
        weight = state_dict.get(f"{head}.weight")
        if weight is not None:
            return int(weight.shape[0])
    return 0


def state_dict_sha256(state_dict: Mapping[str, torch.Tensor]) -> str:
    """sha256 of the tensors' safetensors serialisation (names, dtypes, shapes, bytes)."""
    import hashlib

    from safetensors.torch import save

    return hashlib.sha256(save({k: v.contiguous() for k, v in state_dict.items()})).hexdigest()
