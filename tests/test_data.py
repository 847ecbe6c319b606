"""prepare(): timm preprocessing bound to the model, computed once, batched, deterministic."""

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import create_transform

from tlbench.cache import Cache
from tlbench.components import ImageSet, SourceModel, TargetData
from tlbench.data import PreparedData, prepare
from tlbench.datasetlib import local
from tlbench.datasetlib.common import decode_files
from tlbench.errors import UserError

IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225), "crop_mode": "center"}
needs_fashion = pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist").is_dir(),
    reason="apt-get install dataset-fashion-mnist",
)


def source(size=32, interpolation="bilinear", crop_pct=0.875) -> SourceModel:
    config = {
        "input_size": (3, size, size),
        "interpolation": interpolation,
        "crop_pct": crop_pct,
        **IMAGENET,
    }
    return SourceModel(
        name="cfg", arch="none", weights="none", fingerprint="none", data_config=config, build=None
    )


@pytest.fixture(scope="module")
def photos() -> TargetData:
    """Real RGB photo crops (scikit-learn's sample images) of two sizes, as an official test split."""
    from sklearn.datasets import load_sample_images

    china, flower = load_sample_images().images
    crops = np.stack(
        [
            im[y : y + 150, x : x + 200]
            for im in (china, flower)
            for y in (0, 120, 240)
            for x in (0, 200, 400)
        ]
    )
    labels = np.repeat([0, 1], 9)
    sets = ImageSet(labels=labels, images=crops)
    return TargetData("photos", ("china", "flower"), sets, sets, fingerprint="photos-v1")


@pytest.fixture(scope="module")
def digits():
    return local.digits(None, {})


def _timm_reference(images: np.ndarray, config: dict) -> torch.Tensor:
    tf = create_transform(**config, is_training=False)
    return torch.stack([tf(Image.fromarray(img).convert("RGB")) for img in images])


@pytest.mark.parametrize(
    ("size", "interpolation", "crop_pct"),
    [(64, "bilinear", 0.875), (48, "bicubic", 0.95), (224, "bicubic", 0.9)],
)
def test_batched_eval_path_matches_timms_pil_transform(
    photos, tmp_path, size, interpolation, crop_pct
):
    model = source(size, interpolation, crop_pct)
    data = prepare(photos, model, {}, {}, seed=0, cache=Cache(tmp_path))
    assert data.transforms.batched
    ours = torch.cat([x for x, _ in data.batches("test", 7)])
    ref = _timm_reference(photos.test.images, model.data_config)
    diff = (ours - ref).abs()
    # Bilinear matches PIL to 1 grey level; bicubic can differ by a few levels where PIL clamps
    # its intermediate pass, which is why the mean difference is the tight bound.
    assert diff.mean() < 0.004
    assert diff.max() < 10 / 255 / 0.224


def test_lazy_path_based_data_goes_through_timms_pil_transform_exactly(photos, tmp_path):
    paths = []
    for i, image in enumerate(photos.test.images[:6]):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(image[: 100 + 10 * i]).save(paths[-1])  # differing sizes: lazy
    decoded = decode_files(paths, [0, 0, 0, 1, 1, 1])
    assert decoded.imageset.images is None
    target = TargetData(
        "lazy", ("a", "b"), decoded.imageset, decoded.imageset, fingerprint="lazy-v1"
    )
    model = source(40, "bicubic", 0.875)
    data = prepare(target, model, {}, {}, seed=0, cache=Cache(tmp_path / "cache"))
    ours = torch.cat([x for x, _ in data.batches("test", 4)])
    ref = torch.stack(
        [create_transform(**model.data_config)(Image.open(p).convert("RGB")) for p in paths]
    )
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


