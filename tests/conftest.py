"""Shared fixtures. Every test runs offline; caches go to a per-session temporary directory so
tests share converted weights and features with each other but never with the user's cache."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

_SESSION_CACHE = Path(tempfile.mkdtemp(prefix="tlbench-test-cache-"))
os.environ.setdefault("TLBENCH_CACHE", str(_SESSION_CACHE))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent


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
