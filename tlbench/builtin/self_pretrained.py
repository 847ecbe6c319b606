"""The ``self-pretrained:`` model source: a timm architecture trained from scratch inside the suite
on a registered source dataset, then used like any pretrained model (cached by content).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from tlbench.components import BuildContext, SourceModel
from tlbench.errors import UserError
from tlbench.weights import (
    Weights,
    check_arch,
    data_config,
    model_card,
    source_model,
    state_dict_sha256,
)

# Bump when the pretraining procedure changes: it keys the cache. v2: BatchNorm running
# statistics re-estimated after every epoch (precise BN), so the checkpoint's eval-mode features
# are the ones it was trained with.
# v3: trains only on the source dataset's reserve (tlbench.splits), scored on other reserve images.
PRETRAIN_RECIPE = "self-pretrained-v3"


def self_pretrained_model(
    argument: str, options: Mapping[str, Any], context: BuildContext
) -> SourceModel:
    """``arch`` trained from scratch on a registered source dataset, then used like any pretrained model.

    It trains on ``source_train_size`` images of the dataset's source reserve, which no capped
    target split draws from, and is scored on other reserve images; the images it saw travel
    with it (``training_images``) so the runner can refuse a target that shares any. The
    checkpoint is cached by everything that changes it (architecture, source dataset fingerprint
    and split options, preprocessing, training options, seed); the fingerprint is the sha256 of
    the checkpoint's tensors.
    """
    from tlbench.leakage import training_images
    from tlbench.splits import make_splits

    arch, _ = check_arch(argument)
    if context.registry is None:
        raise UserError(
            f"model 'self-pretrained:{argument}' needs the registry (BuildContext.registry) to build its source dataset"
        )
    source_ref = options["source_dataset"]
    entry, dataset_argument = context.registry.lookup("dataset", source_ref)
    dataset_options = _source_dataset_options(entry, source_ref, options)
    target = entry.spec.load_factory()(dataset_argument, dataset_options, context)
    splits = make_splits(target, dataset_options, context.seed)
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
    card = model_card(
        arch,
        weights,
        options,
        config,
        weights_source=f"self-pretrained on {source_ref}",
        weights_sha256=fingerprint,
        source_dataset=source_ref,
        source_dataset_fingerprint=target.fingerprint,
        pretraining={
            **training,
            "seed": context.seed,
            "train_size": options["source_train_size"],
            "images": "the source dataset's reserve (never in a capped target split)",
            "split": splits.record,
        },
        source_heldout_top1=float(meta["source_heldout_top1"]),
    )
    seen = training_images(
        source_ref,
        f"{len(splits.trainval)} images of {source_ref}'s source reserve",
        target.train,
        splits.trainval,
    )
    return source_model(
        f"self-pretrained:{argument}",
        weights,
        f"self-pretrained:{source_ref}",
        fingerprint,
        config,
        card,
        target.class_names,
        training_images=seen,
    )


def _source_dataset_options(entry, source_ref: str, options: Mapping[str, Any]) -> dict[str, Any]:
    from tlbench.specs import resolve_options

    wanted = {"train_size": options["source_train_size"], "protocol": "source-reserve"}
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
    # Held-out reserve images: proof the pretraining worked, from images no target can hold.
    top1 = _accuracy(model, prepared, "test", engine.resolve_device(context.device))
    state_dict = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    return {"state_dict": state_dict, "meta": {"source_heldout_top1": f"{top1:.3f}"}}


@torch.no_grad()
def _accuracy(model: torch.nn.Module, prepared, split: str, device: torch.device) -> float:
    model.eval()
    correct = total = 0
    for x, y in prepared.batches(split, 256, device=device):
        correct += (model(x.to(device)).argmax(1).cpu() == y.cpu()).sum().item()
        total += len(y)
    return 100.0 * correct / max(total, 1)


def _save_checkpoint(value: Mapping[str, Any], path: Path) -> None:
    from safetensors.torch import save_file

    save_file(dict(value["state_dict"]), str(path), metadata=dict(value["meta"]))


def _load_checkpoint(path: Path) -> dict:
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
    return {"state_dict": load_file(str(path)), "meta": meta}
