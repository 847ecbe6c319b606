"""Source-model weights: finding, checking, converting and caching them, and building timm modules.

Every built-in model factory ends in a ``Weights`` recipe whose ``build`` goes through
``timm.create_model(..., pretrained=True, pretrained_cfg_overlay=...)``, so channel adaptation
(``adapt_input_conv``) and classifier removal are timm's own; only the new head is ours.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import importlib.metadata
import importlib.resources
import os
import pickle
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from timm.data import ImageNetInfo, resolve_data_config
from timm.models import load_state_dict as timm_load_state_dict
from timm.models._manipulate import group_parameters

from tlbench.builtin.models import PACKAGED, PackagedWeights
from tlbench.cache import file_sha256
from tlbench.components import BuildContext, SourceModel
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
                model.reset_classifier(num_classes)
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
        model.pretrained_cfg.pop("state_dict", None)
        return model


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block under ``torch.manual_seed(seed)`` without disturbing the caller's RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def layer_groups(model: torch.nn.Module) -> list[list[str]]:
    """Parameter names in ordered groups, input side first, from timm's ``group_matcher(coarse=True)``.

    Strategies use it for "train all but the last k groups". Models without a ``group_matcher``
    fall back to one group per top-level child module, in registration order.
    """
    matcher = getattr(model, "group_matcher", None)
    if matcher is not None:
        try:
            groups = group_parameters(model, matcher(coarse=True))
            return [groups[i] for i in sorted(groups) if groups[i]]
        except NotImplementedError:
            pass
    by_child: dict[str, list[str]] = {}
    for name, _ in model.named_parameters():
        by_child.setdefault(name.split(".", 1)[0], []).append(name)
    return list(by_child.values())


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


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
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
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
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
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


def _card(arch: str, weights: Weights, options: Mapping[str, Any], config: dict, **extra) -> dict:
    with torch.device("meta"):
        backbone = timm.create_model(arch, pretrained=False, num_classes=0)
    card = {
        "architecture": arch,
        **extra,
        "total_params": count_params(backbone)
        + _head_params(backbone.num_features, weights.source_num_classes),
        "backbone_params": count_params(backbone),
        "num_features": backbone.num_features,
        "source_num_classes": weights.source_num_classes,
        "data_config": {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()},
    }
    if options.get("input_size"):
        card["input_size_override"] = options["input_size"]
    return card


def _head_params(num_features: int, num_classes: int) -> int:
    return (num_features + 1) * num_classes if num_classes else 0


def _source_model(
    name: str,
    weights: Weights,
    weights_label: str,
    fingerprint: str,
    config: dict,
    card: dict,
    source_classes=None,
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
    )


@functools.cache
def imagenet_class_names() -> tuple[str, ...]:
    info = ImageNetInfo()
    return tuple(info.index_to_description(i) for i in range(info.num_classes()))


# ---------------------------------------------------------------------------- packaged ImageNet weights


def packaged_file(packaged: PackagedWeights) -> tuple[Path, str]:
    """The ``.pth`` a weights package ships, and the package's version."""
    try:
        models_dir = Path(str(importlib.resources.files(packaged.module) / "models"))
        version = importlib.metadata.version(packaged.distribution)
    except (ModuleNotFoundError, importlib.metadata.PackageNotFoundError):
        raise UserError(
            f"model {packaged.name!r} needs its weights package: pip install {packaged.distribution}"
        ) from None
    files = sorted(models_dir.glob("*.pth"))
    if len(files) != 1:
        raise UserError(
            f"package {packaged.distribution} {version}: expected one .pth under {models_dir}, found {len(files)}"
        )
    return files[0], version


def packaged_model(
    packaged: PackagedWeights,
    argument: str | None,
    options: Mapping[str, Any],
    context: BuildContext,
) -> SourceModel:
    path, version = packaged_file(packaged)
    sha = file_sha256(path)

    def convert() -> dict[str, torch.Tensor]:
        raw = torch.load(path, map_location="cpu", weights_only=True)
        return map_by_order(
            raw, template(packaged.arch), origin=f"{packaged.distribution} ({path.name})"
        )

    # Converted once per source file; later cells and runs read the safetensors copy.
    state_dict = context.cache.get_or_compute(
        "converted-weights",
        {"file_sha256": sha, "arch": packaged.arch, "mapping": "by-order-v1"},
        convert,
        save=_save_safetensors,
        load=_load_safetensors,
    )
    weights = Weights(packaged.arch, state_dict=state_dict, source_num_classes=1000)
    config = data_config(packaged.arch, options.get("input_size"))
    card = _card(
        packaged.arch,
        weights,
        options,
        config,
        weights_source=f"{packaged.distribution}=={version}",
        weights_file=path.name,
        weights_sha256=sha,
    )
    return _source_model(
        packaged.name,
        weights,
        f"{packaged.distribution}=={version}",
        sha,
        config,
        card,
        imagenet_class_names(),
    )


def _save_safetensors(value: Mapping[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in value.items()}, str(path))


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