def test_preprocessing_chunks_are_bounded_by_what_each_path_holds_in_memory(photos, tmp_path):
    from tlbench.data import CHUNK, CHUNK_BYTES

    # Batched transforms hold a float32 intermediate of the source image (150 x 200 x 3).
    batched = prepare(photos, source(224), {}, {}, seed=0, cache=Cache(tmp_path / "a"))
    assert batched._chunk_rows("test", batched.store("test")) == CHUNK_BYTES // (4 * 150 * 200 * 3)
    # The per-image path holds only its uint8 output (224 x 224 x 3): a full chunk, so the
    # DataLoader that fills it starts once per CHUNK images, not once per 42.
    paths = []
    for i, image in enumerate(photos.test.images[:4]):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(image[: 100 + 10 * i]).save(paths[-1])
    lazy_set = decode_files(paths, [0, 0, 1, 1]).imageset
    target = TargetData("lazy", ("a", "b"), lazy_set, lazy_set, fingerprint="lazy-v1")
    lazy = prepare(target, source(224), {}, {}, seed=0, cache=Cache(tmp_path / "b"))
    assert lazy._chunk_rows("test", lazy.store("test")) == min(CHUNK, CHUNK_BYTES // (3 * 224**2))


def test_filling_a_store_takes_every_core_and_batches_for_the_model_leave_one(monkeypatch):
    from tlbench.data import WORKERS_MIN_IMAGES, loader_workers, preprocess_workers

    monkeypatch.setattr("os.cpu_count", lambda: 4)
    monkeypatch.delenv("TLBENCH_LOADER_WORKERS", raising=False)
    files = ImageSet(labels=np.zeros(3, dtype=np.int64), paths=("a", "b", "c"))
    assert (loader_workers(files, 3), preprocess_workers(files, 3)) == (3, 4)
    small = ImageSet(labels=np.zeros(3, dtype=np.int64), images=np.zeros((3, 8, 8), np.uint8))
    assert preprocess_workers(small, WORKERS_MIN_IMAGES - 1) == 0  # workers would cost more
    monkeypatch.setenv("TLBENCH_LOADER_WORKERS", "2")
    assert (loader_workers(files, 3), preprocess_workers(files, 3)) == (2, 2)


def test_grayscale_is_replicated_to_three_channels_by_default(digits, tmp_path):
    data = prepare(
        digits, source(32), {}, {"input_adaptation": "replicate"}, seed=0, cache=Cache(tmp_path)
    )
    x, _ = next(data.batches("train", 16))
    assert data.in_chans == 3 and data.input_size == (3, 32, 32) and x.shape == (16, 3, 32, 32)
    mean, std = (
        torch.tensor(IMAGENET["mean"]).view(1, 3, 1, 1),
        torch.tensor(IMAGENET["std"]).view(1, 3, 1, 1),
    )
    pixels = x * std + mean
    torch.testing.assert_close(pixels[:, 0], pixels[:, 1], atol=1e-5, rtol=0)
    torch.testing.assert_close(pixels[:, 0], pixels[:, 2], atol=1e-5, rtol=0)


def test_stem_adaptation_keeps_one_channel_with_averaged_statistics(digits, tmp_path):
    data = prepare(
        digits, source(32), {}, {"input_adaptation": "stem"}, seed=0, cache=Cache(tmp_path)
    )
    x, _ = next(data.batches("val", 8))
    assert data.in_chans == 1 and x.shape == (8, 1, 32, 32)
    assert data.data_config["mean"] == pytest.approx((np.mean(IMAGENET["mean"]),))
    assert data.data_config["std"] == pytest.approx((np.mean(IMAGENET["std"]),))
    assert data.data_config["input_size"] == (1, 32, 32)


def test_shuffled_batches_are_a_seeded_permutation_with_matching_labels(digits, tmp_path):
    data = prepare(digits, source(16), {"train_size": 200}, {}, seed=0, cache=Cache(tmp_path))
    plain = torch.cat([x for x, _ in data.batches("train", 32)])
    labels = data.labels("train")

    def run(seed):
        xs, ys = zip(*data.batches("train", 32, shuffle=True, seed=seed), strict=True)
        return torch.cat(xs), torch.cat(ys)

    (xa, ya), (xb, yb), (xc, _) = run(1), run(1), run(2)
    assert torch.equal(xa, xb) and torch.equal(ya, yb) and not torch.equal(xa, xc)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(1))
    assert torch.equal(xa, plain[order]) and torch.equal(ya, labels[order])


def test_batches_come_in_the_requested_memory_format_with_the_same_values(digits, tmp_path):
    # digits is grayscale under RGB stats: the normalisation itself replicates the channel.
    data = prepare(digits, source(16), {"train_size": 100}, {}, seed=0, cache=Cache(tmp_path))
    for augment in (False, True):
        plain, nhwc = (
            torch.cat([x for x, _ in data.batches("train", 32, augment=augment, seed=3, **fmt)])
            for fmt in ({}, {"memory_format": torch.channels_last})
        )
        first = next(
            data.batches("train", 32, augment=augment, seed=3, memory_format=torch.channels_last)
        )[0]
        assert first.shape == (32, 3, 16, 16)
        assert first.is_contiguous(memory_format=torch.channels_last)
        assert plain.is_contiguous() and torch.equal(plain, nhwc)


def test_augmentation_is_deterministic_per_seed_and_independent_of_batch_size(digits, tmp_path):
    data = prepare(digits, source(24), {"train_size": 100}, {}, seed=0, cache=Cache(tmp_path))
    random.seed(123)
    expected_next = random.random()
    random.seed(123)

    def run(seed, batch_size):
        return torch.cat([x for x, _ in data.batches("train", batch_size, augment=True, seed=seed)])

    a, b, c = run(5, 16), run(5, 40), run(6, 16)
    assert random.random() == expected_next  # the caller's RNG state is untouched
    assert torch.equal(a, b) and not torch.equal(a, c)
    eval_x = torch.cat([x for x, _ in data.batches("train", 16)])
    assert a.shape == eval_x.shape and not torch.equal(a, eval_x)


