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


class Registry:
    def __init__(self):
        self._items: dict[str, dict[str, Registered]] = {kind: {} for kind in SPEC_KINDS}

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
        names = self.names(kind)
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        text = f"Did you mean {', '.join(repr(c) for c in close)}? " if close else ""
        return text + f"Available: {', '.join(names) or 'none'}."
