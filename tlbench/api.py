"""The public authoring API: everything a plugin builds on, in one namespace.

    from tlbench.api import hookimpl, ModelSpec, Option, FineTuneStrategy, training_options

The built-in plugins import from here too, so this is the API our own code exercises. Names here
are covered by the compatibility promise (docs/plugins/compatibility.md) and documented in
docs/plugins/api.md; anything else in ``tlbench`` may change between minor releases. Importing
this module does not import torch: ``FeatureModel`` (a torch module), the dataset helpers and
``load_plugins`` load on first use.
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
    from tlbench.datasetlib.common import (
        array_fingerprint,
        data_root,
        decode_files,
        decode_once,
        make_target,
    )
    from tlbench.plugins import load_plugins

# PEP 562: names whose modules are heavier than a registration hook should pay for.
_LAZY = {
    "FeatureModel": "tlbench.adapters",
    "array_fingerprint": "tlbench.datasetlib.common",
    "data_root": "tlbench.datasetlib.common",
    "decode_files": "tlbench.datasetlib.common",
    "decode_once": "tlbench.datasetlib.common",
    "make_target": "tlbench.datasetlib.common",
    "load_plugins": "tlbench.plugins",
}

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
    "array_fingerprint",
    "backbone_groups",
    "check_training_options",
    "data_root",
    "decode_files",
    "decode_once",
    "head_names",
    "hookimpl",
    "load_plugins",
    "make_target",
    "probe_model",
    "training_options",
]


def __getattr__(name: str):
    # The torch-backed and data-reading names load when first asked for, so listing stays
    # instant.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tlbench.api' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
