"""The runtime contract between the runner and the components plugins provide.

Factories registered through the hooks return these objects. Nothing here imports torch at
module import time; the objects hold torch values once a cell runs.

    model factory(argument, options, context)    -> SourceModel
    dataset factory(argument, options, context)  -> TargetData
    strategy factory(options)                    -> Strategy   (has .run(CellContext) -> StrategyResult)
    estimator factory(options)                   -> Estimator  (has .score(features, labels, source_logits) -> float)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from tlbench.log import log_status

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from tlbench.cache import Cache
    from tlbench.registry import Registry


@dataclass(frozen=True)
class BuildContext:
    """What a model or dataset factory may use: where to cache, which device, and the registry
    (a self-pretrained model builds its source dataset and trains through it). ``suite_dir`` is
    the directory of the suite file the cell came from (``None`` outside a suite): tlbench
    resolves relative ``path``/``root`` options against it already; a factory reading other
    files named in its options can do the same."""

    cache: Cache
    device: str
    registry: Registry | None = None
    seed: int = 0
    log: Callable[[str], None] = log_status
    suite_dir: Path | None = None


@dataclass(frozen=True)
class ImageSet:
    """One official split of a dataset: decoded images held in memory, or paths decoded lazily.

    ``images`` is uint8, shaped (N, H, W) for grayscale or (N, H, W, C). ``paths`` is used instead
    for datasets too large to hold decoded; ``load(i)`` returns an RGB or L ``PIL.Image``.
    """

    labels: np.ndarray
    images: np.ndarray | None = None
    paths: tuple[str, ...] | None = None
    loader: Callable[[str], Any] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, index: int):
        from PIL import Image

        if self.images is not None:
            return Image.fromarray(self.images[index])
        if self.paths is None or self.loader is None:
            raise TypeError("an ImageSet holds images, or paths and a loader")
        return self.loader(self.paths[index])


@dataclass(frozen=True)
class TargetData:
    """A target dataset as its plugin delivers it, before the core splits it.

    ``test`` is the official test split, or ``None`` when the dataset has none (the core then
    carves a stratified test split from ``train``, deterministically). ``fingerprint`` must change
    whenever the content changes (it keys every cache built from this data).
    """

    name: str
    class_names: tuple[str, ...]
    train: ImageSet
    test: ImageSet | None
    fingerprint: str
    card: Mapping[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclass
class SourceModel:
    """A pretrained (or randomly initialised) backbone, with the preprocessing its weights expect.

    ``build(num_classes, in_chans, seed)`` returns a fresh timm ``nn.Module`` carrying the source
    weights, its input adapted to ``in_chans`` and a new classifier for ``num_classes`` classes,
    initialised from ``seed``. ``build(0, ...)`` returns the backbone without a classifier.
    ``data_config`` is timm's resolved data config (input_size, interpolation, mean, std,
    crop_pct, crop_mode). ``fingerprint`` identifies the weights (sha256 of the file, or
    ``random:<arch>:seed<seed>``, from ``BuildContext.seed``). ``card`` is recorded in every result.
    """

    name: str
    arch: str
    weights: str
    fingerprint: str
    data_config: dict
    build: Callable[..., torch.nn.Module]
    card: dict = field(default_factory=dict)
    source_classes: tuple[str, ...] | None = None
    build_with_source_head: Callable[..., torch.nn.Module] | None = None
    # The images the weights were trained on, when tlbench knows them (a ``TrainingImages`` of
    # ``tlbench.leakage``): the runner refuses a cell whose target shares any of them.
    training_images: Any = None


@dataclass(frozen=True)
class Cell:
    """One point of the grid. ``*_options`` are resolved (validated, defaults filled).
    ``versions`` holds the recipe version of each component (and of the core's split protocol);
    they enter the config hash, so a changed algorithm reruns on ``--resume``."""

    suite: str
    model: str
    dataset: str
    strategy: str
    seed: int
    model_ref: str
    dataset_ref: str
    strategy_ref: str
    model_options: Mapping[str, Any]
    dataset_options: Mapping[str, Any]
    strategy_options: Mapping[str, Any]
    versions: Mapping[str, str] = field(default_factory=dict)
    # Where the suite file is: relative file options resolve against it (not in the config hash).
    suite_dir: str | None = None

    @property
    def key(self) -> tuple[str, str, str, int]:
        return (self.model, self.dataset, self.strategy, self.seed)

    @property
    def label(self) -> str:
        """How every message, log line and progress row names the cell."""
        return f"cell {self.model} x {self.dataset} x {self.strategy} (seed {self.seed})"


@dataclass
class CellContext:
    """Everything a strategy needs to run one cell."""

    cell: Cell
    source: SourceModel
    data: Any  # tlbench.data.PreparedData
    device: torch.device
    cache: Cache
    seed: int
    log: Callable[[str], None] = log_status
    run_dir: Path | None = None


@dataclass
class StrategyResult:
    """What a strategy returns. ``metrics['top1']`` (percent, on the test split) is required;
    ``hparams`` are the chosen hyperparameters; ``cost`` holds at least ``trainable_params`` and
    ``total_params`` and per-phase seconds under ``phases``. ``predictions`` (optional, a
    ``tlbench.predictions.Predictions``) holds the per-example test predictions the runner stores
    next to the record; tables' intervals over test items need them."""

    metrics: dict
    hparams: dict
    cost: dict
    status: str = "ok"
    detail: str | None = None
    predictions: Any = None  # tlbench.predictions.Predictions of the test split, when available


class Strategy(Protocol):
    def run(self, ctx: CellContext) -> StrategyResult: ...


class Estimator(Protocol):
    needs_source_head: bool

    def score(
        self, features: torch.Tensor, labels: torch.Tensor, source_logits: torch.Tensor | None
    ) -> float: ...