def test_eval_preprocessing_is_computed_once_per_image_into_one_store_every_seed_shares(
    digits, tmp_path, monkeypatch
):
    computed = []
    original = PreparedData._preprocess

    def counting(self, image_set, rows):
        computed.extend(rows.tolist())
        return original(self, image_set, rows)

    monkeypatch.setattr(PreparedData, "_preprocess", counting)
    first = prepare(digits, source(32), {}, {}, seed=0, cache=Cache(tmp_path))
    x1 = torch.cat([x for x, _ in first.batches("test", 64)])
    assert sorted(computed) == sorted(first.indices("test").tolist())
    second = prepare(digits, source(32), {}, {}, seed=0, cache=Cache(tmp_path))  # a new process
    x2 = torch.cat([x for x, _ in second.batches("test", 64)])
    assert torch.equal(x1, x2) and len(computed) == first.size("test")  # read, not recomputed
    other_seed = prepare(digits, source(32), {}, {}, seed=1, cache=Cache(tmp_path))
    x3 = torch.cat([x for x, _ in other_seed.batches("train", 64)])
    assert len(computed) == len(set(computed))  # no image preprocessed twice
    assert set(computed) == {*first.indices("test").tolist(), *other_seed.indices("train")}
    assert torch.equal(x3, torch.cat([x for x, _ in other_seed.batches("train", 7)]))
    stores = list((tmp_path / "prepared").glob("*.u8"))
    assert len(stores) == 1  # one store of the image set, no per-seed copies
    assert stores[0].stat().st_size == len(digits.train) * 1 * 32 * 32


def test_fingerprint_changes_with_everything_that_changes_content(digits, tmp_path):
    cache = Cache(tmp_path)
    base = prepare(digits, source(32), {}, {}, seed=0, cache=cache)
    same = prepare(digits, source(32), {}, {}, seed=0, cache=cache)
    assert base.fingerprint("train") == same.fingerprint("train")
    variants = [
        prepare(digits, source(32), {}, {}, seed=1, cache=cache).fingerprint("train"),
        prepare(digits, source(32), {"shots": 5}, {}, seed=0, cache=cache).fingerprint("train"),
        prepare(digits, source(48), {}, {}, seed=0, cache=cache).fingerprint("train"),
        prepare(digits, source(32, "bicubic"), {}, {}, seed=0, cache=cache).fingerprint("train"),
        prepare(
            digits, source(32), {}, {"input_adaptation": "stem"}, seed=0, cache=cache
        ).fingerprint("train"),
        base.fingerprint("val"),
        base.fingerprint("trainval"),
    ]
    assert len({base.fingerprint("train"), *variants}) == len(variants) + 1


def test_vtab1k_trainval_is_train_then_val(tmp_path, photos):
    images, labels = local.digits(None, {}).train.images, local.digits(None, {}).train.labels
    target = TargetData(
        "d",
        tuple("0123456789"),
        ImageSet(labels=labels[:1300], images=images[:1300]),
        ImageSet(labels=labels[1300:], images=images[1300:]),
        "d-split",
    )
    data = prepare(target, source(16), {"protocol": "vtab1k"}, {}, seed=0, cache=Cache(tmp_path))
    assert (data.size("train"), data.size("val"), data.size("trainval"), data.size("test")) == (
        800,
        200,
        1000,
        497,
    )
    trainval = torch.cat([x for x, _ in data.batches("trainval", 256)])
    parts = torch.cat([torch.cat([x for x, _ in data.batches(s, 256)]) for s in ("train", "val")])
    assert torch.equal(trainval, parts)
    assert torch.equal(
        data.labels("trainval"), torch.cat([data.labels("train"), data.labels("val")])
    )
    assert (
        data.split_record["sizes"]["trainval"] == 1000
        and data.card["split"]["protocol"] == "vtab1k"
    )


@needs_fashion
def test_fashion_mnist_test_split_is_stored_compactly_as_uint8(tmp_path):
    target = local.fashion_mnist(None, {})
    data = prepare(target, source(64), {"train_size": 100}, {}, seed=0, cache=Cache(tmp_path))
    stored = data.stored("test")
    assert stored.dtype == torch.uint8 and stored.shape == (
        10000,
        1,
        64,
        64,
    )  # 41 MB, not 490 MB of float
    x, y = next(data.batches("test", 500, device="cpu"))
    assert x.shape == (500, 3, 64, 64) and x.dtype == torch.float32 and y.dtype == torch.int64


def test_unknown_split_is_a_user_error(digits, tmp_path):
    data = prepare(digits, source(16), {}, {}, seed=0, cache=Cache(tmp_path))
    with pytest.raises(UserError, match="unknown split 'valid'"):
        data.size("valid")
    with pytest.raises(UserError, match="unknown split 'dev'"):
        next(data.batches("dev", 4))
