"""Shared fixtures. Every test runs offline; caches go to a per-session temporary directory so
tests share converted weights and features with each other but never with the user's cache. The
directory is removed when the session ends. Helpers that several test modules share (a tiny suite
over a cheap real plugin, a run request, the CLI) are in ``helpers.py``."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

# Made at import, before any test module imports tlbench, so every cache a test or a child
# process opens lands here; unless the caller chose a cache of their own.
_SESSION_CACHE: Path | None = None
if "TLBENCH_CACHE" not in os.environ:
    _SESSION_CACHE = Path(tempfile.mkdtemp(prefix="tlbench-test-cache-"))
    os.environ["TLBENCH_CACHE"] = str(_SESSION_CACHE)
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_unconfigure(config) -> None:
    if _SESSION_CACHE is not None:
        shutil.rmtree(_SESSION_CACHE, ignore_errors=True)


REPO = Path(__file__).resolve().parent.parent

# tlbench's test kit is opt-in (no pytest11 entry point): a project loads it like this.
pytest_plugins = ["tlbench.testing"]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def host():
    """The real plugin host: built-ins plus installed entry points."""
    from tlbench.plugins import load_plugins

    return load_plugins()


@pytest.fixture
def write_suite(tmp_path):
    """Write a suite file from TOML text and return its path."""

    def write(text: str, name: str = "suite.toml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


LITE0_PX = 32


@pytest.fixture(scope="session")
def lite0(tmp_path_factory):
    """The packaged ImageNet efficientnet-lite0 at 32 px (engine and strategy tests share it)."""
    from tlbench.builtin.model_sources import PACKAGED, packaged_model
    from tlbench.cache import Cache
    from tlbench.components import BuildContext

    cache = Cache(tmp_path_factory.mktemp("weights"))
    return packaged_model(
        PACKAGED["efficientnet_lite0.in1k"],
        None,
        {"input_size": LITE0_PX},
        BuildContext(cache=cache, device="cpu"),
    )


@pytest.fixture(scope="session")
def digits_data(lite0, tmp_path_factory):
    """Real digits, 200 train / 100 val / 200 test, prepared for ``lite0``."""
    from tlbench.cache import Cache
    from tlbench.components import BuildContext
    from tlbench.data import prepare
    from tlbench.datasetlib.local import digits
    from tlbench.specs import COMMON_OPTIONS, resolve_options

    cache = Cache(tmp_path_factory.mktemp("data"))
    target = digits(None, {}, BuildContext(cache=cache, device="cpu"))
    options = resolve_options(
        COMMON_OPTIONS["dataset"], {"train_size": 200, "val_size": 100, "test_size": 200}
    )
    return prepare(
        target,
        lite0,
        options,
        {"input_size": LITE0_PX, "input_adaptation": "replicate"},
        0,
        cache,
    )
