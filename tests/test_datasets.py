"""Built-in datasets: real offline data, dataset cards, and one clear line for every bad input."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tlbench.datasetlib import local, torchvision_sets
from tlbench.datasetlib.catalog import TV_SETS, tv_availability
from tlbench.errors import UserError
from tlbench.plugins import load_plugins

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
needs_fashion = pytest.mark.skipif(
    not FASHION_DIR.is_dir(), reason="apt-get install dataset-fashion-mnist"
)


def _digit_images():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return np.round(bunch.images * 255 / 16).astype(np.uint8), bunch.target


def write_digit_folder(root: Path, per_class: int = 6, classes=(0, 1, 2), offset: int = 0) -> Path:
    """An image folder of real handwritten digits saved as grayscale PNGs."""
    images, labels = _digit_images()
    for c in classes:
        folder = root / f"digit{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for k, i in enumerate(np.flatnonzero(labels == c)[offset : offset + per_class]):
            Image.fromarray(images[i]).save(folder / f"{k}.png")
    return root


def test_every_builtin_dataset_registers_with_a_lazy_factory_and_a_card():
    host = load_plugins(builtins=("tlbench.builtin.datasets",), load_entrypoints=False)
    assert host.errors == []
    names = set(host.registry.names("dataset"))
    assert {"digits", "fashion-mnist", "imagefolder", "manifest", "csv", *TV_SETS} <= names
    for entry in host.registry.items("dataset"):
        assert isinstance(entry.spec.factory, str) and callable(entry.spec.load_factory())
        assert entry.spec.card and entry.spec.description


def test_digits_are_scaled_to_uint8_and_have_no_official_test():
    data = local.digits(None, {})
    assert data.train.images.dtype == np.uint8 and data.train.images.shape == (1797, 8, 8)
    assert data.train.images.max() == 255 and data.test is None
    assert data.card["classes"] == 10 and data.card["channels"] == 1


@needs_fashion
def test_fashion_mnist_reads_the_debian_idx_files_once_per_process():
    data = local.fashion_mnist(None, {})
    assert data.train.images.shape == (60000, 28, 28) and len(data.test) == 10000
    assert np.bincount(data.test.labels).tolist() == [1000] * 10
    assert data.class_names[9] == "Ankle boot" and data.card["license"] == "MIT"
    assert local.fashion_mnist(None, {"shots": 3}) is data  # split options do not re-decode


@needs_fashion
def test_fashion_mnist_reads_torchvision_layout_under_root(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for f in FASHION_DIR.glob("*.gz"):
        (raw / f.name).symlink_to(f)
    data = local.fashion_mnist(None, {"root": str(tmp_path)})
    assert len(data.train) == 60000
    assert data.fingerprint == local.fashion_mnist(None, {}).fingerprint


def test_fashion_mnist_missing_names_where_it_looked_and_the_package(tmp_path):
    with pytest.raises(
        UserError, match=rf"looked in {tmp_path}.*apt-get install dataset-fashion-mnist"
    ):
        local.fashion_mnist(None, {"root": str(tmp_path)})


def test_imagefolder_decodes_uniform_images_into_memory_as_grayscale(tmp_path):
    root = write_digit_folder(tmp_path / "train")
    data = local.imagefolder(None, {"root": str(root)})
    assert data.class_names == ("digit0", "digit1", "digit2")
    assert data.train.images.shape == (18, 8, 8) and data.test is None
    assert np.bincount(data.train.labels).tolist() == [6, 6, 6]
    images, _ = _digit_images()
    assert any(np.array_equal(data.train.images[0], img) for img in images[:50])


def test_imagefolder_test_root_becomes_the_official_test_split(tmp_path):
    root = write_digit_folder(tmp_path / "train")
    test_root = write_digit_folder(tmp_path / "test", per_class=3, offset=10)
    data = local.imagefolder(None, {"root": str(root), "test_root": str(test_root)})
    assert len(data.test) == 9 and data.card["splits"] == {"train": 18, "test": 9}


def test_imagefolder_with_mixed_sizes_stays_lazy_and_loads_rgb(tmp_path):
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    for c, photo in enumerate(photos):
        (tmp_path / f"c{c}").mkdir()
        for k, size in enumerate((40, 56, 72)):
            Image.fromarray(photo[:size, : size + 10]).save(tmp_path / f"c{c}" / f"{k}.jpg")
    data = local.imagefolder(None, {"root": str(tmp_path)})
    assert data.train.images is None and len(data.train.paths) == 6
    assert data.train.load(1).mode == "RGB" and data.train.load(1).size == (66, 56)
    assert data.card["storage"] == "lazy"


def test_imagefolder_empty_root_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match=rf"{tmp_path}.*has no class subfolders"):
        local.imagefolder(None, {"root": str(tmp_path)})


def test_imagefolder_class_folder_without_images_is_named(tmp_path):
    write_digit_folder(tmp_path)
    (tmp_path / "empty_class").mkdir()
    (tmp_path / "empty_class" / "notes.txt").write_text("no images here")
    with pytest.raises(UserError, match=r"class folder '.*empty_class' holds no images"):
        local.imagefolder(None, {"root": str(tmp_path)})


def test_corrupt_image_fails_naming_its_path_or_is_skipped_and_recorded(tmp_path):
    write_digit_folder(tmp_path)
    bad = tmp_path / "digit1" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    with pytest.raises(UserError, match=r"cannot read image '.*broken\.png'.*on_corrupt"):
        local.imagefolder(None, {"root": str(tmp_path)})
    data = local.imagefolder(None, {"root": str(tmp_path), "on_corrupt": "skip"})
    assert len(data.train) == 18
    assert data.card["skipped_files"] == 1 and data.card["skipped"][0].endswith("broken.png")


def test_test_root_with_an_unknown_class_is_named(tmp_path):
    root = write_digit_folder(tmp_path / "train")
    test_root = write_digit_folder(tmp_path / "test", classes=(0, 7))
    with pytest.raises(UserError, match="class folder 'digit7' is not a class of root"):
        local.imagefolder(None, {"root": str(root), "test_root": str(test_root)})


def _write_manifest(tmp_path: Path, rows: list[str]) -> Path:
    write_digit_folder(tmp_path / "imgs")
    path = tmp_path / "data.csv"
    path.write_text("\n".join(["path,label,split", *rows]) + "\n")
    return path


def test_manifest_resolves_relative_paths_and_name_labels(tmp_path):
    rows = [
        f"imgs/digit{c}/{k}.png,{name},{'test' if k == 5 else 'train'}"
        for c, name in enumerate(("zero", "one", "two"))
        for k in range(6)
    ]
    data = local.manifest(None, {"path": str(_write_manifest(tmp_path, rows))})
    assert data.class_names == ("one", "two", "zero")
    assert len(data.train) == 15 and len(data.test) == 3
    assert data.train.images.shape == (15, 8, 8)


def test_manifest_integer_labels_out_of_range_name_the_line(tmp_path):
    rows = [f"imgs/digit{c}/0.png,{c}" for c in range(3)]
    path = _write_manifest(tmp_path, rows)
    assert local.manifest(None, {"path": str(path)}).num_classes == 3
    with pytest.raises(
        UserError, match=r"data\.csv' line 4: label '2' is out of range for num_classes = 2"
    ):
        local.manifest(None, {"path": str(path), "num_classes": 2})


def test_manifest_unknown_label_and_bad_split_are_named(tmp_path):
    path = _write_manifest(tmp_path, ["imgs/digit0/0.png,cat", "imgs/digit1/0.png,dog"])
    with pytest.raises(UserError, match="line 3: unknown label 'dog' \\(classes: cat\\)"):
        local.manifest(None, {"path": str(path), "classes": "cat"})
    path.write_text(
        "path,label,split\nimgs/digit0/0.png,cat,train\nimgs/digit1/0.png,dog,holdout\n"
    )
    with pytest.raises(UserError, match="line 3: split 'holdout' is not one of train, val, test"):
        local.manifest(None, {"path": str(path), "classes": "cat,dog"})


def test_manifest_missing_file_is_a_corrupt_entry(tmp_path):
    path = _write_manifest(tmp_path, ["imgs/digit0/0.png,a", "imgs/nowhere.png,b"])
    with pytest.raises(UserError, match=r"cannot read image '.*nowhere\.png'"):
        local.manifest(None, {"path": str(path)})


def test_torchvision_dataset_offline_names_root_and_download(tmp_path):
    assert "download = true" in tv_availability("cifar10", tmp_path)
    with pytest.raises(UserError, match=rf"'cifar10': not found in {tmp_path} .*download = true"):
        torchvision_sets.cifar10(None, {"root": str(tmp_path), "download": False})


def test_dtd_uses_train_plus_val_as_pool_and_official_test(tmp_path):
    """A miniature DTD in torchvision's layout, built from real digit images."""
    images, labels = _digit_images()
    data_dir = tmp_path / "dtd" / "dtd"
    (data_dir / "labels").mkdir(parents=True)
    lines = {"train": [], "val": [], "test": []}
    for c, name in enumerate(("banded", "dotted")):
        (data_dir / "images" / name).mkdir(parents=True)
        for k, i in enumerate(np.flatnonzero(labels == c)[:9]):
            Image.fromarray(images[i]).convert("RGB").save(
                data_dir / "images" / name / f"{name}_{k}.jpg"
            )
            lines[("train", "val", "test")[k % 3]].append(f"{name}/{name}_{k}.jpg")
    for split, entries in lines.items():
        (data_dir / "labels" / f"{split}1.txt").write_text("\n".join(entries) + "\n")
    assert tv_availability("dtd", tmp_path) is True
    data = torchvision_sets.dtd(None, {"root": str(tmp_path)})
    assert data.class_names == ("banded", "dotted")
    assert len(data.train) == 12 and len(data.test) == 6
    assert data.train.load(0).mode == "RGB" and data.card["root"] == str(tmp_path)


def test_availability_probe_honours_the_suite_entrys_root_and_download(tmp_path):
    from tlbench.datasetlib.catalog import tv_probe

    assert "download = true" in tv_probe("cifar10", {"root": str(tmp_path)})
    assert str(tmp_path) in tv_probe("cifar10", {"root": str(tmp_path)})
    assert tv_probe("cifar10", {"root": str(tmp_path), "download": True}) is True
