"""What plugin code must return, checked where it returns it (docs/plugins/reference.md).

A value that breaks its contract raises ``ContractError`` naming the kind of component that
returned it, so the cell's failure blames that component and its plugin, not whoever happened
to use the value next (a label out of range used to surface as the built-in strategy's
``IndexError``). Checks are cheap: a pass over the labels, a look at array shapes and dtypes,
and one look at the first batch a built model returns. Nothing here imports torch at import time.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from tlbench.imagestore import ImageStore
from tlbench.safeio import TlbenchWarning

# The class count of the usual source (ImageNet-1k), for the logits warning when a model does
# not say which classes it was trained on.
USUAL_SOURCE_CLASSES = 1000


class ContractError(TypeError):
    """Plugin code returned what its contract does not allow.

    ``kind`` is the component that returned the value (``model``, ``dataset``, ``strategy``,
    ``estimator``), or ``None`` for the component being called. The message continues the
    component's name: ``returned a dict from run(); expected ...`` (``sep`` is what joins them).
    """

    def __init__(self, message: str, kind: str | None = None, sep: str = " "):
        super().__init__(message)
        self.kind, self.sep = kind, sep


def _dataset_error(message: str) -> ContractError:
    return ContractError(message, kind="dataset", sep=": ")


# -- datasets ----------------------------------------------------------------------------------


def check_target(target) -> None:
    """``target`` (a ``TargetData``) keeps the dataset contract: class names are distinct
    strings, each split has as many labels as images, every label is an integer in
    ``[0, number of classes)``, decoded images are uint8 shaped (N, H, W) or (N, H, W, C)."""
    names = target.class_names
    if isinstance(names, str) or not isinstance(names, Sequence) or not names:
        raise _dataset_error(
            f"class_names is {kind_of(names)}; expected a non-empty tuple of strings"
        )
    if not all(isinstance(name, str) for name in names):
        raise _dataset_error("class_names holds a non-string; expected a tuple of strings")
    if len(set(names)) != len(names):
        twice = sorted({name for name in names if list(names).count(name) > 1})
        raise _dataset_error(f"class_names repeats {', '.join(map(repr, twice[:3]))}")
    if not isinstance(target.fingerprint, str) or not target.fingerprint:
        raise _dataset_error(
            "fingerprint is empty or not a string; expected a string that changes with the content"
        )
    for split in ("train", "test"):
        images = getattr(target, split)
        if images is None and split == "test":
            continue
        check_image_set(images, split, len(names))


def check_image_set(images, split: str, classes: int) -> None:
    from tlbench.components import ImageSet

    if not isinstance(images, ImageSet):
        raise _dataset_error(f"{split} is {kind_of(images)}; expected a tlbench.api.ImageSet")
    labels = images.labels
    if not isinstance(labels, np.ndarray) or labels.ndim != 1:
        shape = getattr(labels, "shape", None)
        raise _dataset_error(
            f"{split} labels are {kind_of(labels)}"
            + (f" shaped {tuple(shape)}" if shape is not None else "")
            + "; expected a 1-D NumPy array of integers"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise _dataset_error(
            f"{split} labels have dtype {labels.dtype}; expected integers in 0..{classes - 1}"
        )
    outside = np.flatnonzero((labels < 0) | (labels >= classes))
    if len(outside):
        position = int(outside[0])
        more = f" (and {len(outside) - 1} more)" if len(outside) > 1 else ""
        raise _dataset_error(
            f"{split} label {int(labels[position])} at position {position} is outside "
            f"0..{classes - 1} ({classes} class names){more}"
        )
    if images.images is not None:
        _check_pixels(images.images, len(labels), split)
    elif images.paths is not None:
        if len(images.paths) != len(labels):
            raise _dataset_error(
                f"{split} has {len(images.paths)} paths and {len(labels)} labels; "
                "expected one label per image"
            )
        if not callable(images.loader):
            raise _dataset_error(f"{split} has paths but no loader; expected loader(path) -> image")
    else:
        raise _dataset_error(f"{split} has neither images nor paths")


def _check_pixels(pixels, count: int, split: str) -> None:
    if not isinstance(pixels, np.ndarray | ImageStore):  # a store: decoded rows on disk
        raise _dataset_error(f"{split} images are {kind_of(pixels)}; expected a NumPy uint8 array")
    if pixels.dtype != np.uint8:
        raise _dataset_error(
            f"{split} images have dtype {pixels.dtype}; expected uint8 (0..255), shaped "
            "(N, H, W) or (N, H, W, C)"
        )
    if pixels.ndim not in (3, 4) or (pixels.ndim == 4 and pixels.shape[3] not in (1, 3, 4)):
        raise _dataset_error(
            f"{split} images are shaped {tuple(pixels.shape)}; expected (N, H, W) for grayscale "
            "or (N, H, W, C) with C = 1, 3 or 4"
        )
    if len(pixels) != count:
        raise _dataset_error(
            f"{split} has {len(pixels)} images and {count} labels; expected one label per image"
        )


# -- models ------------------------------------------------------------------------------------


def checked_source(source, culprit: str):
    """``source`` (a ``SourceModel``) whose ``build`` checks the first output of every module it
    builds: ``build(0, ...)`` must give features ``(N, num_features)``, ``build(n, ...)``
    logits ``(N, n)``. A feature width equal to the source's class count gets a warning (the
    module probably returns its classifier's logits), naming ``culprit`` (``model 'x' (plugin
    'p')``)."""
    build = source.build
    if getattr(build, "_tlbench_checked", False):
        return source
    source_classes = len(source.source_classes or ()) or _int(source.card.get("num_classes"))

    def checked_build(*args, **kwargs):
        module = build(*args, **kwargs)
        classes = args[0] if args else kwargs.get("num_classes", 0)
        if hasattr(module, "register_forward_hook"):
            _watch_first_output(module, classes, culprit, source_classes)
        return module

    checked_build._tlbench_checked = True
    return replace(source, build=checked_build)


def _watch_first_output(module, classes: int, name: str, source_classes: int | None) -> None:
    handle = None

    def hook(mod, inputs, output):
        handle.remove()
        # A strategy may give the module a head after building it without one.
        now = getattr(mod, "num_classes", classes)
        check_model_output(
            mod, output, now if isinstance(now, int) else classes, name, source_classes
        )

    handle = module.register_forward_hook(hook)


def check_model_output(module, output: Any, classes: int, name: str, source_classes) -> None:
    if not hasattr(output, "shape"):  # a tuple in training mode (auxiliary heads): not judged
        return
    shape = tuple(output.shape)
    what = f"build({classes}) made a module whose forward returned"
    if classes:
        if len(shape) != 2 or shape[1] != classes:
            raise ContractError(
                f"{what} shape {shape}; expected logits (N, {classes}): replace the classifier "
                "for num_classes",
                kind="model",
            )
        return
    width = getattr(module, "num_features", None)
    if len(shape) != 2 or (isinstance(width, int) and shape[1] != width):
        columns = width if isinstance(width, int) else "num_features"
        raise ContractError(
            f"{what} shape {shape}; expected features (N, {columns}) with no classifier "
            "(end the body with pooling and flattening)",
            kind="model",
        )
    expected_classes = source_classes or USUAL_SOURCE_CLASSES
    if shape[1] == expected_classes:
        warnings.warn(
            f"{name}: build(0) returns {shape[1]} columns, the source's class count: "
            "these look like classifier logits, not features (remove or replace the classifier "
            "when num_classes is 0)",
            TlbenchWarning,
            stacklevel=2,
        )


# -- strategies --------------------------------------------------------------------------------


def check_top1_against_predictions(top1: float, predictions, test_size: int | None) -> None:
    """A strategy's ``metrics['top1']`` agrees with its own stored predictions (within one
    test item), and the predictions cover the test split."""
    if test_size is not None and len(predictions) != test_size:
        raise ContractError(
            f"returned predictions for {len(predictions)} test items; the test split has "
            f"{test_size}"
        )
    if not len(predictions):
        return
    recomputed = predictions.top1
    if not math.isclose(top1, recomputed, abs_tol=100.0 / len(predictions)):
        hint = " (a fraction? top1 is in percent)" if 0 < top1 <= 1 else ""
        raise ContractError(
            f"returned metrics['top1'] = {top1!r}, but its predictions give {recomputed:.2f}% "
            f"on {len(predictions)} test items{hint}; expected the top-1 of those predictions"
        )


def _int(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def kind_of(value) -> str:
    """``a dict``, ``an int``, ``None``: what a value is, for a message."""
    if value is None:
        return "None"
    name = type(value).__name__
    return f"{'an' if name[0].lower() in 'aeiou' else 'a'} {name}"
