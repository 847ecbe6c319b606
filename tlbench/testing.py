"""tlbench's pytest plugin: fixtures for people who write tlbench plugins (and for tlbench itself).

It is opt-in, so it never crowds the pytest sessions of other projects installed beside tlbench:
a plugin's tests load it with ``pytest_plugins = ["tlbench.testing"]`` in their ``conftest.py``
(the ``tlbench new-plugin`` scaffold writes that line) or ``pytest -p tlbench.testing``.
Importing it must stay cheap: no torch, no numpy at import time.

Fixtures:
    make_tlbench_host(*plugins, builtins=True, entrypoints=False) -> PluginHost
    tlbench_host        a fresh host with the built-in plugins only
    tlbench_run(suite, plugins=(), **options) -> list of cell records, run in this test's tmp_path
    tlbench_digits_images   scikit-learn's 1797 handwritten digits as a uint8 ``ImageSet`` (8x8)
    tlbench_digits_target   the same as a ``TargetData`` without a test split

Every fixture name carries ``tlbench``, so a session that loads the kit keeps its own generic
names (``digits_images``, say) free.

The plain functions ``make_host`` and ``run_tiny_suite`` do the same outside pytest.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from tlbench.plugins import DEFAULT_PLUGINS, PluginHost, load_plugins


class PluginLoadError(AssertionError):
    """A plugin under test failed to load or register; the message lists every error."""


def make_host(
    *plugins: object, builtins: bool = True, entrypoints: bool = False, strict: bool = True
) -> PluginHost:
    """A fresh plugin host holding ``plugins`` (modules, classes or instances with
    ``@tlbench.hookimpl`` functions, or ``(name, object)`` pairs).

    Nothing global is touched, so every test gets its own registry. ``entrypoints=True`` also
    loads installed plugins (to test that packaging works). ``strict`` raises
    ``PluginLoadError`` when any plugin failed to load or register.
    """
    host = load_plugins(
        builtins=DEFAULT_PLUGINS if builtins else (),
        load_entrypoints=entrypoints,
        extra=list(plugins),
    )
    if strict and host.errors:
        raise PluginLoadError("plugins failed to load:\n" + "\n".join(host.errors))
    return host


def run_tiny_suite(
    tmp_path: os.PathLike,
    suite: Mapping[str, Any] | str | os.PathLike,
    plugins: Sequence[object] = (),
    *,
    device: str = "cpu",
    cache_dir: os.PathLike | None = None,
    check: bool = True,
) -> list[dict]:
    """Run a small suite through the real runner inside ``tmp_path`` and return its records.

    ``suite`` is a dict (the parsed form of a suite file), TOML text, or the path of a suite file.
    ``plugins`` are registered on top of the built-ins (installed plugins are not loaded, so the
    outcome does not depend on the environment). The cache lives in ``tmp_path/cache`` unless
    ``cache_dir`` is given. ``check`` raises ``AssertionError`` with the traceback of the first
    cell that did not finish ``ok``.
    """
    from tlbench.planning import RunRequest
    from tlbench.runner import run_suite

    tmp_path = Path(tmp_path)
    host = make_host(*plugins)
    request = RunRequest(
        suite=_suite(tmp_path, suite, host),
        out_dir=tmp_path / "run",
        device=device,
        cache_dir=Path(cache_dir) if cache_dir is not None else tmp_path / "cache",
        results_root=tmp_path / "results",
    )
    records = run_suite(request, host=host).records
    if check:
        _check_records(records)
    return records


def _suite(tmp_path: Path, suite, host: PluginHost):
    from tlbench.suite import load_suite, parse_suite

    if isinstance(suite, Mapping):
        return parse_suite(suite, tmp_path / "suite.toml", host.registry)
    if isinstance(suite, str) and "\n" in suite:
        path = tmp_path / "suite.toml"
        path.write_text(suite)
        return load_suite(path, host.registry)
    return load_suite(Path(suite), host.registry)


def _check_records(records: list[dict]) -> None:
    for record in records:
        if record.get("status") != "ok":
            error = record.get("error") or {}
            where = f"{record['model']} x {record['dataset']} x {record['strategy']} (seed {record['seed']})"
            detail = error.get("traceback") or error.get("message") or record.get("detail") or ""
            raise AssertionError(f"cell {where} finished {record.get('status')!r}:\n{detail}")


def load_digits_images():
    """scikit-learn's bundled digits (no download): 1797 uint8 8x8 images, labels 0..9."""
    import numpy as np
    from sklearn.datasets import load_digits

    from tlbench.components import ImageSet

    bunch = load_digits()
    images = (bunch.images * (255 / 16)).round().astype(np.uint8)
    return ImageSet(labels=bunch.target.astype(np.int64), images=images)


@pytest.fixture
def make_tlbench_host():
    """``make_tlbench_host(*plugins, builtins=True, entrypoints=False, strict=True)``: a fresh
    plugin host with ``plugins`` registered, for this test only."""
    return make_host


@pytest.fixture
def tlbench_host() -> PluginHost:
    """A fresh host with the built-in plugins only."""
    return make_host()


@pytest.fixture
def tlbench_run(tmp_path):
    """``tlbench_run(suite, plugins=(), **options) -> records``: ``run_tiny_suite`` in this
    test's ``tmp_path``."""

    def run(suite, plugins=(), **options):
        return run_tiny_suite(tmp_path, suite, plugins, **options)

    return run


@pytest.fixture(scope="session")
def tlbench_digits_images():
    """scikit-learn's 1797 handwritten digits as a uint8 ``ImageSet`` (8x8), shared by the session."""
    return load_digits_images()


@pytest.fixture(scope="session")
def tlbench_digits_target(tlbench_digits_images):
    """The digits as a ``TargetData`` named ``digits``, without a test split."""
    import hashlib

    from tlbench.components import TargetData

    images = tlbench_digits_images
    digest = hashlib.sha256(images.images.tobytes() + images.labels.tobytes())
    return TargetData(
        name="digits",
        class_names=tuple(str(d) for d in range(10)),
        train=images,
        test=None,
        fingerprint=digest.hexdigest(),
        card={"source": "sklearn.datasets.load_digits"},
    )
