"""The training engine: features and their cache, logistic-regression heads, prefix splitting,
out-of-memory retry. Small real data (scikit-learn digits) and real weights (efficientnet-lite0)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from tlbench.cache import Cache
from tlbench.engine import (
    extract_features,
    fit_logistic,
    search_logistic,
    split_frozen_prefix,
    with_oom_retry,
)
from tlbench.engine.features import features_key

PX = 32


@pytest.fixture(scope="module")
def digits_arrays():
    x, y = load_digits(return_X_y=True)
    order = np.random.RandomState(0).permutation(len(y))
    x, y = torch.tensor(x[order], dtype=torch.float32), torch.tensor(y[order])
    return (x[:900], y[:900]), (x[900:1300], y[900:1300])


def test_fit_logistic_matches_scikit_learn_on_the_same_objective(digits_arrays):
    (xtr, ytr), (xva, yva) = digits_arrays
    l2 = 1e-2
    ours = fit_logistic(xtr, ytr, 10, l2=l2).top1(xva, yva)
    scaler = StandardScaler().fit(xtr.numpy())
    theirs = LogisticRegression(C=1 / (l2 * len(ytr)), max_iter=1000).fit(
        scaler.transform(xtr.numpy()), ytr.numpy()
    )
    assert abs(ours - 100 * theirs.score(scaler.transform(xva.numpy()), yva.numpy())) <= 1.0
    assert ours > 90


def test_search_logistic_refines_around_the_best_grid_point(digits_arrays):
    train, val = digits_arrays
    grid = (1e-4, 1e-2, 1.0, 100.0)
    search = search_logistic(train, val, 10, grid=grid, refine_steps=2)
    tried = {row["l2"]: row["val_top1"] for row in search.tried}
    assert set(grid) <= set(tried) and len(tried) == len(grid) + 4
    assert search.val_top1 == pytest.approx(max(tried.values()), abs=1e-3)
    assert tried[100.0] < search.val_top1  # the strongest penalty underfits digits


def test_feature_scaling_is_invariant_to_per_dimension_rescaling_and_global_scaling_is_not(
    digits_arrays,
):
    (xtr, ytr), (xva, _) = digits_arrays
    rescale = torch.ones(xtr.shape[1])
    rescale[::2] = 50.0  # every other pixel in other units

    def logits(x_train, x_val, scaling):
        head = fit_logistic(x_train, ytr, 10, l2=1e-2, scaling=scaling)
        return head.logits(x_val)

    for scaling in ("feature", "global"):
        # One common unit change never matters: both scalings divide it out.
        # (up to the solver's tolerance)
        gap = logits(xtr * 3.0, xva * 3.0, scaling) - logits(xtr, xva, scaling)
        assert gap.abs().max() < 0.05
    gap = logits(xtr * rescale, xva * rescale, "feature") - logits(xtr, xva, "feature")
    assert gap.abs().max() < 0.05
    # "global" keeps the penalty on the head as applied to raw features, so units matter.
    gap = logits(xtr * rescale, xva * rescale, "global") - logits(xtr, xva, "global")
    assert gap.abs().max() > 1.0
    with pytest.raises(ValueError, match="scaling"):
        fit_logistic(xtr, ytr, 10, l2=1e-2, scaling="none")


def test_features_are_computed_once_then_read_from_the_cache(lite0, digits_data, tmp_path):
    builds = []

    def backbone():
        builds.append(1)
        return lite0.build(num_classes=0, in_chans=digits_data.in_chans, seed=0)

    kwargs = dict(device="cpu", cache=Cache(tmp_path), weights_fingerprint=lite0.fingerprint)
    first = extract_features(backbone, digits_data, "val", **kwargs)
    kwargs["cache"] = Cache(tmp_path)  # a new process: only the disk copy is left
    second = extract_features(backbone, digits_data, "val", **kwargs)
    assert len(builds) == 1
    assert torch.equal(first[0], second[0]) and first[0].shape == (100, 1280)
    assert torch.equal(first[1], digits_data.labels("val"))


def test_feature_cache_key_changes_with_everything_that_changes_features(lite0, digits_data):
    base = features_key(digits_data, "train", lite0.fingerprint, "fp32")
    assert base != features_key(digits_data, "val", lite0.fingerprint, "fp32")
    assert base != features_key(digits_data, "train", lite0.fingerprint, "bf16")
    assert base != features_key(digits_data, "train", "random:tf_efficientnet_lite0:seed0", "fp32")


def test_prefix_split_reproduces_the_full_forward(lite0):
    model = lite0.build(num_classes=10, in_chans=3, seed=0).eval()
    for name, param in model.named_parameters():
        param.requires_grad_(name.startswith(("blocks.6", "conv_head", "bn2", "classifier")))
    x = torch.randn(4, 3, PX, PX)
    cut = split_frozen_prefix(model, x)
    assert cut is not None and cut.boundary == "blocks.6.0"
    with torch.no_grad():
        assert torch.allclose(cut.forward_suffix(cut.prefix(x)), model(x), atol=1e-4)


class _Residual(torch.nn.Module):
    """Children whose forward is not a chain: the split must refuse it."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Conv2d(3, 3, 1)
        self.b = torch.nn.Conv2d(3, 3, 1)
        self.classifier = torch.nn.Linear(3, 2)

    def forward_features(self, x):
        return self.b(self.a(x) + x)

    def forward_head(self, x):
        return self.classifier(x.mean((2, 3)))

    def get_classifier(self):
        return self.classifier


def test_prefix_split_refuses_models_that_are_not_a_chain():
    model = _Residual()
    model.a.requires_grad_(False)
    assert split_frozen_prefix(model, torch.randn(2, 3, 8, 8)) is None


def test_out_of_memory_halves_the_batch_size_until_it_fits():
    def step(batch_size):
        if batch_size > 16:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return batch_size * 2

    assert with_oom_retry(step, 64) == (32, 16)
    with pytest.raises(ValueError):
        with_oom_retry(lambda bs: (_ for _ in ()).throw(ValueError("not memory")), 64)


def test_precise_bn_sets_running_statistics_to_the_training_split_average():
    """bn = "train": after an epoch, running statistics are re-estimated over the training split,
    so eval mode normalises as training did (stale momentum-0.01 averages wreck accuracy)."""
    from tlbench.engine.training import recalibrate_bn

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4, momentum=0.01))
    data = torch.randn(64, 3, 8, 8) * 3 + 5

    class Feeder:
        def batches(self, split, batch_size, *, shuffle, seed):
            for start in range(0, len(data), batch_size):
                yield data[start : start + batch_size], None

        def forward(self, x):
            return model(x)

    model.train()
    recalibrate_bn(model, Feeder(), "train", 16, 0, torch.device("cpu"), "fp32")
    with torch.no_grad():
        conv = model[0](data)
    expected = conv.mean(dim=(0, 2, 3))
    assert torch.allclose(model[1].running_mean, expected, atol=1e-4)
    assert model[1].momentum == 0.01, "the layer's own momentum is restored"
