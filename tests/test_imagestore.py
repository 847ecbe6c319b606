"""Decoded and preprocessed images live in on-disk stores read by row: same bytes, same
fingerprints, same batches as arrays held in memory, and one store shared by every seed."""

import hashlib
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from tlbench.cache import Cache
from tlbench.components import ImageSet, SourceModel, TargetData
from tlbench.data import prepare
from tlbench.datasetlib import common
from tlbench.datasetlib.common import array_fingerprint, decode_files
from tlbench.imagestore import ImageStore, StoreWriter


def source(size=24) -> SourceModel:
    config = {
        "input_size": (3, size, size),
        "interpolation": "bilinear",
        "crop_pct": 0.875,
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
        "crop_mode": "center",
    }
    return SourceModel(
        name="cfg", arch="none", weights="none", fingerprint="none", data_config=config, build=None
    )


@pytest.fixture
def folder(tmp_path):
    """40 real-looking RGB JPEGs of one size, 4 classes."""
    rng = np.random.default_rng(0)
    paths, labels = [], []
    grid = np.linspace(0, 255, 32)
    for i in range(40):
        base = np.add.outer(grid, grid * (i % 5) / 5) / 2
        image = np.stack([base, base[::-1], rng.uniform(0, 255, (32, 32))], -1).astype(np.uint8)
        path = tmp_path / "jpg" / f"c{i % 4}" / f"{i:03d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path, quality=90)
        paths.append(path)
        labels.append(i % 4)
    return paths, labels


def test_a_decoded_folder_is_a_store_with_the_bytes_and_fingerprint_of_the_stacked_array(
    folder, tmp_path
):
    paths, labels = folder
    decoded = decode_files(paths, labels, store_dir=tmp_path / "decoded")
    store = decoded.imageset.images
    stacked = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])
    assert isinstance(store, ImageStore) and store.shape == stacked.shape
    assert np.array_equal(store[:], stacked)
    assert np.array_equal(store[[7, 2, 30]], stacked[[7, 2, 30]])
    assert np.array_equal(store[5], stacked[5])
    in_memory = ImageSet(labels=decoded.imageset.labels, images=stacked)
    # the fingerprint keys every cache entry: hashing block by block keeps its value
    assert array_fingerprint("f", ["a"], decoded.imageset) == array_fingerprint(
        "f", ["a"], in_memory
    )
    assert store.sha256() == hashlib.sha256(stacked.tobytes()).hexdigest()


def test_a_store_pickles_as_its_path_so_workers_share_the_file(folder, tmp_path):
    paths, labels = folder
    store = decode_files(paths, labels, store_dir=tmp_path / "decoded").imageset.images
    blob = pickle.dumps(store)
    assert len(blob) < 500 and np.array_equal(pickle.loads(blob)[3], store[3])


def test_a_decoded_store_is_reused_until_a_file_changes(folder, tmp_path, monkeypatch):
    paths, labels = folder
    decoded_files = []
    original = common.load_array
    monkeypatch.setattr(
        common, "load_array", lambda path, mode: decoded_files.append(path) or original(path, mode)
    )
    first = decode_files(paths, labels, store_dir=tmp_path / "decoded")
    assert len(decoded_files) == len(paths)
    again = decode_files(paths, labels, store_dir=tmp_path / "decoded")
    assert len(decoded_files) == len(paths)  # read back, not decoded again
    assert np.array_equal(again.imageset.images[:], first.imageset.images[:])
    Image.open(paths[0]).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(paths[0])
    changed = decode_files(paths, labels, store_dir=tmp_path / "decoded")
    assert len(decoded_files) == 2 * len(paths)
    assert not np.array_equal(changed.imageset.images[0], first.imageset.images[0])


def test_batches_and_features_from_a_store_equal_the_in_memory_path_bit_for_bit(folder, tmp_path):
    paths, labels = folder
    imageset = decode_files(paths, labels, store_dir=tmp_path / "decoded").imageset
    in_memory = ImageSet(labels=imageset.labels, images=np.asarray(imageset.images))
    targets = [
        TargetData("f", tuple("abcd"), s, None, fingerprint=f"f-{i}")
        for i, s in enumerate((imageset, in_memory))
    ]
    datas = [
        prepare(t, source(), {}, {}, seed=0, cache=Cache(tmp_path / f"cache{i}"))
        for i, t in enumerate(targets)
    ]
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten())
    for split in ("train", "val", "test", "trainval"):
        ours, theirs = (torch.cat([x for x, _ in d.batches(split, 7)]) for d in datas)
        assert torch.equal(ours, theirs)
        with torch.no_grad():
            assert torch.equal(net(ours), net(theirs))
    augmented = [
        torch.cat([x for x, _ in d.batches("train", 8, augment=True, seed=3)]) for d in datas
    ]
    assert torch.equal(*augmented)


def test_augmented_batches_from_persistent_workers_equal_the_main_process(
    folder, tmp_path, monkeypatch
):
    paths, labels = folder
    imageset = decode_files(paths, labels, store_dir=tmp_path / "decoded").imageset
    target = TargetData("f", tuple("abcd"), imageset, None, fingerprint="f")

    def passes(workers: str):
        monkeypatch.setenv("TLBENCH_LOADER_WORKERS", workers)
        data = prepare(target, source(), {}, {}, seed=0, cache=Cache(tmp_path / "cache"))
        out = [
            torch.cat([x for x, _ in data.batches("train", 8, augment=True, shuffle=True, seed=s)])
            for s in (1, 2)
        ]
        return data, out

    data, with_workers = passes("1")
    assert len(data._loaders) == 1  # one loader, its worker kept across both passes
    _, main_process = passes("0")
    assert all(torch.equal(a, b) for a, b in zip(with_workers, main_process, strict=True))
    assert not torch.equal(*with_workers)  # each pass has its own order and randomness


def test_a_writer_that_fails_leaves_no_store(tmp_path):
    writer = StoreWriter(tmp_path / "s.u8", (2, 2))
    writer.append(np.zeros((3, 2, 2), np.uint8))
    writer.abort()
    assert list(tmp_path.iterdir()) == []
