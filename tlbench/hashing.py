"""Content hashes: the one definition of what makes two inputs "the same" for cache keys,
config hashes and suite versions."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any


def stable_hash(parts: Any) -> str:
    """sha256 of a JSON rendering with sorted keys: equal inputs give equal keys across runs."""
    blob = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def file_sha256(path: os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()
