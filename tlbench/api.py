"""The public authoring API: everything a plugin builds on, in one namespace.

    from tlbench.api import hookimpl, ModelSpec, Option, FineTuneStrategy, training_options

The built-in plugins import from here too, so this is the API our own code exercises. Names here
are covered by the compatibility promise (docs/plugins/compatibility.md) and documented in
docs/plugins/api.md; anything else in ``tlbench`` may change between minor releases. Importing
this module does not import torch: ``FeatureModel`` (a torch module) loads on first use.
"""

from typing import TYPE_CHECKING

from tlbench import __version__, hookimpl
from tlbench.components import (
    BuildContext,
    Cell,
    CellContext,
    Estimator,
    ImageSet,
    SourceModel,
    Strategy,
    StrategyResult,
    TargetData,
)
from tlbench.errors import Diverged, TlbenchError, UserError
from tlbench.predictions import Predictions
from tlbench.specs import (
    DatasetSpec,
    EstimatorSpec,
    ModelSpec,
    Option,
    StrategySpec,
)
from tlbench.strategies import (
    FineTuneStrategy,
    backbone_groups,
    check_training_options,
    head_names,
    probe_model,
    training_options,
)

if TYPE_CHECKING:  # pragma: no cover
    from tlbench.adapters import FeatureModel

__all__ = [
    "BuildContext",
    "Cell",
    "CellContext",
    "DatasetSpec",
    "Diverged",
    "Estimator",
    "EstimatorSpec",
    "FeatureModel",
    "FineTuneStrategy",
    "ImageSet",
    "ModelSpec",
    "Option",
    "Predictions",
    "SourceModel",
    "Strategy",
    "StrategyResult",
    "StrategySpec",
    "TargetData",
    "TlbenchError",
    "UserError",
    "__version__",
    "backbone_groups",
    "check_training_options",
    "head_names",
    "hookimpl",
    "probe_model",
    "training_options",
]


def __getattr__(name: str):
    # PEP 562: the torch-backed names load when first asked for, so listing stays instant.
    if name == "FeatureModel":
        from tlbench.adapters import FeatureModel

        return FeatureModel
    raise AttributeError(f"module 'tlbench.api' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
