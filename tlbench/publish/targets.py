"""Rebuilding a cell's target dataset here, through the plugin registry, to show its images.

The record names the dataset (``dataset_ref``) and its resolved options; the test items the
predictions index live in ``target.test``, or in ``target.train`` when the core carved the test
split from the training data (``split.test_from == "train"``, see ``tlbench.splits``). Dataset
plugins are third-party code: any failure becomes a one-line reason, never an exception.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from tlbench.splits import SPLIT_OPTIONS


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
        options = ((record.get("options") or {}).get("dataset")) or {}
        content = {k: v for k, v in options.items() if k not in SPLIT_OPTIONS}
        key = json.dumps([ref, content], sort_keys=True, default=str)
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

    def _load(self, ref: str, options: dict, seed: int) -> tuple[object, str]:
        try:
            host = self._plugin_host()
            entry, argument = host.registry.lookup("dataset", ref)
        except Exception as exc:  # an unknown name or a plugin host that cannot start
            return None, f"dataset {ref!r} is not registered here ({_first_line(exc)})"
        available = entry.spec.availability(argument, options)
        if available is not True:
            return None, f"dataset {ref!r} is not available here: {available}"
        try:
            from tlbench.cache import Cache
            from tlbench.components import BuildContext

            context = BuildContext(
                cache=Cache(), device="cpu", registry=host.registry, seed=seed, log=lambda _m: None
            )
            return entry.spec.load_factory()(argument, dict(options), context), ""
        except Exception as exc:  # third-party code: its failure is a reason, not a crash
            return None, f"dataset {ref!r} could not be loaded here: {_first_line(exc)}"

    def _plugin_host(self):
        if self._host is None:
            from tlbench.plugins import load_plugins

            self._host = load_plugins()
        return self._host


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
