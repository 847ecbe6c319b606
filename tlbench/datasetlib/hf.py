"""``hf:`` datasets: Hugging Face ``datasets`` tables, read lazily from their memory-mapped Arrow.

Three sources: a hub dataset already in the local caches (the hub cache that ``hf download``
fills, or the ``datasets`` cache that ``load_dataset`` fills), a local directory of parquet or
arrow files (option ``path``), or a ``save_to_disk`` directory (option ``path``). Images are
never decoded up front: each split is an ``ImageSet`` of row keys whose loader reads one row
from the Arrow table (memory-mapped, shared by DataLoader workers) and decodes it. The
``datasets`` library is imported only when a cell needs the data.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import io
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from tlbench.components import ImageSet
from tlbench.datasetlib.common import GRAY_MODES, decode_once, make_target
from tlbench.errors import UserError

MISSING_LIBRARY = "the datasets library is not installed: pip install 'tlbench[hf]'"
VALIDATION_SPLITS = ("validation", "valid", "val", "dev")
MODE_SAMPLE = 16  # images looked at to tell a grayscale dataset from a colour one


def repo_id(argument: str) -> str:
    """The hub id an ``hf:`` argument names: suite references never contain '/', so
    ``org--name`` (the hub cache's own spelling) stands for ``org/name``."""
    return argument.replace("--", "/", 1)


def _offline() -> bool:
    return any(
        os.environ.get(var, "").upper() in ("1", "ON", "YES", "TRUE")
        for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


def _hub_cache() -> Path:
    from huggingface_hub import constants

    return Path(os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE)


def _datasets_cache() -> Path:
    if os.environ.get("HF_DATASETS_CACHE"):
        return Path(os.environ["HF_DATASETS_CACHE"])
    home = os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface"
    return Path(home) / "datasets"


def _cached_in_datasets(repo: str) -> bool:
    return (_datasets_cache() / repo.replace("/", "___")).is_dir()


def _cached_in_hub(repo: str) -> bool:
    return (_hub_cache() / f"datasets--{repo.replace('/', '--')}" / "snapshots").is_dir()


def available(argument: str, options: Mapping[str, Any]) -> bool | str:
    """Cheap: the library is installed and the data is where the options say (no import)."""
    if importlib.util.find_spec("datasets") is None:
        return MISSING_LIBRARY
    if not argument:  # the family itself, as `tlbench list` shows it
        return True
    if options.get("path"):
        path = Path(options["path"]).expanduser()
        return True if path.exists() else f"path {str(path)!r} does not exist"
    repo = repo_id(argument)
    if _offline() and not (_cached_in_hub(repo) or _cached_in_datasets(repo)):
        return _not_cached(argument, repo)
    return True


def _not_cached(argument: str, repo: str) -> str:
    return (
        f"hf:{argument}: {repo!r} is not in the local Hugging Face caches ({_hub_cache()}, "
        f"{_datasets_cache()}) and downloads are off (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE); on a "
        f"machine with internet run `hf download --repo-type dataset {repo}` and copy that cache "
        "here, or save the dataset with save_to_disk and set path"
    )


def _import_datasets():
    try:
        import datasets
    except ImportError:
        raise UserError(MISSING_LIBRARY) from None
    datasets.disable_progress_bars()  # a library prints nothing; tlbench's log says what happens
    datasets.logging.set_verbosity_error()
    return datasets


def _open(argument: str, options: Mapping[str, Any]) -> tuple[dict, str, str | None]:
    """(split name -> ``datasets.Dataset``, where it came from, revision or None)."""
    datasets = _import_datasets()
    config = options.get("config")
    if options.get("path"):
        path = Path(options["path"]).expanduser()
        if not path.exists():
            raise UserError(f"hf:{argument}: path {str(path)!r} does not exist")
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            loaded = _guard(argument, lambda: datasets.load_from_disk(str(path)))
            source = f"save_to_disk directory {path}"
        else:
            loaded = _guard(argument, lambda: datasets.load_dataset(str(path), name=config))
            source = f"data files in {path}"
        return _as_dict(loaded), source, None
    repo = repo_id(argument)
    revision = options.get("revision")
    snapshot = _hub_snapshot(repo, revision)
    if snapshot is not None:
        loaded = _guard(argument, lambda: datasets.load_dataset(str(snapshot), name=config))
        return _as_dict(loaded), f"hub dataset {repo} (hub cache)", snapshot.name
    if _offline() and not _cached_in_datasets(repo):
        raise UserError(_not_cached(argument, repo))
    try:
        loaded = datasets.load_dataset(repo, name=config, revision=revision)
    except (ConnectionError, FileNotFoundError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"{_not_cached(argument, repo)} ({first})") from None
    except Exception as exc:
        raise UserError(f"hf:{argument}: datasets cannot load {repo!r}: {exc}") from None
    split = next(iter(_as_dict(loaded).values()))
    files = split.cache_files
    # The datasets cache keeps each prepared revision in a folder named by its commit.
    found = Path(files[0]["filename"]).parent.name if files else revision
    return _as_dict(loaded), f"hub dataset {repo} (datasets cache)", found


def _hub_snapshot(repo: str, revision: str | None) -> Path | None:
    """The snapshot folder ``hf download`` left in the hub cache, found by huggingface_hub."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = snapshot_download(
            repo,
            repo_type="dataset",
            revision=revision,
            cache_dir=_hub_cache(),
            local_files_only=True,
        )
    except (LocalEntryNotFoundError, FileNotFoundError, ValueError):
        return None
    return Path(folder)


def _guard(argument: str, load):
    try:
        return load()
    except UserError:
        raise
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise UserError(
            f"hf:{argument}: datasets cannot read it ({type(exc).__name__}: {first})"
        ) from None


def _as_dict(loaded) -> dict:
    return dict(loaded) if hasattr(loaded, "keys") else {"train": loaded}


def _pick_splits(argument: str, splits: dict, option: str | None, default: list[str]) -> list:
    names = list(dict.fromkeys(s for s in option.split("+") if s)) if option else default
    missing = [s for s in names if s not in splits]
    if missing:
        raise UserError(
            f"hf:{argument}: no split {missing[0]!r} (the dataset has: {', '.join(sorted(splits))})"
        )
    return names


def _columns(argument: str, features, options: Mapping[str, Any]) -> tuple[str, str]:
    import datasets

    described = ", ".join(f"{k} ({type(v).__name__})" for k, v in features.items())
    image = options.get("image_column") or next(
        (k for k, v in features.items() if isinstance(v, datasets.Image)), None
    )
    if image is None or image not in features:
        what = f"no column {image!r}" if image else "no Image column"
        raise UserError(f"hf:{argument}: {what}; set image_column (columns: {described})")
    if not isinstance(features[image], datasets.Image):
        raise UserError(
            f"hf:{argument}: column {image!r} is {type(features[image]).__name__}, not Image"
        )
    label = options.get("label_column") or next(
        (k for k, v in features.items() if isinstance(v, datasets.ClassLabel)),
        next((k for k in ("label", "labels") if k in features), None),
    )
    if label is None or label not in features:
        what = f"no column {label!r}" if label else "no ClassLabel column"
        raise UserError(f"hf:{argument}: {what}; set label_column (columns: {described})")
    return image, label


def _class_names(argument: str, parts: list, label: str) -> tuple[str, ...]:
    import datasets

    feature = parts[0].features[label]
    if isinstance(feature, datasets.ClassLabel):
        return tuple(feature.names)
    values = np.concatenate([_column(p, label) for p in parts])
    if values.dtype.kind in "iu":
        if len(values) and values.min() < 0:
            raise UserError(f"hf:{argument}: column {label!r} holds negative labels")
        return tuple(str(i) for i in range(int(values.max()) + 1 if len(values) else 0))
    return tuple(sorted({str(v) for v in values}))


def _column(dataset, name: str) -> np.ndarray:
    return np.asarray(dataset.select_columns([name]).with_format("numpy")[:][name])


def _labels(argument: str, split: str, dataset, label: str, classes: tuple[str, ...]):
    values = _column(dataset, label)
    if values.dtype.kind not in "iu":
        index = {name: i for i, name in enumerate(classes)}
        unknown = next((str(v) for v in values if str(v) not in index), None)
        if unknown is not None:
            raise UserError(f"hf:{argument}: split {split!r} has label {unknown!r} not in training")
        values = np.asarray([index[str(v)] for v in values])
    values = values.astype(np.int64)
    unlabeled = int((values < 0).sum())
    if unlabeled:
        raise UserError(
            f"hf:{argument}: split {split!r} has {unlabeled} unlabeled rows (label -1); "
            "set test_split = 'none' to carve the test split from the training data"
        )
    if len(values) and values.max() >= len(classes):
        raise UserError(f"hf:{argument}: split {split!r} has label {values.max()} out of range")
    return values


def read_row(key: str, rows, column: str, mode: str):
    """Decode one image (``key`` ends in ``/<row>``) from a memory-mapped Arrow table. Module
    level, holding the table by reference, so DataLoader workers can pickle it cheaply."""
    from PIL import Image

    cell = rows[int(key.rsplit("/", 1)[1])].column(column)[0].as_py()
    try:
        if cell.get("bytes"):
            with Image.open(io.BytesIO(cell["bytes"])) as img:
                return img.convert(mode)
        with Image.open(cell["path"]) as img:
            return img.convert(mode)
    except Exception as exc:
        raise UserError(f"cannot read image {key} ({type(exc).__name__}: {exc})") from None


def _imageset(tag: str, dataset, image: str, labels: np.ndarray, mode: str) -> ImageSet:
    rows = dataset.select_columns([image]).with_format("arrow")
    return ImageSet(
        labels=labels,
        paths=tuple(f"{tag}/{i}" for i in range(len(labels))),
        loader=functools.partial(read_row, rows=rows, column=image, mode=mode),
    )


def _mode(dataset, image: str) -> str:
    declared = getattr(dataset.features[image], "mode", None)
    if declared:
        return "L" if declared in GRAY_MODES else "RGB"
    rows = dataset.select_columns([image]).with_format("arrow")
    modes = [_raw_mode(rows, image, i) for i in range(min(MODE_SAMPLE, len(dataset)))]
    return "L" if modes and all(m in GRAY_MODES for m in modes) else "RGB"


def _raw_mode(rows, column: str, row: int) -> str:
    from PIL import Image

    cell = rows[row].column(column)[0].as_py()
    source = io.BytesIO(cell["bytes"]) if cell.get("bytes") else cell["path"]
    with Image.open(source) as img:
        return img.mode


@decode_once
def hf_dataset(argument: str, options: Mapping[str, Any]):
    splits, source, revision = _open(argument, options)
    pool_default = ["train" if "train" in splits else sorted(splits)[0]]
    pool_default = list(dict.fromkeys(pool_default + [s for s in VALIDATION_SPLITS if s in splits]))
    train_names = _pick_splits(argument, splits, options.get("train_split"), pool_default)
    test_option = options.get("test_split")
    if test_option == "none":
        test_names = []
    else:
        test_default = ["test"] if "test" in splits and "test" not in train_names else []
        test_names = _pick_splits(argument, splits, test_option, test_default)
    if set(train_names) & set(test_names):
        raise UserError(
            f"hf:{argument}: split {sorted(set(train_names) & set(test_names))[0]!r} is both train and test"
        )
    import datasets

    train_parts = [splits[s] for s in train_names]
    image, label = _columns(argument, train_parts[0].features, options)
    classes = _class_names(argument, train_parts, label)
    pool = train_parts[0] if len(train_parts) == 1 else datasets.concatenate_datasets(train_parts)
    mode = _mode(pool, image)
    tag = f"hf:{argument}"
    train = _imageset(
        f"{tag}:{'+'.join(train_names)}",
        pool,
        image,
        _labels(argument, "+".join(train_names), pool, label, classes),
        mode,
    )
    test = None
    if test_names:
        tests = [splits[s] for s in test_names]
        test_set = tests[0] if len(tests) == 1 else datasets.concatenate_datasets(tests)
        for part in tests:  # the test split must carry the training split's columns
            _columns(argument, part.features, {"image_column": image, "label_column": label})
        test = _imageset(
            f"{tag}:{'+'.join(test_names)}",
            test_set,
            image,
            _labels(argument, "+".join(test_names), test_set, label, classes),
            mode,
        )
    fingerprint = hashlib.sha256(
        repr(
            (
                "hf",
                source,
                revision,
                options.get("config"),
                [(s, getattr(splits[s], "_fingerprint", None)) for s in train_names + test_names],
                image,
                label,
                classes,
                mode,
            )
        ).encode()
    ).hexdigest()
    card = {
        "source": f"{source} via Hugging Face datasets",
        "revision": revision,
        "columns": {"image": image, "label": label},
        "official_split": f"train = {'+'.join(train_names)}; test = {'+'.join(test_names) or 'none (carved)'}",
        "storage": "lazy (memory-mapped Arrow)",
    }
    return make_target(tag, classes, train, test, card, fingerprint=fingerprint)