efficientnet_lite0_in1k = functools.partial(packaged_model, PACKAGED["efficientnet_lite0.in1k"])
efficientnet_lite1_in1k = functools.partial(packaged_model, PACKAGED["efficientnet_lite1.in1k"])
efficientnet_lite2_in1k = functools.partial(packaged_model, PACKAGED["efficientnet_lite2.in1k"])


# ---------------------------------------------------------------------------- scratch, file, timm hub


def scratch_model(argument: str, options: Mapping[str, Any], context: BuildContext) -> SourceModel:
    """Random init: the backbone from ``context.seed`` (part of the fingerprint, so feature caches
    never mix inits), the head from ``build``'s seed like every other model."""
    arch, _ = check_arch(argument)
    weights = Weights(arch, backbone_seed=context.seed)
    config = data_config(arch, options.get("input_size"))
    fingerprint = f"random:{arch}:seed{context.seed}"
    card = _card(
        arch, weights, options, config, weights_source="random init", backbone_seed=context.seed
    )
    return _source_model(f"scratch:{argument}", weights, "random", fingerprint, config, card)


def file_model(
    argument: str,
    options: Mapping[str, Any],
    context: BuildContext,
    *,
    name: str | None = None,
    label: str | None = None,
) -> SourceModel:
    """A local checkpoint for ``argument`` = ``arch[.tag]`` (the tag picks timm's preprocessing)."""
    check_arch(argument)
    path = Path(options["path"]).expanduser()
    origin = f"checkpoint file {str(path)!r}"
    state_dict = read_checkpoint(path)
    source_classes = _classifier_size(argument, state_dict)
    check_fits(state_dict, template(argument, source_classes), origin)
    sha = file_sha256(path)
    # A checkpoint's own classifier is only ImageNet's when it has ImageNet's size; else indices.
    names = (
        imagenet_class_names()
        if source_classes == 1000
        else tuple(str(i) for i in range(source_classes))
    )
    weights = Weights(argument, file=str(path.resolve()), source_num_classes=source_classes)
    config = data_config(argument, options.get("input_size"))
    card = _card(
        argument,
        weights,
        options,
        config,
        weights_source=label or f"file {path}",
        weights_sha256=sha,
    )
    return _source_model(
        name or f"file:{argument}",
        weights,
        label or str(path),
        sha,
        config,
        card,
        names if source_classes else None,
    )


def _classifier_size(arch: str, state_dict: Mapping[str, torch.Tensor]) -> int:
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


HUB_FILES = ("model.safetensors", "pytorch_model.bin")


def timm_model(argument: str, options: Mapping[str, Any], context: BuildContext) -> SourceModel:
    """``arch.tag`` from the Hugging Face hub, then exactly the ``file`` model on the cached file."""
    name, tag = check_arch(argument, pretrained=True)
    cfg = timm.models.get_pretrained_cfg(f"{name}.{tag}")
    if not cfg.hf_hub_id:
        raise UserError(
            f"timm model {argument!r} has no Hugging Face hub weights; download them and use the 'file' model"
        )
    path = _hub_download(argument, cfg.hf_hub_id, cfg.hf_hub_filename)
    return file_model(
        argument,
        {**options, "path": str(path)},
        context,
        name=f"timm:{argument}",
        label=f"hf-hub:{cfg.hf_hub_id}",
    )


def _hub_download(argument: str, repo_id: str, filename: str | None) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    # huggingface_hub reads HF_HUB_OFFLINE at import; honour it when set later as well.
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    for candidate in (filename,) if filename else HUB_FILES:
        try:
            return Path(hf_hub_download(repo_id, candidate, local_files_only=offline))
        except LocalEntryNotFoundError:
            raise UserError(
                f"timm model {argument!r}: the Hugging Face hub is unreachable (offline) and {repo_id} is not cached; "
                f"download it elsewhere and use model 'file:{argument}' with option path=<checkpoint>"
            ) from None
        except EntryNotFoundError:
            continue
        except Exception as exc:  # network stacks raise many types; the user needs one line
            raise UserError(
                f"timm model {argument!r}: downloading {repo_id} from the Hugging Face hub failed: {type(exc).__name__}: {exc}"
            ) from None
    raise UserError(
        f"timm model {argument!r}: {repo_id} on the Hugging Face hub has none of {', '.join(HUB_FILES)}"
    )


# ---------------------------------------------------------------------------- self-pretrained

# Bump when the pretraining procedure changes: it keys the cache. v2: BatchNorm running
# statistics re-estimated after every epoch (precise BN), so the checkpoint's eval-mode features
# are the ones it was trained with.
PRETRAIN_RECIPE = "self-pretrained-v2"
SOURCE_TEST_SIZE = 1000  # source-task test images scored once, so the card shows pretraining worked


