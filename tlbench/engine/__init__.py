"""The training engine strategies share: cached features and prefix activations, logistic-regression
heads, the fine-tuning loop with sweeps and refits, and cost accounting.

Not covered by the compatibility promise (docs/plugins/compatibility.md): these helpers are
offered to strategy and estimator authors for convenience and may change between minor
releases; pin ``tlbench~=X.Y`` if you rely on them. What the promise covers is ``tlbench.api``.

Helpers::

    extract_features(backbone, data, split, *, device, precision, batch_size, cache, weights_fingerprint)
    cell_features(ctx, splits, *, precision, batch_size)
    fit_logistic(features, labels, num_classes, *, l2, device) -> LinearHead
    search_logistic(train, val, num_classes, *, grid, refine_steps, device) -> LogisticSearch
    finetune(ctx, recipe, options) -> StrategyResult
    fit_model(model, data, *, split, epochs, lr, device, seed, batch_size, ...) -> None
"""

from tlbench.engine.features import cell_features, extract_features, split_frozen_prefix
from tlbench.engine.logistic import (
    DEFAULT_L2_GRID,
    LinearHead,
    LogisticSearch,
    fit_logistic,
    search_logistic,
)
from tlbench.engine.runtime import (
    CostMeter,
    count_params,
    resolve_device,
    resolve_precision,
    with_oom_retry,
)
from tlbench.engine.training import (
    Recipe,
    TrainConfig,
    cell_label,
    cell_predictions,
    evaluate,
    finetune,
    fit_model,
    predict,
    train_loop,
)

__all__ = [
    "DEFAULT_L2_GRID",
    "CostMeter",
    "LinearHead",
    "LogisticSearch",
    "Recipe",
    "TrainConfig",
    "cell_features",
    "cell_label",
    "cell_predictions",
    "count_params",
    "evaluate",
    "extract_features",
    "finetune",
    "fit_logistic",
    "fit_model",
    "predict",
    "resolve_device",
    "resolve_precision",
    "search_logistic",
    "split_frozen_prefix",
    "train_loop",
    "with_oom_retry",
]
