"""Which layers of a timm model: named layer groups at stage or block granularity, choosing
groups by position, name or parameter share, and re-initialising groups with timm's own init.

Groups come from timm's ``group_matcher`` (the ordering timm uses for layer-wise lr decay):
``coarse=True`` gives stages, ``coarse=False`` blocks where the model offers them (the same
groups otherwise); models without a matcher get one group per top-level child. The classifier
is never a group: it is new for every target and always trains.

A selection is a comma-separated string of items, each one of:

    first | middle | last     the first, middle (index G // 2) or last group
    3, -1                     a position (negative counts from the output side)
    2:5, -3:                  a Python slice of positions
    blocks.5                  a name: every group holding a parameter under that module path
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from tlbench.api import FineTuneStrategy, Option, UserError, head_names, probe_model

UNITS = ("stage", "block")
_UNIT_WORDS = {"stage": ("stages", "coarse"), "block": ("blocks", "fine")}
_SLICE = re.compile(r"^(-?\d*):(-?\d*)$")
_ALIASES = ("first", "middle", "last")


@dataclass(frozen=True)
class LayerGroup:
    """One group: its name (module paths joined by '+'), parameter names and element count."""

    name: str
    params: tuple[str, ...]
    size: int


def unit_option(default: str) -> Option:
    """The ``unit`` option of every strategy or model that chooses layer groups."""
    other = next(unit for unit in UNITS if unit != default)
    (first, first_matcher), (second, second_matcher) = _UNIT_WORDS[default], _UNIT_WORDS[other]
    return Option(
        "unit",
        str,
        default=default,
        help=f"Layer-group granularity: timm's {first} (group_matcher {first_matcher}) or {second} ({second_matcher}).",
        choices=UNITS,
    )


def model_groups(model, unit: str = "block") -> list[LayerGroup]:
    """The backbone's layer groups, input side first, at ``unit`` granularity."""
    if unit not in UNITS:
        raise UserError(f"unit must be one of {', '.join(UNITS)}, got {unit!r}")
    sizes = {name: p.numel() for name, p in model.named_parameters()}
    head = set(head_names(model))
    groups = []
    from tlbench.weights import layer_groups  # deferred: imports torch and timm

    for names in layer_groups(model, coarse=unit == "stage"):
        kept = tuple(n for n in names if n not in head)
        if kept:
            groups.append(LayerGroup(group_name(kept), kept, sum(sizes[n] for n in kept)))
    return groups


def group_name(params: Sequence[str]) -> str:
    """The shortest module paths covering ``params``: one per top-level module, joined by '+'
    (``blocks.5``, ``conv_stem+bn1``, ``blocks.6.0+conv_head+bn2``)."""
    by_top: dict[str, list[list[str]]] = {}
    for name in params:
        parts = name.split(".")
        owner = parts[:-1] or parts  # a parameter directly on the model owns itself
        by_top.setdefault(owner[0], []).append(owner)
    return "+".join(".".join(_common_prefix(paths)) for paths in by_top.values())


def _common_prefix(paths: list[list[str]]) -> list[str]:
    prefix = paths[0]
    for path in paths[1:]:
        length = 0
        while length < min(len(prefix), len(path)) and prefix[length] == path[length]:
            length += 1
        prefix = prefix[:length]
    return prefix


# ------------------------------------------------------------------------------ choosing


def select(groups: Sequence[LayerGroup], spec: str, what: str) -> list[LayerGroup]:
    """The groups ``spec`` names (module docstring), in model order, each once. ``what`` names
    the option in error messages (``cell ... : strategy option 'groups'``)."""
    chosen: set[int] = set()
    items = [item.strip() for item in spec.split(",") if item.strip()]
    if not items:
        raise UserError(f"{what}: expected group positions or names, got {spec!r}")
    for item in items:
        chosen.update(_indices(groups, item, what))
    return [groups[i] for i in sorted(chosen)]


