"""Rebuilding a cell's target dataset here, through the plugin registry, to show its images.

A submitted record is untrusted (docs/publishing.md, "Trust boundary"): it names the dataset
by id, but where the images come from is the publisher's own configuration. The dataset is
built by its registered id with its default options (so from wherever this machine keeps it),
never from a path, an argument (``imagefolder:/x``) or a download switch a record names; of the
record's options only enumerated choices and numbers are taken (``test_shift = "invert"``).
The test items the predictions index live in ``target.test``, or in ``target.train`` when the
core carved the test split from the training data (``split.test_from == "train"``, see
``tlbench.splits``); the gallery checks the labels loaded here against the predictions' own.
Dataset plugins are third-party code: any failure becomes a one-line reason, never an exception.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass

from tlbench.errors import typed_first_line
from tlbench.splits import PROTOCOLS, SPLIT_OPTIONS


@dataclass(frozen=True)
class TestSource:
    """The image set the test split indexes, its class names and a key naming its content."""

    images: object  # tlbench.components.ImageSet
    class_names: tuple[str, ...]
    key: str


class Targets:
    """Loads each dataset once per (reference, content options); remembers failures too."""

    def __init__(self, host=None):
        self._host = host
        self._loaded: dict[str, tuple[object, str]] = {}

    def test_source(self, record: dict) -> tuple[TestSource | None, str]:
        """``(source, "")`` or ``(None, reason it cannot be shown here)``."""
        ref = str(record.get("dataset_ref") or record["dataset"])
        if ":" in ref:
            return None, f"dataset {ref!r} names an argument; publish reads no path a record names"
        options = ((record.get("options") or {}).get("dataset")) or {}
        key = json.dumps([ref, options], sort_keys=True, default=str)
        if key not in self._loaded:
            self._loaded[key] = self._load(ref, options, int(record["seed"]))
        target, reason = self._loaded[key]
        if target is None:
            return None, reason
        test_from = (record.get("split") or {}).get("test_from")
        if test_from is None:
            test_from = "test" if target.test is not None else "train"
        images = target.test if test_from == "test" else target.train
        if images is None:
            return None, f"dataset {ref!r} loaded here has no {test_from} split"
        digest = hashlib.sha256(f"{key}|{test_from}".encode()).hexdigest()[:10]
        return TestSource(images, tuple(map(str, target.class_names)), digest), ""

    def _load(self, ref: str, recorded: dict, seed: int) -> tuple[object, str]:
        try:
            host = self._plugin_host()
            entry, argument = host.registry.lookup("dataset", ref)
        except Exception as exc:  # an unknown name or a plugin host that cannot start
            return None, f"dataset {ref!r} is not registered here ({typed_first_line(exc)})"
        options, refused = publisher_options(entry.spec.options, recorded)
        if refused:
            return None, f"dataset {ref!r}: {refused}"
        available = entry.spec.availability(argument, options)
        if available is not True:
            return None, f"dataset {ref!r} is not available here: {scrub(str(available))}"
        try:
            from tlbench.cache import Cache
            from tlbench.components import BuildContext

            context = BuildContext(
                cache=Cache(), device="cpu", registry=host.registry, seed=seed, log=lambda _m: None
            )
            return entry.spec.load_factory()(argument, options, context), ""
        except Exception as exc:  # third-party code: its failure is a reason, not a crash
            return None, f"dataset {ref!r} could not be loaded here: {scrub(typed_first_line(exc))}"

    def _plugin_host(self):
        if self._host is None:
            from tlbench.plugins import load_plugins

            self._host = load_plugins()
        return self._host


def publisher_options(schema: tuple, recorded: dict) -> tuple[dict, str]:
    """The options to build a dataset with here: each option's default, except enumerated
    choices and numbers, which are taken from the record (they select content, not a place).
    A path, a free string or a switch such as ``download`` is never taken from a record; a
    required option without a default means the dataset needs a place the publisher names."""
    options = {}
    for option in schema:
        value = recorded.get(option.name, option.default)
        numeric = option.type in (int, float) and option.type is not bool
        unset = value is None and option.default is None  # recorded as left at its default
        if (
            option.name in recorded
            and (option.choices or numeric)
            and not option.sweep
            and not unset
        ):
            try:
                options[option.name] = option.coerce(value)
            except (ValueError, TypeError):
                return {}, f"option {option.name!r} of the record is not valid here"
        elif option.required:
            return {}, f"needs option {option.name!r}, a place publish never takes from a record"
        else:
            options[option.name] = option.default
    options.update({k: v for k, v in recorded.items() if k in SPLIT_OPTIONS and _plain(v)})
    return options, ""


def _plain(value) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)) or value in PROTOCOLS


def scrub(text: str) -> str:
    """``text`` with each absolute path cut to its last component: a reason shown on a public
    page never reveals where the publisher keeps files."""
    return _ABSOLUTE.sub(lambda m: "…/" + m.group(0).rstrip("/").rsplit("/", 1)[-1], text)


_ABSOLUTE = re.compile(r"(?<![\w.~:/])/[^\s'\"():,;]+")
