"""Registration specs: what a plugin hands to ``register(...)``.

These are plain frozen dataclasses with no torch import, so listing components stays instant.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Mapping
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

_MISSING = object()
# The numeric precisions the engine runs in ("auto" resolves per device,
# tlbench.engine.resolve_precision): kept here so options list them without importing torch.
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
SPLIT_SIZE_LIMIT = 10**9  # images in a split: larger values are typos, never a real dataset
_TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


@dataclass(frozen=True)
class Option:
    """One option a component accepts in a suite file.

    ``sweep=True`` lets the user give one value or a list of candidates (normalised to a list);
    strategies select among the candidates on the validation split. ``minimum``/``maximum`` bound
    a value inclusively; ``exclusive_minimum`` requires it to be strictly greater (``0.0`` for a
    learning rate or an L2 strength), so the constraint is declared once and checked when the
    suite is read, not after the model and data are loaded. Numbers must be finite.
    ``axis=True`` lets the user give one value or a list of distinct values; a list expands the
    suite entry into one entry per value (``tlbench.suite.along_axes``), so every value is a cell
    of its own instead of a candidate.
    """

    name: str
    type: type
    _: KW_ONLY
    default: Any = None
    help: str = ""
    choices: tuple | None = None
    minimum: float | None = None
    maximum: float | None = None
    sweep: bool = False
    required: bool = False
    exclusive_minimum: float | None = None
    axis: bool = False

    def describe(self) -> str:
        expected = _TYPE_NAMES.get(self.type, self.type.__name__)
        if self.choices:
            expected = "one of " + ", ".join(repr(c) for c in self.choices)
        bounds = []
        if self.exclusive_minimum is not None:
            bounds.append(f"> {self.exclusive_minimum}")
        if self.minimum is not None and self.maximum is not None:
            bounds.append(f"in [{self.minimum}, {self.maximum}]")
        elif self.minimum is not None:
            bounds.append(f">= {self.minimum}")
        elif self.maximum is not None:
            bounds.append(f"<= {self.maximum}")
        if bounds:
            expected += " " + " and ".join(bounds)
        if self.sweep:
            expected += " (or a list of them to sweep)"
        if self.axis:
            expected += " (or a list of them: one cell each)"
        return expected

    def coerce(self, value: Any) -> Any:
        """Return the validated value or raise ``ValueError`` saying what was expected."""
        if self.sweep:
            values = value if isinstance(value, list) else [value]
            if not values:
                raise ValueError(f"expected {self.describe()}, got an empty list")
            return [self._coerce_one(v) for v in values]
        if self.axis and isinstance(value, list):
            return self._coerce_axis(value)
        return self._coerce_one(value)

    def _coerce_axis(self, values: list) -> list:
        coerced = [self._coerce_one(v) for v in values]
        if not coerced or len(set(coerced)) != len(coerced):
            raise ValueError(f"expected {self.describe()} with distinct values, got {values!r}")
        return coerced

    def _coerce_one(self, value: Any) -> Any:
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, self.type) or (self.type is int and isinstance(value, bool)):
            raise ValueError(f"expected {self.describe()}, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"expected {self.describe()}, got {value!r}, which is not finite")
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"expected {self.describe()}, got {value!r}")
        if self.exclusive_minimum is not None and not value > self.exclusive_minimum:
            raise ValueError(f"expected {self.describe()}, got {value!r}")
        if self.minimum is not None and value < self.minimum:
            raise ValueError(f"expected {self.describe()}, got {value!r}")
        if self.maximum is not None and value > self.maximum:
            raise ValueError(f"expected {self.describe()}, got {value!r}")
        return value


class OptionErrors(ValueError):
    """Every problem with the options given to one component, one message each (``problems``);
    ``str()`` joins them with ``"; "``."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = tuple(problems)