def _indices(groups: Sequence[LayerGroup], item: str, what: str) -> list[int]:
    count = len(groups)
    if item in _ALIASES:
        return [{"first": 0, "middle": count // 2, "last": count - 1}[item]]
    if re.fullmatch(r"-?\d+", item):
        position = int(item)
        if not -count <= position < count:
            raise UserError(
                f"{what}: position {position} is outside the model's {count} layer groups (0..{count - 1}, or -{count}..-1)"
            )
        return [position % count]
    if match := _SLICE.match(item):
        start, stop = (int(v) if v else None for v in match.groups())
        found = list(range(count))[slice(start, stop)]
        if not found:
            raise UserError(f"{what}: slice {item!r} selects none of the {count} layer groups")
        return found
    found = [
        i
        for i, group in enumerate(groups)
        if any(p == item or p.startswith(item + ".") for p in group.params)
    ]
    if not found:
        names = ", ".join(g.name for g in groups)
        raise UserError(f"{what}: no layer group holds {item!r} (groups: {names})")
    return found


def last_k(groups: Sequence[LayerGroup], k: int, what: str) -> list[LayerGroup]:
    if k > len(groups):
        raise UserError(f"{what} = {k} but the model has only {len(groups)} layer groups")
    return list(groups[len(groups) - k :]) if k else []


def by_fraction(groups: Sequence[LayerGroup], fraction: float) -> list[LayerGroup]:
    """The fewest output-side groups holding at least ``fraction`` of the backbone's parameters
    (at least one group)."""
    total = sum(g.size for g in groups) or 1
    share = 0.0
    for count, group in enumerate(reversed(groups), start=1):
        share += group.size / total
        if share >= fraction:
            return list(groups[len(groups) - count :])
    return list(groups)


def params_of(groups: Iterable[LayerGroup]) -> list[str]:
    return [name for group in groups for name in group.params]


def trained_record(model, groups: Sequence[LayerGroup], unit: str) -> dict:
    """What a record says about the layers that trained: the groups' names (the classifier
    last) and the unit they were chosen in."""
    names = [g.name for g in groups] + [group_name(head_names(model))]
    return {"unit": unit, "trained_groups": names}


def with_trainable_share(result) -> None:
    """Add ``cost.trainable_pct`` (trainable parameters, head included, in percent of all)."""
    cost = result.cost
    if cost.get("total_params"):
        cost["trainable_pct"] = round(100.0 * cost["trainable_params"] / cost["total_params"], 3)


@dataclass
class GroupStrategy(FineTuneStrategy):
    """A fine-tuning strategy that trains chosen layer groups (``choose``) and the head, and
    records which (``hparams.trained_groups``, ``unit``, ``layer_groups``) and their share of the
    parameters (``cost.trainable_pct``). Options must include ``unit``."""

    layout: list[LayerGroup] = field(default_factory=list)
    trained: list[LayerGroup] = field(default_factory=list)
    record: dict = field(default_factory=dict)

    def groups(self, model) -> list[LayerGroup]:
        return model_groups(model, self.options["unit"])

    def check(self, ctx) -> None:
        super().check(ctx)
        model = probe_model(ctx)
        self.layout = self.groups(model)
        self.trained = self.choose(ctx, model, self.layout)
        self.record = trained_record(model, self.trained, self.options["unit"])

    def choose(self, ctx, model, groups: list[LayerGroup]) -> list[LayerGroup]:
        raise NotImplementedError

    def trainable(self, model) -> list[str]:
        # ``model`` is a fresh build of the probed architecture: same groups, same names.
        chosen = {g.name for g in self.trained}
        return params_of(g for g in self.groups(model) if g.name in chosen) + head_names(model)

    def run(self, ctx):
        result = super().run(ctx)
        result.hparams.update(self.record, layer_groups=len(self.layout))
        with_trainable_share(result)
        return result


# ------------------------------------------------------------------------------ re-initialising


def reinitialise(
    model, groups: Sequence[LayerGroup], *, arch: str, in_chans: int, seed: int
) -> None:
    """Give ``groups`` (parameters and the buffers of their modules, e.g. BatchNorm statistics)
    timm's own initialisation of ``arch``: a model created with ``pretrained=False`` under
    ``seed``, copied in. Everything else, the classifier included, is left as it is."""
    import timm
    import torch

    if not groups:
        return
    owners = {_owner(name) for name in params_of(groups)}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = timm.create_model(arch, pretrained=False, num_classes=0, in_chans=in_chans)
    fresh_state = fresh.state_dict()
    with torch.no_grad():
        for key, value in model.state_dict().items():
            if _owner(key) in owners:
                value.copy_(fresh_state[key])


def _owner(key: str) -> str:
    return key.rsplit(".", 1)[0] if "." in key else key
