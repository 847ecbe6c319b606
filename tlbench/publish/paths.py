"""Where each page of the site lives, relative to the site root, and links between pages.

Every link is relative, so the site works from disk (``file://``) and from any folder of any
static host. File names come from ids through ``slug``: readable, and made unique by a short
hash whenever the id had to be changed to become a file name.
"""

from __future__ import annotations

import hashlib
import posixpath
import re

ASSETS = "assets"


def slug(text: str) -> str:
    """``digits`` -> ``digits``; ``timm:ResNet 50`` -> ``timm-resnet-50-3f2a1c``.

    One id, one name: an id is kept only when it is already a plain name that does not end
    like a hash suffix; every other id gets the hash of its exact text, so ``Pixels`` and
    ``pixels-48b027`` can never share a file (``_Writer`` still refuses a second page of the
    same name, should two hashes ever collide).
    """
    cleaned = re.sub(r"[^a-z0-9.-]+", "-", text.lower()).strip("-.")[:60] or "x"
    if cleaned != text or _HASHED.search(text):
        cleaned += "-" + hashlib.sha256(text.encode()).hexdigest()[:6]
    return cleaned


_HASHED = re.compile(r"-[0-9a-f]{6}$")


def relative(page: str, target: str) -> str:
    """The link from ``page`` to ``target`` (both relative to the site root, ``#`` allowed)."""
    path, _, fragment = target.partition("#")
    start = posixpath.dirname(page) or "."
    link = posixpath.relpath(path, start) if path else ""
    return link + (f"#{fragment}" if fragment else "")


def suite_dir(suite: str) -> str:
    return f"suites/{slug(suite)}"


def suite_index_path(suite: str) -> str:
    """The suite's default leaderboard."""
    return f"{suite_dir(suite)}/index.html"


def board_path(suite: str, strategy_key: str, default: bool) -> str:
    name = "index" if default else f"strategy-{slug(strategy_key)}"
    return f"{suite_dir(suite)}/{name}.html"


def board_csv_path(suite: str, strategy_key: str) -> str:
    return f"{suite_dir(suite)}/leaderboard-{slug(strategy_key)}.csv"


def cell_path(suite: str, model_key: str, dataset_key: str, strategy_key: str) -> str:
    return f"{suite_dir(suite)}/cells/{slug(f'{model_key}_{dataset_key}_{strategy_key}')}.html"


def model_path(suite: str, model_id: str) -> str:
    return f"{suite_dir(suite)}/models/{slug(model_id)}.html"


def dataset_path(suite: str, dataset_id: str) -> str:
    return f"{suite_dir(suite)}/datasets/{slug(dataset_id)}.html"


def run_path(label: str) -> str:
    return f"runs/{slug(label)}.html"
