"""Built-in target datasets, registered through the same hook any plugin uses.

Registering is cheap: factories are lazy "module:attr" strings and ``available`` only checks
that files exist. Common split options (train_size, shots, protocol, ...) come from the core.
"""

from __future__ import annotations

import functools
import importlib.util

from tlbench import hookimpl
from tlbench.datasetlib import hf, wds
from tlbench.datasetlib.catalog import TV_SETS, fashion_availability, tv_probe
from tlbench.datasetlib.local import TEST_SHIFTS
from tlbench.specs import DatasetSpec, Option

ON_CORRUPT = Option(
    "on_corrupt",
    str,
    default="fail",
    help="What to do with an unreadable image: fail naming it, or skip it (skipped files are counted in the card).",
    choices=("fail", "skip"),
)
DECODE = Option(
    "decode",
    str,
    default="auto",
    help="Hold decoded images in memory ('memory'), decode from disk when needed ('lazy'), or 'auto': memory when all images share one size and fit 1 GiB.",
    choices=("auto", "memory", "lazy"),
)
ROOT_HELP = (
    "Folder holding the dataset files (default: $TLBENCH_DATA or ~/.cache/tlbench/datasets)."
)


def _sklearn_available() -> bool | str:
    return (
        True
        if importlib.util.find_spec("sklearn")
        else "scikit-learn is not installed (pip install scikit-learn)"
    )


_OFFLINE = (
    DatasetSpec(
        name="digits",
        factory="tlbench.datasetlib.local:digits",
        description="scikit-learn's 8x8 grayscale handwritten digits (1797 images, 10 classes).",
        tags=("grayscale", "small", "offline"),
        card={
            "classes": 10,
            "images": 1797,
            "image_size": [8, 8],
            "channels": 1,
            "official_test": "none (carved)",
            "license": "CC BY 4.0",
        },
        available=_sklearn_available,
    ),
    DatasetSpec(
        name="fashion-mnist",
        factory="tlbench.datasetlib.local:fashion_mnist",
        description="Zalando Fashion-MNIST, 28x28 grayscale, 10 classes (Debian dataset-fashion-mnist or torchvision layout).",
        options=(
            Option(
                "root",
                str,
                default=None,
                help="Folder with the IDX files, or with FashionMNIST/raw/ inside (torchvision's layout).",
            ),
            Option(
                "test_shift",
                str,
                default=None,
                help="A distribution shift applied to the official test images only (train and val unchanged): 'invert' (255 - pixel) or 'rotate90' (a quarter turn counter-clockwise).",
                choices=TEST_SHIFTS,
            ),
        ),
        tags=("grayscale", "offline"),
        card={
            "classes": 10,
            "splits": {"train": 60000, "test": 10000},
            "image_size": [28, 28],
            "channels": 1,
            "license": "MIT",
        },
        available=fashion_availability,
    ),
)


def blended_availability(options: dict | None = None) -> bool | str:
    # scikit-learn ships two of the photos; scikit-image, when installed, adds nine more.
    if not importlib.util.find_spec("sklearn"):
        return (
            "needs scikit-learn's sample photos (pip install scikit-learn; scikit-image adds more)"
        )
    return True


_BLENDED_SIZE = Option(
    "size",
    int,
    default=32,
    help="Side of the blended RGB images in pixels (glyphs are resized to it, photo patches too).",
    minimum=8,
)
# MNIST-M-style targets: the offline glyphs blended into natural photos (see blended.py).
_BLENDED = (
    DatasetSpec(
        name="fashion-mnist-m",
        factory="tlbench.datasetlib.blended:fashion_mnist_m",
        description="Fashion-MNIST blended into patches of natural colour photos, |patch - garment| per channel (MNIST-M's recipe): a target where ImageNet features can show.",
        options=(
            Option("root", str, default=None, help="Folder with the Fashion-MNIST IDX files."),
            _BLENDED_SIZE,
        ),
        tags=("rgb", "offline", "shift"),
        card={"classes": 10, "splits": {"train": 60000, "test": 10000}, "channels": 3},
        available=blended_availability,
    ),
    DatasetSpec(
        name="digits-m",
        factory="tlbench.datasetlib.blended:digits_m",
        description="scikit-learn's digits blended into patches of natural colour photos (MNIST-M's recipe).",
        options=(_BLENDED_SIZE,),
        tags=("rgb", "offline", "small"),
        card={"classes": 10, "images": 1797, "channels": 3},
        available=blended_availability,
    ),
)