def self_pretrained_model(
    argument: str, options: Mapping[str, Any], context: BuildContext
) -> SourceModel:
    """``arch`` trained from scratch on a registered source dataset, then used like any pretrained model.

    The checkpoint is cached by everything that changes it (architecture, source dataset
    fingerprint and split options, preprocessing, training options, seed), so later cells and
    runs reuse it; the fingerprint is the sha256 of the checkpoint's tensors.
    """
    arch, _ = check_arch(argument)
    if context.registry is None:
        raise UserError(
            f"model 'self-pretrained:{argument}' needs the registry (BuildContext.registry) to build its source dataset"
        )
    source_ref = options["source_dataset"]
    entry, dataset_argument = context.registry.lookup("dataset", source_ref)
    dataset_options = _source_dataset_options(entry, source_ref, options)
    target = entry.spec.load_factory()(dataset_argument, dataset_options, context)
    config = data_config(arch, options.get("input_size"))
    training = {k: options[k] for k in ("epochs", "lr", "batch_size")}
    key = {
        "recipe": PRETRAIN_RECIPE,
        "arch": arch,
        "source_dataset": source_ref,
        "dataset_fingerprint": target.fingerprint,
        "dataset_options": dataset_options,
        "data_config": config,
        "training": training,
        "seed": context.seed,
    }
    checkpoint = context.cache.get_or_compute(
        "self-pretrained",
        key,
        lambda: _pretrain(arch, target, dataset_options, config, options, training, context),
        save=_save_checkpoint,
        load=_load_checkpoint,
    )
    state_dict, meta = checkpoint["state_dict"], checkpoint["meta"]
    fingerprint = state_dict_sha256(state_dict)
    weights = Weights(arch, state_dict=state_dict, source_num_classes=target.num_classes)
    card = _card(
        arch,
        weights,
        options,
        config,
        weights_source=f"self-pretrained on {source_ref}",
        weights_sha256=fingerprint,
        source_dataset=source_ref,
        source_dataset_fingerprint=target.fingerprint,
        pretraining={**training, "seed": context.seed, "train_size": options["source_train_size"]},
        source_test_top1=float(meta["source_test_top1"]),
    )
    return _source_model(
        f"self-pretrained:{argument}",
        weights,
        f"self-pretrained:{source_ref}",
        fingerprint,
        config,
        card,
        target.class_names,
    )


def _source_dataset_options(entry, source_ref: str, options: Mapping[str, Any]) -> dict[str, Any]:
    from tlbench.specs import resolve_options

    wanted = {"train_size": options["source_train_size"], "test_size": SOURCE_TEST_SIZE}
    try:
        return resolve_options(entry.options, wanted)
    except (KeyError, ValueError) as exc:
        raise UserError(f"self-pretrained source dataset {source_ref!r}: {exc.args[0]}") from None


def _pretrain(arch, target, dataset_options, config, options, training, context) -> dict:
    from tlbench import data, engine

    scratch = Weights(arch, backbone_seed=context.seed)
    # prepare() only reads the data config off the model; the scratch stand-in carries the one
    # the trained weights will be bound to. Channels are replicated so the checkpoint is 3-channel
    # and every later target can adapt it the usual way.
    stand_in = SourceModel(
        f"scratch:{arch}",
        arch,
        "random",
        f"random:{arch}:seed{context.seed}",
        config,
        scratch.build,
    )
    model_options = {"input_size": options.get("input_size"), "input_adaptation": "replicate"}
    prepared = data.prepare(
        target, stand_in, dataset_options, model_options, context.seed, context.cache
    )
    context.log(
        f"self-pretraining {arch} on {options['source_dataset']} ({prepared.size('trainval')} images, {training['epochs']} epochs)"
    )
    model = scratch.build(prepared.num_classes, in_chans=prepared.in_chans, seed=context.seed)
    engine.fit_model(
        model, prepared, split="trainval", device=context.device, seed=context.seed, **training
    )
    top1 = _accuracy(model, prepared, "test", engine.resolve_device(context.device))
    state_dict = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    return {"state_dict": state_dict, "meta": {"source_test_top1": f"{top1:.3f}"}}


@torch.no_grad()
def _accuracy(model: torch.nn.Module, prepared, split: str, device: torch.device) -> float:
    model.eval()
    correct = total = 0
    for x, y in prepared.batches(split, 256, device=device):
        correct += (model(x.to(device)).argmax(1).cpu() == y.cpu()).sum().item()
        total += len(y)
    return 100.0 * correct / max(total, 1)


def state_dict_sha256(state_dict: Mapping[str, torch.Tensor]) -> str:
    """sha256 of the tensors' safetensors serialisation (names, dtypes, shapes, bytes)."""
    import hashlib

    from safetensors.torch import save

    return hashlib.sha256(save({k: v.contiguous() for k, v in state_dict.items()})).hexdigest()


def _save_checkpoint(value: Mapping[str, Any], path: Path) -> None:
    from safetensors.torch import save_file

    save_file(dict(value["state_dict"]), str(path), metadata=dict(value["meta"]))


def _load_checkpoint(path: Path) -> dict:
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
    return {"state_dict": load_file(str(path)), "meta": meta}
