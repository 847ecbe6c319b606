"""The registry: every component by kind and name, with the plugin that registered it."""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from dataclasses import dataclass

from tlbench.errors import UserError
from tlbench.specs import COMMON_OPTIONS, SPEC_KINDS, ComponentSpec, Option


@dataclass(frozen=True)
class Registered:
    spec: ComponentSpec
    plugin: str

    @property
    def options(self) -> tuple[Option, ...]:
        return COMMON_OPTIONS[self.spec.kind] + self.spec.options


class RegistrationError(Exception):
    """A plugin registered something malformed or a duplicate name."""


@dataclass(frozen=True)
class Clash:
    """Two plugins registered the same name: the first one's component is kept."""

    kind: str
    name: str
    kept: str  # the plugin whose component answers to the name
    ignored: str  # the plugin whose registration was refused

    def describe(self) -> str:
        return (
            f"{self.kind} {self.name!r}: plugin {self.kept!r} kept, plugin {self.ignored!r} ignored"
        )


class Registry:
    def __init__(self):
        self._items: dict[str, dict[str, Registered]] = {kind: {} for kind in SPEC_KINDS}
        self.clashes: list[Clash] = []

    def add(self, kind: str, spec: object, plugin: str) -> None:
        expected = SPEC_KINDS[kind]
        if not isinstance(spec, expected):
            raise RegistrationError(
                f"plugin {plugin!r} registered {spec!r} as a {kind}; expected a tlbench.specs.{expected.__name__}"
            )
        clash = {o.name for o in COMMON_OPTIONS[kind]} & {o.name for o in spec.options}
        if clash:
            raise RegistrationError(
                f"plugin {plugin!r}: {kind} {spec.name!r} declares option {sorted(clash)[0]!r}, which the core already provides for every {kind}"
            )
        existing = self._items[kind].get(spec.name)
        if existing is not None:
            self.clashes.append(Clash(kind, spec.name, existing.plugin, plugin))
            raise RegistrationError(
                f"{kind} {spec.name!r} is registered twice: by plugin {existing.plugin!r} and by plugin {plugin!r}"
            )
        self._items[kind][spec.name] = Registered(spec, plugin)

    def names(self, kind: str) -> list[str]:
        return sorted(self._items[kind])

    def items(self, kind: str) -> Iterator[Registered]:
        for name in self.names(kind):
            yield self._items[kind][name]

    def lookup(self, kind: str, ref: str) -> tuple[Registered, str | None]:
        """Resolve ``name`` or ``name:argument``; raise ``UserError`` with suggestions."""
        name, sep, argument = ref.partition(":")
        entry = self._items[kind].get(name)
        if entry is None:
            raise UserError(f"unknown {kind} {ref!r}. {self.suggest(kind, name)}")
        if sep and not entry.spec.takes_argument:
            raise UserError(f"{kind} {name!r} takes no ':argument' (got {ref!r})")
        if entry.spec.takes_argument and not argument:
            hint = entry.spec.argument_help or "an argument"
            raise UserError(f"{kind} {name!r} needs an argument: '{name}:<{hint}>'")
        return entry, (argument or None)

    def suggest(self, kind: str, name: str) -> str:
        return did_you_mean(name, self.names(kind))

    def find(self, ref: str) -> list[tuple[str, Registered, str | None]]:
        """Every (kind, registration, argument) that ``ref`` (``name`` or ``name:argument``)
        names, whatever the kind; ``UserError`` with suggestions when none does."""
        found = []
        for kind in SPEC_KINDS:
            if ref.partition(":")[0] in self._items[kind]:
                registered, argument = self.lookup(kind, ref)
                found.append((kind, registered, argument))
        if not found:
            every = sorted({n for kind in SPEC_KINDS for n in self.names(kind)})
            raise UserError(
                f"unknown component {ref!r}. {did_you_mean(ref.partition(':')[0], every)}"
            )
        return found


def did_you_mean(name: str, names: list[str]) -> str:
    """``Did you mean 'a', 'b'? Available: ...``: the registry's manners for an unknown name."""
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    text = f"Did you mean {', '.join(repr(c) for c in close)}? " if close else ""
    return text + f"Available: {', '.join(names) or 'none'}."
