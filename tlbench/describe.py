"""What ``tlbench list`` and ``tlbench show`` say about a component: description, plugin,
versions, card, availability and every option (type, default, help, range, whether it sweeps),
as JSON-ready dicts and as the plain tab-separated lines scripts read. Imports no torch."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from tlbench.registry import Registered
from tlbench.specs import COMMON_OPTIONS, Option

# The fields of one line of `tlbench list` when stdout is not a terminal (docs/cli.md).
LIST_FIELDS = ("name", "kind", "plugin", "offline", "options", "description")


def option_info(option: Option, provided_by: str) -> dict:
    """One option as data: every field of ``Option`` (the type by name), what it expects in
    words, and ``provided_by``: ``core`` (every component of the kind has it) or ``component``."""
    info = {f.name: getattr(option, f.name) for f in fields(Option)}
    info["type"] = getattr(option.type, "__name__", str(option.type))
    if option.choices is not None:
        info["choices"] = list(option.choices)
    info["expected"] = option.describe()
    info["provided_by"] = provided_by
    return _plain(info)


def component_info(
    kind: str,
    registered: Registered,
    plugin_versions: Mapping[str, str],
    argument: str | None = None,
) -> dict:
    """A registered component as data: what ``tlbench show NAME --json`` prints."""
    spec = registered.spec
    available = spec.availability(argument)
    core = [option_info(o, "core") for o in COMMON_OPTIONS[kind]]
    own = [option_info(o, "component") for o in spec.options]
    return {
        "kind": kind,
        "name": spec.name,
        "ref": reference(registered, argument),
        "takes_argument": spec.takes_argument,
        "argument": argument,
        "argument_help": spec.argument_help,
        "plugin": registered.plugin,
        "plugin_version": plugin_versions.get(registered.plugin, "-"),
        "version": spec.version,
        "description": spec.description,
        "tags": list(spec.tags),
        "card": _plain(dict(spec.card)),
        "offline": True if available is True else str(available),
        "options": own + core,
    }


def reference(registered: Registered, argument: str | None = None) -> str:
    """``name``, ``name:argument``, or ``name:<argument help>`` for a family."""
    spec = registered.spec
    if not spec.takes_argument:
        return spec.name
    return f"{spec.name}:{argument}" if argument else f"{spec.name}:<{spec.argument_help or 'arg'}>"


def option_names(info: dict, *, own_only: bool = True) -> str:
    """``lr (sweep), epochs``: the options of a component, sweepable ones marked."""
    return ", ".join(
        o["name"] + (" (sweep)" if o["sweep"] else "")
        for o in info["options"]
        if not own_only or o["provided_by"] == "component"
    )


def offline_text(info: dict) -> str:
    return "yes" if info["offline"] is True else f"no: {info['offline']}"


def list_line(info: dict) -> str:
    """One component on one line, fields tab-separated (``LIST_FIELDS``)."""
    values = {
        "name": list_name(info),
        "kind": info["kind"],
        "plugin": info["plugin"],
        "offline": offline_text(info),
        "options": option_names(info),
        "description": info["description"],
    }
    return "\t".join(one_field(values[name]) for name in LIST_FIELDS)


def list_name(info: dict) -> str:
    """The name field of a plain line: one token, so a family whose argument help is prose
    reads ``name:<argument>`` (the help is in ``tlbench show``)."""
    if not info["takes_argument"] or info["argument"]:
        return info["ref"]
    hint = info["argument_help"]
    return f"{info['name']}:<{hint if hint and ' ' not in hint else 'argument'}>"


def card_lines(info: dict) -> list[str]:
    return [f"{key}: {value}" for key, value in info["card"].items() if key != "source"]


def header_lines(info: dict) -> list[str]:
    """What ``tlbench show`` prints above the options: who, what, offline, tags, card."""
    version = "" if info["plugin_version"] == "-" else f" {info['plugin_version']}"
    lines = [
        f"{info['ref']}  ({info['kind']} from plugin {info['plugin']}{version}, "
        f"recipe version {info['version']})",
    ]
    if info["description"]:
        lines.append(info["description"])
    lines.append(f"offline: {offline_text(info)}")
    if info["takes_argument"] and not info["argument"]:
        lines.append(f"argument: {info['name']}:<{info['argument_help'] or 'arg'}>")
    if info["tags"]:
        lines.append(f"tags: {', '.join(info['tags'])}")
    card = card_lines(info)
    if card:
        lines += ["card:"] + [f"  {line}" for line in card]
    return lines


def show_lines(info: dict) -> list[str]:
    """``tlbench show NAME`` as plain text: the header, then each option and its help."""
    lines = header_lines(info)
    lines.append("options:" if info["options"] else "options: none")
    for option in info["options"]:
        lines.append("  " + option_summary(option))
        if option["help"]:
            lines.append(f"      {option['help']}")
    return lines


def option_summary(option: dict) -> str:
    """``lr: float = [0.001, 0.003], a number >= 0.0 (or a list of them to sweep); sweepable``."""
    default = "required" if option["required"] else f"default {default_text(option)}"
    sweep = "; sweepable" if option["sweep"] else ""
    core = "; from the core" if option["provided_by"] == "core" else ""
    return f"{option['name']} ({option['type']}, {default}): {option['expected']}{sweep}{core}"


def one_field(value: Any) -> str:
    """A value fit for one tab-separated field: no tabs, no newlines."""
    return " ".join(str(value).split())


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def default_text(option: dict) -> str:
    """A default as a suite file would write it (``unset`` when the option has none)."""
    return "unset" if option["default"] is None else json.dumps(option["default"])
