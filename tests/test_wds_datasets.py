"""``wds:`` datasets through the real ``webdataset`` library, with shards this test writes
(webdataset's own ``TarWriter``) from real digit images: brace patterns, class names from a
sidecar or the ``cls`` numbers, an official test split from its own pattern, shards streamed
by worker processes."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

webdataset = pytest.importorskip("webdataset")

from tlbench.datasetlib import wds  # noqa: E402
from tlbench.errors import UserError  # noqa: E402


@pytest.fixture(autouse=True)
def fresh():
    wds.wds_dataset.cache_clear()


def _digits(n: int, start: int = 0):
    from sklearn.datasets import load_digits

    digits = load_digits()
    keep = np.flatnonzero(digits.target < 3)[start : start + n]
    return [(digits.images[i] * 255 / 16).astype(np.uint8) for i in keep], [
        int(digits.target[i]) for i in keep
    ]


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def write_shards(folder, prefix: str, shards: int, per_shard: int, start: int = 0):
    images, labels = _digits(shards * per_shard, start)
    folder.mkdir(parents=True, exist_ok=True)
    for s in range(shards):
        with webdataset.TarWriter(str(folder / f"{prefix}-{s:04d}.tar")) as sink:
            for i in range(s * per_shard, (s + 1) * per_shard):
                sink.write(
                    {"__key__": f"{prefix}{i:05d}", "png": _png(images[i]), "cls": labels[i]}
                )
    return images, labels


def test_brace_pattern_sidecar_classes_and_test_pattern(tmp_path):
    images, labels = write_shards(tmp_path, "train", shards=3, per_shard=7)
    test_images, test_labels = write_shards(tmp_path, "test", shards=1, per_shard=5, start=21)
    (tmp_path / "classes.json").write_text(json.dumps(["zero", "one", "two"]))
    options = {"root": str(tmp_path), "test": "test-0000.tar", "workers": 2}
    assert wds.available("train-{0000..0002}.tar", options) is True
    target = wds.wds_dataset("train-{0000..0002}.tar", options)
    assert target.class_names == ("zero", "one", "two")
    # every shard's samples, in shard order, however the workers interleaved them
    assert target.train.labels.tolist() == labels and len(target.train) == 21
    assert target.test.labels.tolist() == test_labels
    assert np.array_equal(np.asarray(target.train.load(15)), images[15])
    assert np.array_equal(np.asarray(target.test.load(4)), test_images[4])
    assert target.train.load(0).mode == "L" and target.train.images is None
    assert target.card["shards"] == {"train": 3, "test": 1}


def test_without_a_sidecar_classes_are_the_cls_numbers_and_test_is_carved(tmp_path):
    write_shards(tmp_path, "part", shards=2, per_shard=6)
    target = wds.wds_dataset("part-{0000..0001}.tar", {"root": str(tmp_path), "workers": 0})
    assert target.class_names == ("0", "1", "2") and target.test is None
    named = wds.wds_dataset(
        "part-{0000..0001}.tar", {"root": str(tmp_path), "classes": "a,b,c", "workers": 0}
    )
    assert named.class_names == ("a", "b", "c")


def test_fingerprint_changes_when_a_shard_changes(tmp_path):
    write_shards(tmp_path, "s", shards=1, per_shard=6)
    first = wds.wds_dataset("s-0000.tar", {"root": str(tmp_path), "workers": 0}).fingerprint
    wds.wds_dataset.cache_clear()
    write_shards(tmp_path, "s", shards=1, per_shard=6, start=6)
    again = wds.wds_dataset("s-0000.tar", {"root": str(tmp_path), "workers": 0}).fingerprint
    assert first != again


def test_missing_shard_missing_cls_and_too_few_names_are_one_line(tmp_path):
    write_shards(tmp_path, "x", shards=1, per_shard=4)
    with pytest.raises(UserError, match=r"shard '.*x-0001.tar' not found"):
        wds.wds_dataset("x-{0000..0001}.tar", {"root": str(tmp_path), "workers": 0})
    assert "not found" in wds.available("x-{0000..0001}.tar", {"root": str(tmp_path)})
    with pytest.raises(UserError, match="a cls entry is 2 but there are 2 class names"):
        wds.wds_dataset("x-0000.tar", {"root": str(tmp_path), "classes": "a,b", "workers": 0})
    with webdataset.TarWriter(str(tmp_path / "nocls.tar")) as sink:
        sink.write({"__key__": "k0", "png": _png(_digits(1)[0][0])})
    with pytest.raises(UserError, match="sample 'k0' in .*nocls.tar has no cls entry"):
        wds.wds_dataset("nocls.tar", {"root": str(tmp_path), "workers": 0})


def test_a_suite_over_webdataset_shards_runs_end_to_end(tmp_path):
    """The data path reads the tar members lazily, in its DataLoader workers."""
    from click.testing import CliRunner

    from tlbench.cli import cli

    write_shards(tmp_path / "shards", "train", shards=4, per_shard=45)
    write_shards(tmp_path / "shards", "test", shards=1, per_shard=60, start=180)
    suite = tmp_path / "suite.toml"
    suite.write_text(
        f"""
name = "wds-e2e"
seeds = [0]
[[models]]
name = "pixels"
input_size = 8
[[datasets]]
name = "wds:train-{{0000..0003}}.tar"
id = "digit-shards"
root = "{tmp_path / "shards"}"
test = "test-0000.tar"
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
    assert record["status"] == "ok" and record["split"]["sizes"]["test"] == 60
    assert record["metrics"]["top1"] > 80
