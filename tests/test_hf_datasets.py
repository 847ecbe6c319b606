"""``hf:`` datasets through the real Hugging Face ``datasets`` library, offline: a parquet
directory, a ``save_to_disk`` directory and a hub dataset served from a local stand-in of the
hub cache (the layout ``hf download --repo-type dataset`` leaves), each built here from real
digit images; images stay in the memory-mapped Arrow table until a loader reads them."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

datasets = pytest.importorskip("datasets")

from tlbench.cli import cli  # noqa: E402
from tlbench.datasetlib import hf  # noqa: E402
from tlbench.errors import UserError  # noqa: E402

CLASSES = ["zero", "one", "two"]
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path, monkeypatch):
    """The datasets library's own cache (parquet converted to Arrow) stays in the test's folder."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets-cache")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-datasets-cache"))
    hf.hf_dataset.cache_clear()


def _digits(n: int, start: int = 0) -> tuple[list[np.ndarray], list[int]]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    keep = np.flatnonzero(digits.target < 3)[start : start + n]
    images = [(digits.images[i] * 255 / 16).astype(np.uint8) for i in keep]
    return images, [int(digits.target[i]) for i in keep]


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _table(n: int, start: int, image="image", label="label", class_label=True):
    images, labels = _digits(n, start)
    features = datasets.Features(
        {
            image: datasets.Image(),
            label: datasets.ClassLabel(names=CLASSES) if class_label else datasets.Value("int64"),
        }
    )
    rows = {image: [{"bytes": _png(a), "path": None} for a in images], label: labels}
    return datasets.Dataset.from_dict(rows, features=features), images, labels


def _parquet_dir(root, splits=(("train", 30, 0), ("validation", 6, 30), ("test", 9, 36))):
    (root / "data").mkdir(parents=True)
    for name, n, start in splits:
        table, _, _ = _table(n, start)
        table.to_parquet(str(root / "data" / f"{name}-00000-of-00001.parquet"))
    return root


def test_parquet_directory_gives_classes_pool_test_and_the_pixels(tmp_path):
    folder = _parquet_dir(tmp_path / "digits-pq")
    target = hf.hf_dataset("digits", {"path": str(folder)})
    assert target.class_names == tuple(CLASSES)
    # validation joins the training pool; test is the official test split
    assert len(target.train) == 36 and len(target.test) == 9
    assert target.train.images is None, "images stay in the Arrow table"
    images, labels = _digits(36)
    assert target.train.labels.tolist() == labels
    assert np.array_equal(np.asarray(target.train.load(31)), images[31])
    assert target.train.load(0).mode == "L"
    assert target.card["storage"].startswith("lazy") and target.card["channels"] == 1
    # the loader holds the table by reference, not the images: DataLoader workers share the map
    assert len(pickle.dumps(target.train.loader)) < sum(len(_png(a)) for a in images)


def test_save_to_disk_with_named_columns_plain_int_labels_and_split_mapping(tmp_path):
    train, images, labels = _table(20, 0, image="picture", label="y", class_label=False)
    extra, _, _ = _table(5, 20, image="picture", label="y", class_label=False)
    datasets.DatasetDict(train=train, extra=extra).save_to_disk(str(tmp_path / "saved"))
    options = {
        "path": str(tmp_path / "saved"),
        "image_column": "picture",
        "label_column": "y",
        "train_split": "train",
        "test_split": "extra",
    }
    target = hf.hf_dataset("saved", options)
    assert target.class_names == ("0", "1", "2")
    assert len(target.train) == 20 and len(target.test) == 5
    assert np.array_equal(np.asarray(target.test.load(0)), _digits(1, 20)[0][0])
    carved = hf.hf_dataset("saved", {**options, "test_split": "none"})
    assert carved.test is None


def test_bad_columns_and_splits_are_one_line_naming_what_exists(tmp_path):
    folder = _parquet_dir(tmp_path / "pq", splits=(("train", 6, 0),))
    with pytest.raises(UserError, match=r"no column 'img'.*columns: image \(Image\), label"):
        hf.hf_dataset("x", {"path": str(folder), "image_column": "img"})
    with pytest.raises(UserError, match=r"no split 'dev' \(the dataset has: train\)"):
        hf.hf_dataset("x", {"path": str(folder), "test_split": "dev"})
    with pytest.raises(UserError, match="does not exist"):
        hf.hf_dataset("x", {"path": str(tmp_path / "nowhere")})