_MANIFEST_OPTIONS = (
    Option(
        "path",
        str,
        default=None,
        help="CSV file with columns path,label and optionally split (train|val|test); relative paths are resolved against the CSV's folder.",
        required=True,
    ),
    Option(
        "num_classes",
        int,
        default=None,
        help="Integer labels must lie in 0..num_classes-1 (default: largest label + 1).",
        minimum=1,
    ),
    Option(
        "classes",
        str,
        default=None,
        help="Comma-separated class names fixing their order; other labels are errors.",
    ),
    ON_CORRUPT,
    DECODE,
)
_USER_FILES = (
    DatasetSpec(
        name="imagefolder",
        factory="tlbench.datasetlib.local:imagefolder",
        description="Your images in class subfolders: root/<class>/<image>.",
        options=(
            Option(
                "root",
                str,
                default=None,
                help="Folder with one subfolder per class.",
                required=True,
            ),
            Option(
                "test_root",
                str,
                default=None,
                help="Same layout, used as the official test split.",
            ),
            ON_CORRUPT,
            DECODE,
        ),
        tags=("local",),
        card={"source": "user files"},
    ),
    *(
        DatasetSpec(
            name=name,
            factory="tlbench.datasetlib.local:manifest",
            description="Images listed in a CSV manifest (path,label[,split]); labels are names or integers.",
            options=_MANIFEST_OPTIONS,
            tags=("local",),
            card={"source": "user files"},
        )
        for name in ("manifest", "csv")
    ),
)

# ``hf:`` (Hugging Face datasets) and ``wds:`` (WebDataset shards): their libraries are imported
# only when a cell reads the data.
_FAMILIES = (
    DatasetSpec(
        name="hf",
        factory="tlbench.datasetlib.hf:hf_dataset",
        description="A Hugging Face datasets table: a hub dataset from the local cache, or a parquet/arrow or save_to_disk directory (path); images read lazily from memory-mapped Arrow.",
        takes_argument=True,
        argument_help="hub id with '--' for '/', e.g. ylecun--mnist; or any name with path = DIR",
        options=(
            Option(
                "path",
                str,
                default=None,
                help="A local directory of parquet/arrow files or a save_to_disk directory (instead of the hub).",
            ),
            Option("config", str, default=None, help="The dataset's configuration name."),
            Option("revision", str, default=None, help="Hub revision (branch, tag or commit)."),
            Option(
                "train_split",
                str,
                default=None,
                help="Splits forming the training pool, joined by '+' (default: train plus validation when present).",
            ),
            Option(
                "test_split",
                str,
                default=None,
                help="The official test split(s), joined by '+' (default: test when present); 'none' carves one from the pool.",
            ),
            Option(
                "image_column",
                str,
                default=None,
                help="Column of images (default: the first Image feature).",
            ),
            Option(
                "label_column",
                str,
                default=None,
                help="Column of labels (default: the first ClassLabel feature, else 'label').",
            ),
        ),
        tags=("hub", "local", "lazy"),
        card={"source": "Hugging Face datasets"},
        available=hf.available,
    ),
    DatasetSpec(
        name="wds",
        factory="tlbench.datasetlib.wds:wds_dataset",
        description="WebDataset tar shards (brace patterns) under root, read with the webdataset library; labels from each sample's cls entry.",
        takes_argument=True,
        argument_help="shard file pattern under root, e.g. train-{000000..000009}.tar",
        options=(
            Option(
                "root",
                str,
                default=None,
                help="Folder holding the shards (default: $TLBENCH_DATA or ~/.cache/tlbench/datasets).",
            ),
            Option(
                "test",
                str,
                default=None,
                help="Shard pattern of the official test split, under root (default: none, carved).",
            ),
            Option(
                "classes",
                str,
                default=None,
                help="Class names: a sidecar file under root (JSON list, or one name per line), or names joined by ','. Default: classes.json or classes.txt next to the shards, else the cls numbers.",
            ),
            Option(
                "workers",
                int,
                default=None,
                help="Processes reading shards when the dataset is first indexed (default: up to one per shard and core).",
                minimum=0,
            ),
        ),
        tags=("local", "shards", "lazy"),
        card={"source": "WebDataset shards"},
        available=wds.available,
    ),
)

_TORCHVISION = tuple(
    DatasetSpec(
        name=spec.name,
        factory=f"tlbench.datasetlib.torchvision_sets:{spec.name}",
        description=f"{spec.card['source']} via torchvision; {spec.card['official_split']}.",
        options=(
            Option("root", str, default=None, help=ROOT_HELP),
            Option(
                "download",
                bool,
                default=False,
                help="Download the files into root when they are missing.",
            ),
        ),
        tags=("torchvision", "rgb"),
        card=dict(spec.card),
        available=functools.partial(tv_probe, spec.name),
    )
    for spec in TV_SETS.values()
)

SPECS = _OFFLINE + _BLENDED + _USER_FILES + _FAMILIES + _TORCHVISION


@hookimpl
def register_datasets(register):
    for spec in SPECS:
        register(spec)
