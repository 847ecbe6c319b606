"""The built-in model sources behind ``tlbench.builtin.models``' registrations: packaged ImageNet
weights from PyPI, random init (``scratch:``), local checkpoints (``file:``) and the Hugging Face
hub (``timm:``). Each returns a ``SourceModel`` through the core's timm mechanics
(``tlbench.weights``).
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.resources
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import timm
import torch

from tlbench.builtin.models import (
    HUB_WEIGHTS,
    PACKAGED,
    PackagedWeights,
    hub_cache_problem,
    hub_cache_root,
    hub_offline,
)
from tlbench.cache import file_sha256
from tlbench.components import BuildContext, SourceModel
from tlbench.errors import UserError
from tlbench.weights import (
    Weights,
    check_arch,
    check_fits,
    classifier_size,
    data_config,
    imagenet_class_names,
    load_safetensors,
    map_by_order,
    model_card,
    read_checkpoint,
    save_safetensors,
    source_model,
    template,
)

# -------------------------------------------------------------------- packaged ImageNet weights


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
        save=save_safetensors,
        load=load_safetensors,
    )
    weights = Weights(packaged.arch, state_dict=state_dict, source_num_classes=1000)
    config = data_config(packaged.arch, options.get("input_size"))
    card = model_card(
        packaged.arch,
        weights,
        options,
        config,
        weights_source=f"{packaged.distribution}=={version}",
        weights_file=path.name,
        weights_sha256=sha,
    )
    return source_model(
        packaged.name,
        weights,
        f"{packaged.distribution}=={version}",
        sha,
        config,
        card,
        imagenet_class_names(),
    )


efficientnet_lite0_in1k = functools.partial(packaged_model, PACKAGED["efficientnet_lite0.in1k"])
efficientnet_lite1_in1k = functools.partial(packaged_model, PACKAGED["efficientnet_lite1.in1k"])
efficientnet_lite2_in1k = functools.partial(packaged_model, PACKAGED["efficientnet_lite2.in1k"])


# -------------------------------------------------------------------- scratch, file, timm hub


def scratch_model(argument: str, options: Mapping[str, Any], context: BuildContext) -> SourceModel:
    """Random init: the backbone from ``context.seed`` (part of the fingerprint, so feature caches
    never mix inits), the head from ``build``'s seed like every other model."""
    arch, _ = check_arch(argument)
    weights = Weights(arch, backbone_seed=context.seed)
    config = data_config(arch, options.get("input_size"))
    fingerprint = f"random:{arch}:seed{context.seed}"
    card = model_card(
        arch, weights, options, config, weights_source="random init", backbone_seed=context.seed
    )
    card["weights"] = "random"  # reports tell a network trained from scratch by it
    return source_model(f"scratch:{argument}", weights, "random", fingerprint, config, card)


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
    source_classes = classifier_size(argument, state_dict)
    check_fits(state_dict, template(argument, source_classes), origin)
    sha = file_sha256(path)
    # A checkpoint's own classifier is only ImageNet's when it has ImageNet's size; else indices.
    names = (
        imagenet_class_names()
        if source_classes == 1000
        else tuple(str(i) for i in range(source_classes))
    )
    # Absolute, but not resolved: a hub cache links model.safetensors to an extensionless blob,
    # and timm picks its reader by the suffix.
    weights = Weights(argument, file=str(path.absolute()), source_num_classes=source_classes)
    config = data_config(argument, options.get("input_size"))
    card = model_card(
        argument,
        weights,
        options,
        config,
        weights_source=label or f"file {path}",
        weights_sha256=sha,
    )
    return source_model(
        name or f"file:{argument}",
        weights,
        label or str(path),
        sha,
        config,
        card,
        names if source_classes else None,
    )


def timm_model(argument: str, options: Mapping[str, Any], context: BuildContext) -> SourceModel:
    """``arch.tag`` from the Hugging Face hub (or its local cache), then exactly the ``file`` model
    on the cached file: timm's own loader reads it."""
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
    """The weights file of ``repo_id`` through ``hf_hub_download``: from the hub, or from the cache
    when offline. Candidates in timm's order (its safetensors alternative first)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    candidates = _weight_candidates(filename)
    unreachable = False
    for candidate in candidates:
        try:
            # huggingface_hub reads HF_HUB_OFFLINE and the cache location once, at import;
            # pass what the environment says now.
            return Path(
                hf_hub_download(
                    repo_id,
                    candidate,
                    cache_dir=hub_cache_root(),
                    local_files_only=hub_offline(),
                )
            )
        except LocalEntryNotFoundError:  # offline or unreachable, and not cached
            unreachable = True
        except EntryNotFoundError:  # the hub has no file of that name
            continue
        except Exception as exc:  # network stacks raise many types; the user needs one line
            raise UserError(
                f"timm model {argument!r}: downloading {repo_id} from the Hugging Face hub failed: {type(exc).__name__}: {exc}"
            ) from None
    if unreachable:
        raise UserError(
            f"timm model {argument!r}: the Hugging Face hub is unreachable (offline) and "
            f"{hub_cache_problem(repo_id, candidates)}; or use model 'file:{argument}' with option path=<checkpoint>"
        )
    raise UserError(
        f"timm model {argument!r}: {repo_id} on the Hugging Face hub has none of {', '.join(candidates)}"
    )


def _weight_candidates(filename: str | None) -> tuple[str, ...]:
    if not filename:
        return HUB_WEIGHTS
    from timm.models._hub import _get_safe_alternatives

    return (*_get_safe_alternatives(filename), filename)