def _hub_cache(cache, repo: str, source) -> None:
    """What `hf download --repo-type dataset REPO` leaves: blobs, a snapshot of links, refs/main."""
    base = cache / f"datasets--{repo.replace('/', '--')}"
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(COMMIT)
    for path in sorted(source.rglob("*.parquet")):
        data = path.read_bytes()
        blob = base / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(exist_ok=True)
        blob.write_bytes(data)
        link = base / "snapshots" / COMMIT / path.relative_to(source)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))


def test_hub_dataset_reads_from_the_hub_cache_offline_and_records_its_revision(
    tmp_path, monkeypatch
):
    _hub_cache(tmp_path / "hub", "tiny-org/digits3", _parquet_dir(tmp_path / "src"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hf.available("tiny-org--digits3", {}) is True
    target = hf.hf_dataset("tiny-org--digits3", {})
    assert target.card["revision"] == COMMIT and "tiny-org/digits3" in target.card["source"]
    assert len(target.train) == 36 and len(target.test) == 9
    assert np.array_equal(np.asarray(target.test.load(8)), _digits(45)[0][44])


def test_a_hub_dataset_missing_offline_says_what_to_download(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    reason = hf.available("someone--absent", {})
    assert "hf download --repo-type dataset someone/absent" in reason
    with pytest.raises(UserError) as caught:
        hf.hf_dataset("someone--absent", {})
    assert "\n" not in str(caught.value)
    assert "hf download --repo-type dataset someone/absent" in str(caught.value)


def test_without_the_library_listing_names_the_extra(monkeypatch):
    import importlib.util

    from tlbench.datasetlib import wds

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    assert (
        hf.available("x", {}) == "the datasets library is not installed: pip install 'tlbench[hf]'"
    )
    assert "pip install 'tlbench[wds]'" in wds.available("x.tar", {})


def test_fingerprint_is_stable_and_follows_the_datasets_own_fingerprint(tmp_path):
    train, _, _ = _table(12, 0)
    train.save_to_disk(str(tmp_path / "a"))
    first = hf.hf_dataset("a", {"path": str(tmp_path / "a")}).fingerprint
    hf.hf_dataset.cache_clear()
    assert hf.hf_dataset("a", {"path": str(tmp_path / "a")}).fingerprint == first
    # the same folder, rewritten with other rows: the datasets fingerprint changes, so does ours
    _table(12, 5)[0].save_to_disk(str(tmp_path / "b"))
    state = json.loads((tmp_path / "b" / "state.json").read_text())
    assert (
        state["_fingerprint"]
        != json.loads((tmp_path / "a" / "state.json").read_text())["_fingerprint"]
    )
    hf.hf_dataset.cache_clear()
    assert hf.hf_dataset("a", {"path": str(tmp_path / "b")}).fingerprint != first


def test_a_suite_over_a_local_parquet_dataset_runs_end_to_end(tmp_path):
    folder = _parquet_dir(
        tmp_path / "pq", splits=(("train", 150, 0), ("validation", 30, 150), ("test", 60, 180))
    )
    suite = tmp_path / "suite.toml"
    suite.write_text(
        f"""
name = "hf-e2e"
seeds = [0]
[[models]]
name = "pixels"
input_size = 8
[[datasets]]
name = "hf:digits3"
id = "digits3"
path = "{folder}"
[[strategies]]
name = "linear-probe"
l2 = [0.1]
refit = false
refine_steps = 0
"""
    )
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(
        cli, ["run", str(suite), "--out", str(run_dir), "--device", "cpu", "--quiet"]
    )
    assert result.exit_code == 0, result.output
    (record,) = [json.loads(line) for line in (run_dir / "cells.jsonl").read_text().splitlines()]
    assert record["status"] == "ok" and record["dataset"] == "digits3"
    assert record["split"]["test_from"] == "test" and record["split"]["sizes"]["test"] == 60
    assert record["metrics"]["top1"] > 80
