"""Built-in target datasets, registered through the same hook any plugin uses.

Registering is cheap: factories are lazy "module:attr" strings and ``available`` only checks
that files exist. Common split options (train_size, shots, protocol, ...) come from the core.
"""

from __future__ import annotations

import functools
import importlib.util

from tlbench import hookimpl
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


@hookimpl
def register_datasets(register):
    register(
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
        )
    )
    register(
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
        )
    )
    register(
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
        )
    )
    manifest_options = (
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
    for name in ("manifest", "csv"):
        register(
            DatasetSpec(
                name=name,
                factory="tlbench.datasetlib.local:manifest",
                description="Images listed in a CSV manifest (path,label[,split]); labels are names or integers.",
                options=manifest_options,
                tags=("local",),
                card={"source": "user files"},
            )
        )
    for spec in TV_SETS.values():
        register(
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
        )
