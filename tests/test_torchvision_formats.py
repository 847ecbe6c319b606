"""Every torchvision adapter reads a miniature copy of its dataset, written in the dataset's
official on-disk format, through torchvision's own reader; a damaged copy fails with one line.

The miniatures hold real handwritten digits (scikit-learn's ``load_digits``) upscaled to RGB
images whose three channels differ, so a swapped axis or channel shows in the pixels.
"""

from __future__ import annotations

import functools
import hashlib
import json
import pickle
import re
import urllib.error
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torchvision.datasets as tvd
from PIL import Image

from tlbench.components import SourceModel
from tlbench.data import prepare
from tlbench.datasetlib import torchvision_sets
from tlbench.datasetlib.catalog import TV_SETS, tv_availability
from tlbench.errors import UserError
from tlbench.plugins import load_plugins

JPEG_MAX_ERROR = 8  # quality-100 JPEGs of these images are within 3 grey levels; other digits are ~28 away on average


# -- real images ---------------------------------------------------------------------------------


@functools.cache
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return np.round(bunch.images * 255 / 16).astype(np.uint8), bunch.target


def photo(index: int, size: int = 32, gray: bool = False) -> np.ndarray:
    """Digit ``index`` as a ``size`` x ``size`` RGB array with three different channels (or a
    grayscale one replicated to RGB, which is what torchvision's RGB loaders make of it)."""
    digit = np.kron(_digits()[0][index], np.ones((size // 8, size // 8), np.uint8))
    if gray:
        return np.repeat(digit[..., None], 3, axis=-1)
    return np.stack([digit, 255 - digit, digit.T], axis=-1)


class Draw:
    """Hands out distinct digit images of a requested digit."""

    def __init__(self):
        self.used = defaultdict(int)

    def __call__(self, digit: int) -> int:
        index = int(np.flatnonzero(_digits()[1] == digit)[self.used[digit]])
        self.used[digit] += 1
        return index


def save_jpeg(path: Path, pixels: np.ndarray, gray: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(pixels[..., 0] if gray else pixels)
    image.save(path, "JPEG", quality=100, subsampling=0)


# -- what a miniature should read back as -------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One image of an official split: its file (relative to root; None for array datasets),
    the pixels it must decode to, and its class name."""

    file: str | None
    pixels: np.ndarray
    label: str


@dataclass(frozen=True)
class Expected:
    class_names: tuple[str, ...]
    train: list[Row]
    test: list[Row] | None


def assert_split(imageset, rows: list[Row], class_names, root: Path) -> None:
    assert [class_names[y] for y in imageset.labels] == [r.label for r in rows]
    if rows[0].file is None:
        assert imageset.paths is None
        assert np.array_equal(imageset.images, np.stack([r.pixels for r in rows]))
        return
    files = [Path(p).relative_to(root).as_posix() for p in imageset.paths]
    assert files == [r.file for r in rows]
    for i, row in enumerate(rows):
        image = imageset.load(i)
        assert image.mode == "RGB"
        error = np.abs(np.asarray(image, dtype=np.int16) - row.pixels.astype(np.int16))
        assert error.max() <= JPEG_MAX_ERROR, row.file


# -- the official layouts, in miniature ---------------------------------------------------------


def _cifar_batch(rows: list[Row], label_key: str, names: list[str]) -> dict:
    """A batch as the CIFAR python pickles hold it: each row 1024 red, 1024 green, 1024 blue bytes."""
    data = np.stack([r.pixels for r in rows]).transpose(0, 3, 1, 2).reshape(len(rows), 3072)
    return {
        "batch_label": "miniature",
        label_key: [names.index(r.label) for r in rows],
        "data": data,
        "filenames": [f"image_{i}.png" for i in range(len(rows))],
    }


def _dump(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(payload, protocol=2))


def write_cifar10(root: Path) -> Expected:
    names = ["airplane", "automobile", "bird"]
    draw, folder, train = Draw(), root / "cifar-10-batches-py", []
    for b in range(1, 6):
        rows = [Row(None, photo(draw(d)), names[d]) for d in ((b + k) % 3 for k in range(3))]
        _dump(folder / f"data_batch_{b}", _cifar_batch(rows, "labels", names))
        train += rows
    test = [Row(None, photo(draw(d)), names[d]) for d in (2, 0, 1, 2, 0, 1)]
    _dump(folder / "test_batch", _cifar_batch(test, "labels", names))
    _dump(
        folder / "batches.meta",
        {"num_cases_per_batch": 3, "label_names": names, "num_vis": 3072},
    )
    return Expected(tuple(names), train, test)


def write_cifar100(root: Path) -> Expected:
    names = ["apple", "aquarium_fish", "baby"]
    draw, folder = Draw(), root / "cifar-100-python"
    splits = {}
    for split, per_class in (("train", 4), ("test", 2)):
        rows = [Row(None, photo(draw(d)), names[d]) for _ in range(per_class) for d in (1, 0, 2)]
        batch = _cifar_batch(rows, "fine_labels", names)
        batch["coarse_labels"] = [0 for _ in rows]
        _dump(folder / split, batch)
        splits[split] = rows
    _dump(
        folder / "meta",
        {"fine_label_names": names, "coarse_label_names": ["fruit_and_vegetables"]},
    )
    return Expected(tuple(names), splits["train"], splits["test"])


def write_svhn(root: Path) -> Expected:
    draw, splits = Draw(), {}
    root.mkdir(parents=True, exist_ok=True)
    for split, per_class in (("train", 3), ("test", 2)):
        rows = [Row(None, photo(draw(d)), str(d)) for _ in range(per_class) for d in (0, 1, 2)]
        scipy.io.savemat(
            root / f"{split}_32x32.mat",
            {
                "X": np.stack([r.pixels for r in rows], axis=-1),  # (32, 32, 3, N)
                "y": np.array([[10 if r.label == "0" else int(r.label)] for r in rows], np.uint8),
            },
        )
        splits[split] = rows
    return Expected(tuple(str(d) for d in range(10)), splits["train"], splits["test"])


FLOWERS = {1: "pink primrose", 52: "wild pansy", 77: "passion flower"}  # official 1-based labels


def write_flowers102(root: Path, move_to_test: tuple[int, ...] = ()) -> Expected:
    base, draw = root / "flowers-102", Draw()
    labels, ids = [], {"trnid": [], "valid": [], "tstid": []}
    rows = {}
    for k in range(5):
        for d, official in enumerate(FLOWERS):
            image_id = len(labels) + 1
            labels.append(official)
            file = f"flowers-102/jpg/image_{image_id:05d}.jpg"
            rows[image_id] = Row(file, photo(draw(d)), FLOWERS[official])
            save_jpeg(root / file, rows[image_id].pixels)
            split = ("trnid", "trnid", "valid", "tstid", "tstid")[k]
            ids["tstid" if image_id in move_to_test else split].append(image_id)
    ids = {key: list(reversed(v)) for key, v in ids.items()}  # torchvision keeps setid's order
    scipy.io.savemat(base / "imagelabels.mat", {"labels": np.array([labels], np.uint8)})
    scipy.io.savemat(base / "setid.mat", {k: np.array([v], np.uint16) for k, v in ids.items()})
    return Expected(
        tuple(tvd.Flowers102.classes),
        [rows[i] for i in ids["trnid"] + ids["valid"]],
        [rows[i] for i in ids["tstid"]],
    )


# (image-name breed, official class id, species 1 = cat / 2 = dog, breed id within species)
PETS = (("Abyssinian", 1, 1, 1), ("american_bulldog", 2, 2, 1), ("Bengal", 6, 1, 2))


def write_pets(root: Path) -> Expected:
    base, draw = root / "oxford-iiit-pet", Draw()
    splits = {"trainval": [], "test": []}
    lines = {"trainval": [], "test": []}
    for k in range(5):
        for d, (breed, class_id, species, breed_id) in enumerate(PETS):
            image_id = f"{breed}_{k + 1}"
            gray = breed == "Bengal" and k == 0  # Pets holds some grayscale JPEGs
            row = Row(
                f"oxford-iiit-pet/images/{image_id}.jpg",
                photo(draw(d), gray=gray),
                torchvision_sets.pet_breed(image_id),
            )
            save_jpeg(root / row.file, row.pixels, gray=gray)
            split = "trainval" if k < 3 else "test"
            splits[split].append(row)
            lines[split].append(f"{image_id} {class_id} {species} {breed_id}")
    (base / "annotations").mkdir(parents=True)
    for split, entries in lines.items():
        (base / "annotations" / f"{split}.txt").write_text("\n".join(entries) + "\n")
    return Expected(
        ("Abyssinian", "American Bulldog", "Bengal"), splits["trainval"], splits["test"]
    )


def write_dtd(root: Path, skip: dict[str, str] | None = None) -> Expected:
    """``skip`` maps a split to a class left out of its label file (a trimmed copy)."""
    data_dir, draw = root / "dtd" / "dtd", Draw()
    names = ["banded", "dotted", "zigzagged"]
    lines, rows = defaultdict(list), defaultdict(list)
    for d, name in enumerate(names):
        for k in range(6):
            split = ("train", "val", "test")[k % 3]
            if (skip or {}).get(split) == name:
                continue
            file = f"{name}/{name}_{k + 1:04d}.jpg"
            row = Row(f"dtd/dtd/images/{file}", photo(draw(d)), name)
            save_jpeg(root / row.file, row.pixels)
            lines[split].append(file)
            rows[split].append(row)
    (data_dir / "labels").mkdir(parents=True)
    for split in ("train", "val", "test"):
        (data_dir / "labels" / f"{split}1.txt").write_text("\n".join(lines[split]) + "\n")
    return Expected(tuple(names), rows["train"] + rows["val"], rows["test"])


def write_eurosat(root: Path) -> Expected:
    names, draw, rows = ["AnnualCrop", "Forest", "River"], Draw(), []
    for d, name in enumerate(names):
        for k in range(5):
            row = Row(f"eurosat/2750/{name}/{name}_{k + 1}.jpg", photo(draw(d), 64), name)
            save_jpeg(root / row.file, row.pixels)
            rows.append(row)
    return Expected(tuple(names), rows, None)


def write_food101(root: Path) -> Expected:
    names, draw = ["apple_pie", "baby_back_ribs", "baklava"], Draw()
    meta, rows = {"train": {}, "test": {}}, {"train": [], "test": []}
    for d, name in enumerate(names):
        for k in range(5):
            split = "train" if k < 3 else "test"
            image_id = f"{name}/{100000 + 7919 * k + d}"
            row = Row(f"food-101/images/{image_id}.jpg", photo(draw(d)), name)
            save_jpeg(root / row.file, row.pixels)
            meta[split].setdefault(name, []).append(image_id)
            rows[split].append(row)
    folder = root / "food-101" / "meta"
    folder.mkdir(parents=True)
    for split in meta:
        (folder / f"{split}.json").write_text(json.dumps(meta[split]))
        (folder / f"{split}.txt").write_text("\n".join(sum(meta[split].values(), [])) + "\n")
    (folder / "classes.txt").write_text("\n".join(names) + "\n")
    (folder / "labels.txt").write_text("Apple pie\nBaby back ribs\nBaklava\n")
    return Expected(tuple(names), rows["train"], rows["test"])


def write_caltech101(root: Path) -> Expected:
    folder, draw, rows = root / "caltech101" / "101_ObjectCategories", Draw(), []
    for k in range(2):  # not a class: torchvision drops it
        save_jpeg(folder / "BACKGROUND_Google" / f"image_{k + 1:04d}.jpg", photo(draw(9)))
    for d, name in enumerate(["Faces_easy", "accordion", "airplanes"]):
        for k in range(5):
            gray = name == "accordion" and k == 1  # Caltech-101 holds some grayscale JPEGs
            row = Row(
                f"caltech101/101_ObjectCategories/{name}/image_{k + 1:04d}.jpg",
                photo(draw(d), gray=gray),
                name,
            )
            save_jpeg(root / row.file, row.pixels, gray=gray)
            rows.append(row)
    return Expected(("Faces_easy", "accordion", "airplanes"), rows, None)


WRITERS = {
    "cifar10": write_cifar10,
    "cifar100": write_cifar100,
    "svhn": write_svhn,
    "flowers102": write_flowers102,
    "pets": write_pets,
    "dtd": write_dtd,
    "eurosat": write_eurosat,
    "food101": write_food101,
    "caltech101": write_caltech101,
}


def trust_checksums(monkeypatch, root: Path) -> None:
    """torchvision checks CIFAR's pickles, SVHN's .mat files and Flowers102's imagelabels.mat and
    setid.mat against the md5 of the official downloads, which only the official bytes match.
    Point its checksum tables at the miniature's files: the check itself still runs, so a file
    damaged after this call still fails it."""

    def md5(path: Path) -> str:
        return hashlib.md5(path.read_bytes()).hexdigest() if path.is_file() else "absent"

    for cls in (tvd.CIFAR10, tvd.CIFAR100):
        folder = root / cls.base_folder
        for attr in ("train_list", "test_list"):
            listed = [[file, md5(folder / file)] for file, _ in getattr(cls, attr)]
            monkeypatch.setattr(cls, attr, listed)
        monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5(folder / cls.meta["filename"])})
    svhn = {s: [url, f, md5(root / f)] for s, (url, f, _) in tvd.SVHN.split_list.items()}
    monkeypatch.setattr(tvd.SVHN, "split_list", svhn)
    flowers = {
        k: (f, md5(root / "flowers-102" / f)) for k, (f, _) in tvd.Flowers102._file_dict.items()
    }
    monkeypatch.setattr(tvd.Flowers102, "_file_dict", flowers)


@pytest.fixture(autouse=True)
def fresh_reads():
    """The factories memoise per process; these tests rewrite files under one root."""
    torchvision_sets.read_dataset.cache_clear()
    yield
    torchvision_sets.read_dataset.cache_clear()


def load(name: str, root: Path, **options):
    torchvision_sets.read_dataset.cache_clear()
    return getattr(torchvision_sets, name)(None, {"root": str(root), **options})


SOURCE = SourceModel(
    name="cfg",
    arch="none",
    weights="none",
    fingerprint="none",
    data_config={"input_size": (3, 16, 16), "interpolation": "bilinear", "crop_pct": 1.0},
    build=None,
)


# -- every adapter reads its official layout ----------------------------------------------------


def test_every_registered_torchvision_dataset_has_a_miniature_here():
    assert set(WRITERS) == set(TV_SETS)


@pytest.mark.parametrize("name", list(WRITERS))
def test_adapter_reads_classes_splits_and_pixels_of_the_official_layout(
    name, tmp_path, monkeypatch
):
    expected = WRITERS[name](tmp_path)
    trust_checksums(monkeypatch, tmp_path)
    assert tv_availability(name, tmp_path) is True
    data = load(name, tmp_path)
    assert data.class_names == expected.class_names
    assert_split(data.train, expected.train, data.class_names, tmp_path)
    if expected.test is None:
        assert data.test is None
    else:
        assert_split(data.test, expected.test, data.class_names, tmp_path)
    test_size = None if expected.test is None else len(expected.test)
    assert data.card["splits"] == {"train": len(expected.train), "test": test_size}
    assert data.card["channels"] == 3 and data.card["root"] == str(tmp_path)


@pytest.mark.parametrize("name", list(WRITERS))
def test_registry_entry_prepares_a_split_whose_hash_is_stable_across_loads(
    name, tmp_path, monkeypatch
):
    expected = WRITERS[name](tmp_path)
    trust_checksums(monkeypatch, tmp_path)
    host = load_plugins(builtins=("tlbench.builtin.datasets",), load_entrypoints=False)
    entry, argument = host.registry.lookup("dataset", name)
    options = {"root": str(tmp_path)}
    assert entry.spec.availability(argument, options) is True

    def split_record():
        torchvision_sets.read_dataset.cache_clear()
        target = entry.spec.load_factory()(argument, options)
        return target, prepare(target, SOURCE, options, {}, seed=0, cache=None).split_record

    first_target, first = split_record()
    second_target, second = split_record()
    assert first["hash"] == second["hash"] and first_target.fingerprint == second_target.fingerprint
    assert first["test_from"] == ("train" if expected.test is None else "test")
    carved = first["sizes"]["test"] if expected.test is None else 0
    assert first["sizes"]["trainval"] + carved == len(expected.train)


def test_changing_the_official_split_file_changes_the_split_hash(tmp_path, monkeypatch):
    write_flowers102(tmp_path)
    trust_checksums(monkeypatch, tmp_path)
    before = prepare(load("flowers102", tmp_path), SOURCE, {}, {}, seed=0, cache=None)

    write_flowers102(tmp_path, move_to_test=(1,))  # setid.mat moves image 1 from train to test
    trust_checksums(monkeypatch, tmp_path)
    after = prepare(load("flowers102", tmp_path), SOURCE, {}, {}, seed=0, cache=None)
    assert after.split_record["sizes"]["test"] == before.split_record["sizes"]["test"] + 1
    assert after.split_record["hash"] != before.split_record["hash"]
    assert after.fingerprint("test") != before.fingerprint("test")


def test_svhn_label_ten_is_digit_zero(tmp_path, monkeypatch):
    write_svhn(tmp_path)
    trust_checksums(monkeypatch, tmp_path)
    data = load("svhn", tmp_path)
    zeros = data.train.images[data.train.labels == 0]
    assert len(zeros) == 3 and data.class_names[0] == "0"
    assert all(
        any(np.array_equal(z, photo(i)) for z in zeros)
        for i in np.flatnonzero(_digits()[1] == 0)[:3]
    )


def test_flowers_train_and_val_form_the_pool_with_torchvisions_102_names(tmp_path, monkeypatch):
    write_flowers102(tmp_path)
    trust_checksums(monkeypatch, tmp_path)
    data = load("flowers102", tmp_path)
    assert data.num_classes == 102 and len(data.train) == 9 and len(data.test) == 6
    assert {data.class_names[y] for y in data.train.labels} == set(FLOWERS.values())


def test_pets_breed_names_follow_the_official_class_ids_even_with_gaps(tmp_path):
    """A copy holding breeds 1, 2 and 6 numbers them 0, 1, 2 with their own names: torchvision
    names the classes present but keeps the official ids, so label 5 would name nothing."""
    write_pets(tmp_path)
    data = load("pets", tmp_path)
    assert data.class_names == ("Abyssinian", "American Bulldog", "Bengal")
    assert sorted(set(data.train.labels.tolist())) == [0, 1, 2]
    assert sorted(set(data.test.labels.tolist())) == [0, 1, 2]


def test_dtd_labels_stay_aligned_when_a_split_file_lacks_a_class(tmp_path):
    """torchvision numbers DTD's classes per split file; a val file without 'dotted' would
    shift 'zigzagged' onto 'dotted'."""
    expected = write_dtd(tmp_path, skip={"val": "dotted"})
    data = load("dtd", tmp_path)
    assert data.class_names == ("banded", "dotted", "zigzagged")
    assert_split(data.train, expected.train, data.class_names, tmp_path)
    assert_split(data.test, expected.test, data.class_names, tmp_path)


def test_caltech_drops_background_and_reads_grayscale_as_rgb(tmp_path):
    write_caltech101(tmp_path)
    data = load("caltech101", tmp_path)
    assert "BACKGROUND_Google" not in data.class_names and len(data.train) == 15
    gray = data.train.load(6)  # accordion/image_0002.jpg was saved as a grayscale JPEG
    pixels = np.asarray(gray)
    assert gray.mode == "RGB" and np.array_equal(pixels[..., 0], pixels[..., 2])


# -- failure stories: one line naming the dataset, the file and what to do -----------------------


def _one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def test_damaged_cifar_batch_is_named_with_the_download_option(tmp_path, monkeypatch):
    write_cifar10(tmp_path)
    trust_checksums(monkeypatch, tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:1000])
    with pytest.raises(UserError) as excinfo:
        load("cifar10", tmp_path)
    message = _one_line(excinfo)
    assert message.startswith("dataset 'cifar10': ")
    assert f"{batch} is missing or damaged" in message and "download = true" in message


def test_cifar_batch_that_is_not_a_pickle_names_the_reader_error(tmp_path, monkeypatch):
    write_cifar100(tmp_path)
    (tmp_path / "cifar-100-python" / "test").write_bytes(b"not a pickle at all")
    trust_checksums(monkeypatch, tmp_path)  # the checksum passes: only the reader can object
    with pytest.raises(UserError) as excinfo:
        load("cifar100", tmp_path)
    message = _one_line(excinfo)
    assert f"dataset 'cifar100': torchvision cannot read the files under {tmp_path} (" in message
    assert "Unpickling" in message and "download = true" in message


def test_truncated_svhn_mat_is_named(tmp_path, monkeypatch):
    write_svhn(tmp_path)
    trust_checksums(monkeypatch, tmp_path)
    mat = tmp_path / "test_32x32.mat"
    mat.write_bytes(mat.read_bytes()[:300])
    with pytest.raises(UserError) as excinfo:
        load("svhn", tmp_path)
    assert f"dataset 'svhn': {mat} is missing or damaged" in _one_line(excinfo)

    trust_checksums(monkeypatch, tmp_path)  # even a truncated file that passed would be one line
    with pytest.raises(UserError) as excinfo:
        load("svhn", tmp_path)
    assert "dataset 'svhn': torchvision cannot read the files under" in _one_line(excinfo)


def test_failed_download_says_how_to_fetch_on_a_connected_machine(tmp_path):
    offline = urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
    message = torchvision_sets.explain_failure(TV_SETS["food101"], tmp_path, True, offline)
    assert message == (
        f"dataset 'food101': download into {tmp_path} failed (URLError: <urlopen error [Errno -3] "
        "Temporary failure in name resolution>); on a machine with internet, run once with "
        "download = true and copy root here"
    )


def test_missing_split_file_is_named_before_torchvision_runs(tmp_path, monkeypatch):
    write_flowers102(tmp_path)
    (tmp_path / "flowers-102" / "setid.mat").unlink()
    trust_checksums(monkeypatch, tmp_path)
    assert "no flowers-102/setid.mat" in tv_availability("flowers102", tmp_path)
    with pytest.raises(UserError) as excinfo:
        load("flowers102", tmp_path)
    assert _one_line(excinfo) == (
        f"dataset 'flowers102': not found in {tmp_path} (no flowers-102/setid.mat); "
        "set download = true or root"
    )


def test_caltech_without_its_background_folder_is_named(tmp_path):
    """torchvision removes BACKGROUND_Google by name and fails without it."""
    write_caltech101(tmp_path)
    background = tmp_path / "caltech101" / "101_ObjectCategories" / "BACKGROUND_Google"
    for image in background.iterdir():
        image.unlink()
    background.rmdir()
    with pytest.raises(UserError) as excinfo:
        load("caltech101", tmp_path)
    assert "(no caltech101/101_ObjectCategories/BACKGROUND_Google)" in _one_line(excinfo)


def test_missing_pets_split_file_with_download_names_the_file_not_the_network(tmp_path):
    """With the folders present torchvision skips the download and then misses test.txt."""
    write_pets(tmp_path)
    missing = tmp_path / "oxford-iiit-pet" / "annotations" / "test.txt"
    missing.unlink()
    with pytest.raises(UserError) as excinfo:
        load("pets", tmp_path, download=True)
    assert _one_line(excinfo).startswith(f"dataset 'pets': {missing} is missing; delete")


def test_image_named_by_the_split_file_but_absent_is_named_up_front(tmp_path):
    write_food101(tmp_path)
    absent = tmp_path / "food-101" / "images" / "baklava" / "100002.jpg"
    absent.unlink()
    with pytest.raises(UserError) as excinfo:
        load("food101", tmp_path)
    message = _one_line(excinfo)
    assert message.startswith("dataset 'food101': 1 image file(s) named by the official split")
    assert repr(str(absent)) in message


def test_stray_file_in_a_caltech_category_is_explained(tmp_path):
    write_caltech101(tmp_path)
    (tmp_path / "caltech101" / "101_ObjectCategories" / "accordion" / ".DS_Store").write_text("")
    with pytest.raises(UserError) as excinfo:
        load("caltech101", tmp_path)
    message = _one_line(excinfo)
    assert "accordion/image_0006.jpg" in message and "remove any file" in message


def test_image_that_fails_to_decode_names_dataset_and_file(tmp_path):
    write_dtd(tmp_path)
    broken = tmp_path / "dtd" / "dtd" / "images" / "dotted" / "dotted_0002.jpg"
    broken.write_bytes(broken.read_bytes()[:400])  # truncated: the header parses, decoding fails
    data = load("dtd", tmp_path)
    row = data.train.paths.index(str(broken))
    with pytest.raises(UserError) as excinfo:
        data.train.load(row)
    message = _one_line(excinfo)
    assert message.startswith(f"dataset 'dtd': cannot read image {str(broken)!r}")
    assert "download = true" in message


def test_image_that_fails_to_decode_during_preprocessing_names_the_file(tmp_path):
    write_dtd(tmp_path)
    broken = tmp_path / "dtd" / "dtd" / "images" / "banded" / "banded_0003.jpg"
    broken.write_bytes(b"this is no JPEG")
    prepared = prepare(load("dtd", tmp_path), SOURCE, {}, {}, seed=0, cache=None)
    with pytest.raises(UserError, match=re.escape(f"dataset 'dtd': cannot read image '{broken}'")):
        for _ in prepared.batches("test", batch_size=4):
            pass
