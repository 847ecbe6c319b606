"""Image stores check their bytes: each row's checksum is recorded when it is written and
verified the first time a process opens the store, so a flipped byte (which keeps the file's
size and, here, its mtime) is found and the store rebuilt with one warning, instead of silently
feeding other pixels to every later cell."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from test_imagestore import source

from tlbench import imagestore
from tlbench.cache import Cache
from tlbench.components import TargetData
from tlbench.data import prepare
from tlbench.datasetlib import common
from tlbench.datasetlib.common import decode_files
from tlbench.safeio import TlbenchWarning


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(1)
    paths, labels = [], []
    for i in range(24):
        path = tmp_path / "jpg" / f"c{i % 3}" / f"{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(path)
        paths.append(path)
        labels.append(i % 3)
    return paths, labels


def flip_byte(path, offset: int) -> None:
    """Damage one byte in place, keeping the file's size and mtime."""
    info = os.stat(path)
    with open(path, "r+b") as fh:
        fh.seek(offset)
        value = fh.read(1)[0]
        fh.seek(offset)
        fh.write(bytes([value ^ 0x5A]))
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))


def new_process() -> None:
    """What a fresh process knows: no store verified yet, no warning given."""
    from tlbench import safeio

    imagestore._VERIFIED.clear()
    safeio._WARNED.clear()


def tlbench_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, TlbenchWarning)]


def test_a_corrupted_decoded_store_is_found_and_decoded_again_with_one_warning(
    folder, tmp_path, monkeypatch
):
    paths, labels = folder
    store_dir = tmp_path / "decoded"
    first = decode_files(paths, labels, store_dir=store_dir).imageset.images
    pristine = first[:]
    flip_byte(first.path, 5 * first.row_bytes + 17)  # row 5
    decoded = []
    original = common.load_array
    monkeypatch.setattr(common, "load_array", lambda p, m: decoded.append(p) or original(p, m))

    new_process()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = decode_files(paths, labels, store_dir=store_dir).imageset.images
        decode_files(paths, labels, store_dir=store_dir)  # same process: not checked again
    assert np.array_equal(again[:], pristine)
    assert len(decoded) == len(paths), "rebuilt once"
    (message,) = tlbench_warnings(caught)
    assert "1 of 24 rows differ from their checksum" in message and "decoded again" in message

    new_process()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        decode_files(paths, labels, store_dir=store_dir)
    assert len(decoded) == len(paths) and not tlbench_warnings(caught), "healthy: reused"


def test_a_store_is_verified_once_per_process(folder, tmp_path, monkeypatch):
    paths, labels = folder
    decode_files(paths, labels, store_dir=tmp_path / "decoded")
    checked = []
    real = imagestore.verify
    monkeypatch.setattr(imagestore, "verify", lambda *a: checked.append(1) or real(*a))
    new_process()
    for _ in range(3):
        decode_files(paths, labels, store_dir=tmp_path / "decoded")
    assert checked == [1]


def test_a_store_written_before_checksums_adopts_them_without_a_warning(folder, tmp_path):
    paths, labels = folder
    store = decode_files(paths, labels, store_dir=tmp_path / "decoded").imageset.images
    crc = imagestore._crc_path(store.path)
    recorded = crc.read_bytes()
    crc.unlink()
    new_process()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        decode_files(paths, labels, store_dir=tmp_path / "decoded")
    assert not tlbench_warnings(caught) and crc.read_bytes() == recorded


def test_a_corrupted_prepared_store_preprocesses_its_bad_rows_again_with_one_warning(
    folder, tmp_path, monkeypatch
):
    import tlbench.data as data_module

    paths, labels = folder
    imageset = decode_files(paths, labels, store_dir=tmp_path / "decoded").imageset
    target = TargetData("f", tuple("abc"), imageset, None, fingerprint="f")
    cache = Cache(tmp_path / "cache")

    def fresh():
        return prepare(target, source(16), {}, {}, seed=0, cache=cache)

    data = fresh()
    pristine = {split: data.stored(split) for split in ("train", "test")}
    store = data.store("train")
    row = int(data.indices("train")[2])
    flip_byte(store.path, row * store.row_bytes + 3)

    preprocessed = []
    real = data_module.PreparedData._preprocess
    monkeypatch.setattr(
        data_module.PreparedData,
        "_preprocess",
        lambda self, image_set, rows: (
            preprocessed.append(rows.tolist()) or real(self, image_set, rows)
        ),
    )
    new_process()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = fresh()
        for split in ("train", "test"):
            assert torch.equal(again.stored(split), pristine[split])
        assert torch.equal(fresh().stored("train"), pristine["train"])
    assert preprocessed == [[row]], "only the damaged row is preprocessed again"
    (message,) = tlbench_warnings(caught)
    assert "1 of 24 rows differ from their checksum" in message


def test_checksums_follow_rows_written_on_demand(tmp_path):
    store = imagestore.open_sparse(tmp_path / "s.u8", (6, 2, 3))
    values = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    imagestore.write_rows(store, np.array([4, 1]), values)
    imagestore.mark_rows(store, np.array([4, 1]))
    present = imagestore.rows_present(store)
    assert imagestore.verify(store, present).tolist() == []
    flip_byte(store.path, 4 * store.row_bytes)
    assert imagestore.verify(store, present).tolist() == [4]


def test_a_store_larger_than_the_budget_is_checked_on_a_sample_of_rows(tmp_path, monkeypatch):
    writer = imagestore.StoreWriter(tmp_path / "big.u8", (4, 4))
    writer.append(np.arange(40 * 16, dtype=np.uint8).reshape(40, 4, 4))
    store = writer.close()
    checked = []
    real = imagestore.verify
    monkeypatch.setattr(
        imagestore, "verify", lambda s, wanted: checked.append(int(wanted.sum())) or real(s, wanted)
    )
    monkeypatch.setattr(imagestore, "VERIFY_BYTES", 10 * store.row_bytes)
    new_process()
    assert imagestore.verify_once(store).tolist() == []
    assert checked == [10]


def test_only_the_rows_asked_for_are_checked_and_a_short_file_fails_them(tmp_path):
    writer = imagestore.StoreWriter(tmp_path / "s.u8", (3, 3))
    writer.append(np.arange(10 * 9, dtype=np.uint8).reshape(10, 3, 3))
    store = writer.close()
    flip_byte(store.path, 5 * store.row_bytes)
    flip_byte(store.path, 7 * store.row_bytes + 8)
    wanted = np.zeros(10, bool)
    wanted[[1, 2, 3, 7, 9]] = True
    assert imagestore.verify(store, wanted).tolist() == [7]
    assert imagestore.verify(store).tolist() == [5, 7]
    with open(store.path, "r+b") as fh:
        fh.truncate(8 * store.row_bytes + 4)
    assert imagestore.verify(store, wanted).tolist() == [7, 9]