def resolve_options(options: tuple[Option, ...], given: Mapping[str, Any]) -> dict[str, Any]:
    """Validate user-given options against a schema; fill defaults.

    Raises ``OptionErrors`` (a ``ValueError``) listing every unknown option (with the known
    ones and a suggestion) and every bad or missing value, each naming its option.
    """
    import difflib

    schema = {o.name: o for o in options}
    problems = []
    for name in given:
        if name not in schema:
            close = difflib.get_close_matches(str(name), list(schema), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            known = ", ".join(sorted(schema)) or "none"
            problems.append(f"unknown option {name!r} (known options: {known}){hint}")
    resolved: dict[str, Any] = {}
    for name, opt in schema.items():
        if name in given:
            try:
                resolved[name] = opt.coerce(given[name])
            except ValueError as exc:
                problems.append(f"option {name!r}: {exc}")
        elif opt.required:
            problems.append(f"option {name!r} is required ({opt.describe()})")
        else:
            resolved[name] = (
                [opt.default]
                if opt.sweep and opt.default is not None and not isinstance(opt.default, list)
                else opt.default
            )
    if problems:
        raise OptionErrors(problems)
    return resolved


@dataclass(frozen=True)
class ComponentSpec:
    """What every registered component declares.

    ``factory`` is a callable or a ``"package.module:attr"`` string imported on first use, so that
    registration never imports torch. ``takes_argument`` makes the component a family addressed as
    ``name:argument`` (``timm:resnet50.a1_in1k``, ``scratch:resnet18``).
    ``available`` optionally answers "can this run offline right now?" cheaply: a callable
    returning ``True`` or a one-line reason why not. ``version`` names the component's recipe:
    bump it whenever what the component computes changes, so ``--resume`` reruns the cells it
    produced instead of mixing old and new numbers (it enters every cell's config hash).
    Every field but ``name`` is keyword-only.
    """

    name: str
    _: KW_ONLY
    factory: Callable | str
    description: str = ""
    options: tuple[Option, ...] = ()
    takes_argument: bool = False
    argument_help: str = ""
    tags: tuple[str, ...] = ()
    card: Mapping[str, Any] = field(default_factory=dict)
    available: Callable[..., bool | str] | None = None
    version: str = "1"

    kind = "component"

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name or ":" in self.name or " " in self.name:
            raise ValueError(
                f"name must be a non-empty string without ':' or spaces, got {self.name!r}"
            )
        if not (callable(self.factory) or (isinstance(self.factory, str) and ":" in self.factory)):
            raise ValueError(
                f"factory must be a callable or a 'module:attr' string, got {self.factory!r}"
            )
        if not isinstance(self.version, str) or not self.version:
            raise ValueError(f"version must be a non-empty string, got {self.version!r}")
        for opt in self.options:
            if not isinstance(opt, Option):
                raise ValueError(f"options must be tlbench.specs.Option instances, got {opt!r}")

    def load_factory(self) -> Callable:
        if callable(self.factory):
            return self.factory
        module_name, _, attr = self.factory.partition(":")
        return getattr(importlib.import_module(module_name), attr)

    def availability(
        self, argument: str | None = None, options: Mapping[str, Any] | None = None
    ) -> bool | str:
        """Ask the ``available`` probe. Probes take ``()``, ``(argument)`` for families, and may
        take the suite entry's ``options`` as one more parameter (a dataset with its own ``root``
        or ``download = true`` is available where the default location is empty)."""
        if self.available is None:
            return True
        args = [argument] if self.takes_argument else []
        if _accepts_extra_parameter(self.available, len(args)):
            args.append(dict(options or {}))
        try:
            return self.available(*args)
        except Exception as exc:  # an availability probe must never break listing
            return f"availability check failed: {exc}"


def _accepts_extra_parameter(fn: Callable, given: int) -> bool:
    import inspect

    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) > given or any(p.kind == p.VAR_POSITIONAL for p in params)


@dataclass(frozen=True)
class ModelSpec(ComponentSpec):
    kind = "model"


@dataclass(frozen=True)
class DatasetSpec(ComponentSpec):
    kind = "dataset"


@dataclass(frozen=True)
class StrategySpec(ComponentSpec):
    kind = "strategy"


@dataclass(frozen=True)
class EstimatorSpec(ComponentSpec):
    kind = "estimator"


# The one table of component kinds and their plural (suite fields, CLI words, report titles).
KINDS = {
    "model": "models",
    "dataset": "datasets",
    "strategy": "strategies",
    "estimator": "estimators",
}

SPEC_KINDS = {
    "model": ModelSpec,
    "dataset": DatasetSpec,
    "strategy": StrategySpec,
    "estimator": EstimatorSpec,
}


# Options the core understands for every component of a kind, on top of the component's own.
COMMON_OPTIONS: dict[str, tuple[Option, ...]] = {
    "model": (
        Option(
            "input_size",
            int,
            default=None,
            help="Override the resolution the weights expect (small-image targets); recorded.",
            minimum=8,
            maximum=1024,
        ),
        Option(
            "input_adaptation",
            str,
            default="replicate",
            help="How grayscale/multi-channel targets meet the stem: replicate channels, or adapt the stem's in_chans the timm way.",
            choices=("replicate", "stem"),
        ),
    ),
    "dataset": (
        Option(
            "train_size",
            int,
            default=None,
            help="Cap the training split at this many examples (stratified).",
            minimum=1,
            maximum=SPLIT_SIZE_LIMIT,
        ),
        Option(
            "val_size",
            int,
            default=None,
            help="Validation examples carved from training data (default: 20% of train, at most 10000).",
            minimum=1,
            maximum=SPLIT_SIZE_LIMIT,
        ),
        Option(
            "test_size",
            int,
            default=None,
            help="Cap the test split (stratified); default uses all of it.",
            minimum=1,
            maximum=SPLIT_SIZE_LIMIT,
        ),
        Option(
            "shots",
            int,
            default=None,
            help="n-shot: this many training examples per class.",
            minimum=1,
            maximum=SPLIT_SIZE_LIMIT,
        ),
        Option(
            "protocol",
            str,
            default="standard",
            help="Split protocol: 'standard', 'vtab1k' (800 train + 200 val for selection, final fit on all 1000), or 'source-reserve' (the reserved images self-pretrained sources train on).",
            choices=("standard", "vtab1k", "source-reserve"),
        ),
    ),
    "strategy": (),
    "estimator": (),
}
