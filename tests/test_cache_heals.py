"""The cache holds up: a damaged, truncated or undecodable entry, or one that is not a regular
file, is discarded with one warning and recomputed, under every kind of entry; a full disk
never fails the work; a size cap evicts the least recently used entries; stale lock files go;
the cache commands stay inside the cache and answer odd paths in one line."""

from __future__ import annotations

import errno
import json
import os
import time
import warnings
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from tlbench.cache import Cache, parse_size
from tlbench.safeio import TlbenchWarning

# Every namespace the package stores through ``get_or_compute``: features and prefix bank parts,
# probes, converted weights, self-pretrained checkpoints, source logits.
KINDS = ("features", "prefix", "probe", "weights", "self-pretrained", "source-logits")


def _value():
    return {"value": torch.arange(12, dtype=torch.float32).reshape(3, 4)}


def _cached(cache: Cache, namespace: str, calls: list, key=None):
    def compute():
        calls.append(1)
        return _value()

    return cache.get_or_compute(namespace, key or {"k": 1}, compute)


def _tlbench_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, TlbenchWarning)]


def _entry(tmp_path, namespace, suffix=".pt"):
    return next((tmp_path / namespace).glob(f"*/*{suffix}"))


DAMAGES = {
    "one flipped byte": lambda p: p.write_bytes(_flip(p.read_bytes())),
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "empty": lambda p: p.write_bytes(b""),
    "a link to /dev/zero": lambda p: (p.unlink(), p.symlink_to("/dev/zero")),
    "a directory": lambda p: (p.unlink(), p.mkdir()),
}


