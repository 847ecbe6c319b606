"""What the built-in datasets are and where their files live: pure data and file-existence probes.

Importing this module is cheap (no numpy, no torch), so the plugin can answer ``available``
while ``tlbench list`` runs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

FASHION_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


def default_data_root() -> Path:
    """$TLBENCH_DATA, else ~/.cache/tlbench/datasets."""
    if os.environ.get("TLBENCH_DATA"):
        return Path(os.environ["TLBENCH_DATA"]).expanduser()
    return Path.home() / ".cache" / "tlbench" / "datasets"


def fashion_mnist_dirs(root: str | None) -> list[Path]:
    """Folders searched in order: the torchvision layout and the folder itself under ``root``;
    without ``root``, the same under the default data root, then the Debian package's folder."""
    base = Path(root).expanduser() if root else default_data_root()
    found = [base / "FashionMNIST" / "raw", base]
    return found if root else [*found, DEBIAN_FASHION_DIR]


def find_idx(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def locate_fashion(root: str | None) -> dict[str, Path] | None:
    for folder in fashion_mnist_dirs(root):
        files = {key: find_idx(folder, stem) for key, stem in FASHION_FILES.items()}
        if all(files.values()):
            return files
    return None


def fashion_availability(options: dict | None = None) -> bool | str:
    root = (options or {}).get("root")
    if locate_fashion(root):
        return True
    return "IDX files not found; run `apt-get install dataset-fashion-mnist`, or set the dataset option root"


@dataclass(frozen=True)
class TVSet:
    """How to read one torchvision dataset: its class, the constructor kwargs of each official
    part making up our train and test splits, and the files whose presence means "downloaded"."""

    name: str
    cls: str
    train_parts: tuple[dict, ...]
    test_parts: tuple[dict, ...] | None
    probe: tuple[str, ...]  # every file or folder, relative to root, that torchvision reads
    card: dict = field(default_factory=dict)


TV_SETS: dict[str, TVSet] = {
    s.name: s
    for s in (
        TVSet(
            "cifar10",
            "CIFAR10",
            ({"train": True},),
            ({"train": False},),
            (
                *(f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)),
                "cifar-10-batches-py/test_batch",
                "cifar-10-batches-py/batches.meta",
            ),
            {
                "classes": 10,
                "image_size": [32, 32],
                "source": "CIFAR-10 (Krizhevsky 2009)",
                "license": "no explicit license (research use)",
                "official_split": "train 50000 / test 10000",
            },
        ),
        TVSet(
            "cifar100",
            "CIFAR100",
            ({"train": True},),
            ({"train": False},),
            ("cifar-100-python/train", "cifar-100-python/test", "cifar-100-python/meta"),
            {
                "classes": 100,
                "image_size": [32, 32],
                "source": "CIFAR-100 (Krizhevsky 2009)",
                "license": "no explicit license (research use)",
                "official_split": "train 50000 / test 10000",
            },
        ),
        TVSet(
            "svhn",
            "SVHN",
            ({"split": "train"},),
            ({"split": "test"},),
            ("train_32x32.mat", "test_32x32.mat"),
            {
                "classes": 10,
                "image_size": [32, 32],
                "source": "SVHN cropped digits (Netzer et al. 2011)",
                "license": "non-commercial use",
                "official_split": "train 73257 / test 26032 (extra not used)",
            },
        ),
        TVSet(
            "flowers102",
            "Flowers102",
            ({"split": "train"}, {"split": "val"}),
            ({"split": "test"},),
            ("flowers-102/jpg", "flowers-102/imagelabels.mat", "flowers-102/setid.mat"),
            {
                "classes": 102,
                "image_size": "varies",
                "source": "Oxford 102 Flowers (Nilsback & Zisserman 2008)",
                "license": "research use",
                "official_split": "train 1020 + val 1020 = training pool 2040 / test 6149",
            },
        ),
        TVSet(
            "pets",
            "OxfordIIITPet",
            ({"split": "trainval"},),
            ({"split": "test"},),
            (
                "oxford-iiit-pet/images",
                "oxford-iiit-pet/annotations/trainval.txt",
                "oxford-iiit-pet/annotations/test.txt",
            ),
            {
                "classes": 37,
                "image_size": "varies",
                "source": "Oxford-IIIT Pet (Parkhi et al. 2012)",
                "license": "CC BY-SA 4.0",
                "official_split": "trainval 3680 / test 3669",
            },
        ),
        TVSet(
            "dtd",
            "DTD",
            ({"split": "train"}, {"split": "val"}),
            ({"split": "test"},),
            (
                "dtd/dtd/images",
                "dtd/dtd/labels/train1.txt",
                "dtd/dtd/labels/val1.txt",
                "dtd/dtd/labels/test1.txt",
            ),
            {
                "classes": 47,
                "image_size": "varies",
                "source": "Describable Textures Dataset, partition 1 (Cimpoi et al. 2014)",
                "license": "research use",
                "official_split": "train 1880 + val 1880 = training pool 3760 / test 1880",
            },
        ),
        TVSet(
            "eurosat",
            "EuroSAT",
            ({},),
            None,
            ("eurosat/2750",),
            {
                "classes": 10,
                "image_size": [64, 64],
                "source": "EuroSAT RGB (Helber et al. 2019)",
                "license": "MIT",
                "official_split": "none: the core carves a fixed stratified 20% test split",
            },
        ),
        TVSet(
            "food101",
            "Food101",
            ({"split": "train"},),
            ({"split": "test"},),
            ("food-101/images", "food-101/meta/train.json", "food-101/meta/test.json"),
            {
                "classes": 101,
                "image_size": "varies (max side 512)",
                "source": "Food-101 (Bossard et al. 2014)",
                "license": "research use (images from foodspotting.com)",
                "official_split": "train 75750 / test 25250",
            },
        ),
        TVSet(
            "caltech101",
            "Caltech101",
            ({},),
            None,
            (
                "caltech101/101_ObjectCategories",
                "caltech101/101_ObjectCategories/BACKGROUND_Google",  # torchvision drops it by name
            ),
            {
                "classes": 101,
                "image_size": "varies",
                "source": "Caltech 101 (Fei-Fei et al. 2004), BACKGROUND_Google excluded as torchvision does",
                "license": "CC BY 4.0",
                "official_split": "none: the core carves a fixed stratified 20% test split (VTAB uses 30 per class)",
            },
        ),
    )
}


def tv_probe(name: str, options: dict | None = None) -> bool | str:
    """The registry's ``available`` probe: the suite entry's own ``root`` counts, and with
    ``download = true`` the dataset is available wherever the network is (the download itself
    reports failure, naming the root)."""
    options = options or {}
    if options.get("download"):
        return True
    return tv_availability(
        name, Path(options["root"]).expanduser() if options.get("root") else None
    )


def tv_availability(name: str, root: Path | None = None) -> bool | str:
    """Cheap probe (file existence only) naming the first file torchvision would miss."""
    root = root or default_data_root()
    missing = [p for p in TV_SETS[name].probe if not (root / p).exists()]
    if not missing:
        return True
    return f"not found in {root} (no {missing[0]}); set download = true or root"