def _flip(blob: bytes) -> bytes:
    data = bytearray(blob)
    data[len(data) // 2] ^= 0xFF
    return bytes(data)


@pytest.mark.parametrize("namespace", KINDS)
@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_entry_of_every_kind_is_discarded_and_recomputed_with_one_warning(
    tmp_path, namespace, damage
):
    calls: list = []
    _cached(Cache(tmp_path), namespace, calls)
    payload = _entry(tmp_path, namespace)
    if damage == "a directory":
        payload = payload.with_suffix(".json")  # the metadata beside it, this time
    DAMAGES[damage](payload)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = _cached(Cache(tmp_path), namespace, calls)
    assert len(calls) == 2 and torch.equal(value["value"], _value()["value"])
    lines = _tlbench_warnings(caught)
    assert len(lines) == 1 and "discarded and recomputed" in lines[0], lines
    again: list = []
    _cached(Cache(tmp_path), namespace, again)
    assert again == [], "the recomputed entry is stored again and read back"


def test_the_metadata_as_a_link_to_dev_zero_is_refused_not_read(tmp_path):
    calls: list = []
    _cached(Cache(tmp_path), "features", calls)
    meta = _entry(tmp_path, "features", ".json")
    meta.unlink()
    meta.symlink_to("/dev/zero")
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        _cached(Cache(tmp_path), "features", calls)
    assert len(calls) == 2 and not meta.is_symlink()


def test_a_hit_is_trusted_by_size_and_time_without_hashing(tmp_path, monkeypatch):
    import tlbench.cache as cache_module

    _cached(Cache(tmp_path), "features", [])
    hashed = []
    original = cache_module.file_sha256
    monkeypatch.setattr(cache_module, "file_sha256", lambda p: hashed.append(p) or original(p))
    _cached(Cache(tmp_path), "features", [])
    assert hashed == [], "an untouched entry is not hashed on read"
    payload = _entry(tmp_path, "features")
    os.utime(payload, ns=(time.time_ns(), time.time_ns() + 10**9))  # touched, same bytes
    calls: list = []
    _cached(Cache(tmp_path), "features", calls)
    assert len(hashed) == 1 and calls == [], "a touched entry is hashed once, and kept"
    _cached(Cache(tmp_path), "features", calls)
    assert len(hashed) == 1, "its new time was recorded"


def test_an_undecodable_pool_index_is_discarded_and_its_features_recomputed(
    lite0, digits_data, tmp_path
):
    from tlbench.engine.features import Reuse, extract_features

    def features(cache):
        reuse = Reuse()
        feats, _ = extract_features(
            lambda: lite0.build(num_classes=0, in_chans=digits_data.in_chans, seed=0),
            digits_data,
            "val",
            device="cpu",
            precision="fp32",
            cache=cache,
            weights_fingerprint=lite0.fingerprint,
            reuse_out=reuse,
        )
        return feats, reuse

    first, _ = features(Cache(tmp_path))
    index = next((tmp_path / "features" / "pools").glob("*.jsonl"))
    index.write_bytes(b"\xff\xfe" + index.read_bytes()[2:])  # not UTF-8 any more
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again, reuse = features(Cache(tmp_path))
    assert torch.equal(first, again)
    assert any("pools" in line and "discarded" in line for line in _tlbench_warnings(caught))
    assert json.loads(index.read_text().splitlines()[0])["rows"], "the index was written anew"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, reuse = features(Cache(tmp_path))
    assert reuse.computed == 0 and not _tlbench_warnings(caught)


def test_a_pool_index_linked_to_dev_zero_is_refused_not_read(tmp_path):
    cache = Cache(tmp_path)
    index = tmp_path / "features" / "pools" / "abc.jsonl"
    index.parent.mkdir(parents=True)
    index.symlink_to("/dev/zero")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert cache.read_lines(index) == []
    assert not index.is_symlink() and len(_tlbench_warnings(caught)) == 1


def test_a_full_disk_never_fails_the_work(tmp_path, monkeypatch):
    """Storing the entry, its metadata and an index line all fail with ENOSPC: the value is
    still returned, with one warning per cause."""
    import tlbench.cache as cache_module

    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache_module, "_torch_save", full)
    monkeypatch.setattr(
        cache_module.Cache.get_or_compute,
        "__kwdefaults__",
        {"save": full, "load": cache_module._torch_load},
    )
    cache = Cache(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = _cached(cache, "features", [])
        monkeypatch.setattr("builtins.open", full)
        assert (
            cache.append_line(tmp_path / "features" / "pools" / "x.jsonl", {"rows": [1]}) is False
        )
    assert torch.equal(value["value"], _value()["value"])
    lines = _tlbench_warnings(caught)
    assert lines and all("cannot store entries" in line for line in lines)
    assert len(lines) == 1, "one warning for one cause"


def test_a_size_cap_evicts_the_least_recently_used_entries(tmp_path):
    cache = Cache(tmp_path)
    metas = {}
    for k in range(4):
        _cached(cache, "features", [], key={"k": k})
        metas[k] = next(
            p for p in (tmp_path / "features").glob("*/*.json") if f'"k": {k}' in p.read_text()
        )
        os.utime(metas[k], (1000 + k, 1000 + k))  # used in the order 0, 1, 2, 3
    _cached(Cache(tmp_path), "features", [], key={"k": 0})  # 0 is now the most recent
    kept = sum(m.stat().st_size + m.with_suffix(".pt").stat().st_size for m in (metas[0], metas[3]))
    done = Cache(tmp_path).prune(kept)
    assert done["evicted"] == 2 and done["bytes_after"] <= kept
    calls: list = []
    for k in (0, 3):
        _cached(Cache(tmp_path), "features", calls, key={"k": k})
    assert calls == [], "the two most recently used entries stayed"


def test_the_cap_from_the_environment_is_kept_as_entries_are_written(tmp_path, monkeypatch):
    _cached(Cache(tmp_path), "features", [], key={"k": "probe"})
    one = Cache(tmp_path).size()
    monkeypatch.setenv("TLBENCH_CACHE_MAX_SIZE", str(3 * one))
    cache = Cache(tmp_path)
    for k in range(6):
        _cached(cache, "features", [], key={"k": k})
    assert cache.size() <= 3 * one


def test_stale_lock_and_temporary_files_are_removed_and_held_locks_kept(tmp_path):
    from filelock import FileLock

    cache = Cache(tmp_path)
    _cached(cache, "features", [])
    folder = _entry(tmp_path, "features").parent
    stale, held, fresh = folder / "a.pt.lock", folder / "b.pt.lock", folder / "c.pt.lock"
    temporary = folder / ".tmp-xyz.pt"
    for path in (stale, held, fresh, temporary):
        path.write_text("")
    for path in (stale, held, temporary):
        os.utime(path, (time.time() - 7200, time.time() - 7200))
    with FileLock(str(held)):
        done = cache.prune()
    assert done["stale_removed"] == 2
    assert not stale.exists() and not temporary.exists() and held.exists() and fresh.exists()


def test_waiting_for_a_lock_is_logged_and_gives_up_after_the_timeout(tmp_path, monkeypatch, caplog):
    from filelock import FileLock

    monkeypatch.setenv("TLBENCH_LOCK_TIMEOUT", "0.05")
    cache = Cache(tmp_path)
    target = tmp_path / "features" / "ab" / "x.pt"
    target.parent.mkdir(parents=True)
    with FileLock(str(target) + ".lock"), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with caplog.at_level("INFO", logger="tlbench.cache"), cache.lock(target, "x") as held:
            assert held is False
    assert any("waiting for x" in r.getMessage() for r in caplog.records)
    assert any("still held" in line for line in _tlbench_warnings(caught))


@pytest.mark.parametrize("text, size", [("500M", 500 * 2**20), ("1.5G", 3 * 2**29), ("42", 42)])
def test_sizes_read_as_people_write_them(text, size):
    assert parse_size(text) == size


# -- the commands --------------------------------------------------------------------------------


def _invoke(*args):
    from tlbench.cli import cli

    return CliRunner().invoke(cli, list(args))


@pytest.mark.parametrize("name", ["../outside", "/abs/dir", "..", "features/../../x", "a/b"])
def test_cache_clear_refuses_a_name_that_is_not_inside_the_cache(tmp_path, name):
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "cache").mkdir()
    result = _invoke("cache", "clear", name, "--cache-dir", str(tmp_path / "cache"), "--yes")
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and "inside" in lines[0], result.output
    assert outside.exists()


def test_cache_clear_never_follows_a_namespace_link(tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "keep").write_text("x")
    root = tmp_path / "cache"
    root.mkdir()
    (root / "features").symlink_to(precious)
    result = _invoke("cache", "clear", "features", "--cache-dir", str(root), "--yes")
    assert result.exit_code == 2 and (precious / "keep").exists()
    assert _invoke("cache", "clear", "--cache-dir", str(root), "--yes").exit_code == 0
    assert (precious / "keep").exists()


@pytest.mark.parametrize("command", ["info", "clear"])
@pytest.mark.parametrize("where", ["a file", "/dev/null", "a link to /proc/self/status"])
def test_cache_commands_on_odd_paths_say_one_line(tmp_path, command, where):
    path = {"a file": tmp_path / "file", "/dev/null": "/dev/null"}.get(where, tmp_path / "link")
    if where == "a file":
        path.write_text("x")
    elif where.startswith("a link"):
        path.symlink_to("/proc/self/status")
    extra = ["--yes"] if command == "clear" else []
    result = _invoke("cache", command, "--cache-dir", str(path), *extra)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert "not a directory" in lines[0] and "Traceback" not in result.output


def test_cache_prune_command_evicts_down_to_the_size(tmp_path):
    for k in range(3):
        _cached(Cache(tmp_path), "features", [], key={"k": k})
    result = _invoke("cache", "prune", "--max-size", "1K", "--cache-dir", str(tmp_path))
    assert result.exit_code == 0 and "3 entries evicted" in result.output, result.output
    bad = _invoke("cache", "prune", "--max-size", "lots", "--cache-dir", str(tmp_path))
    assert bad.exit_code == 2 and "expected a size" in bad.output


@pytest.mark.parametrize("which", ["store", "mask"])
def test_a_prepared_image_store_that_is_not_a_regular_file_is_rebuilt_not_read(tmp_path, which):
    import numpy as np

    from tlbench.imagestore import mark_rows, open_sparse, rows_present, write_rows

    path = tmp_path / "prepared" / "abc.u8"
    store = open_sparse(path, (4, 1, 2, 2))
    write_rows(store, np.array([0, 1]), np.ones((2, 1, 2, 2), dtype=np.uint8))
    mark_rows(store, np.array([0, 1]))
    target = path if which == "store" else Path(f"{path}.rows")
    target.unlink()
    target.symlink_to("/dev/zero")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = open_sparse(path, (4, 1, 2, 2))
    assert not rows_present(again).any(), "every row is computed again"
    assert not target.is_symlink() and len(_tlbench_warnings(caught)) == 1
