"""Work shared across the grid: frozen features and prefix activations stored per image (seeds,
strategies, later processes and runs read them; no image is computed twice), LP-FT reading the
linear probe's fit when it scales features the same way, and the dry-run plan saying so.

Tests marked ``device`` run on ``$TLBENCH_TEST_DEVICE`` (default cpu): benchmarks/gpu_check.sh
runs them on CUDA. Real digits and efficientnet-lite0 at 32 px."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from tlbench.cache import Cache
from tlbench.components import Cell, CellContext
from tlbench.engine.features import Reuse, _run_frozen, extract_features
from tlbench.specs import resolve_options

PX = 32
SIZES = {"train_size": 200, "val_size": 100, "test_size": 200}
DEVICE = torch.device(os.environ.get("TLBENCH_TEST_DEVICE", "cpu"))


@pytest.fixture(scope="module")
def digits_by_seed(lite0, tmp_path_factory):
    """seed -> digits prepared for lite0 (same options as ``digits_data``, another seed)."""
    from tlbench.components import BuildContext
    from tlbench.data import prepare
    from tlbench.datasetlib.local import digits
    from tlbench.specs import COMMON_OPTIONS

    cache = Cache(tmp_path_factory.mktemp("prep"))
    target = digits(None, {}, BuildContext(cache=cache, device="cpu"))
    options = resolve_options(COMMON_OPTIONS["dataset"], SIZES)
    model_options = {"input_size": PX, "input_adaptation": "replicate"}
    made = {}

    def get(seed: int):
        if seed not in made:
            made[seed] = prepare(target, lite0, options, model_options, seed, cache)
        return made[seed]

    return get


def counting_backbone(lite0, data, builds: list):
    def backbone():
        builds.append(1)
        return lite0.build(num_classes=0, in_chans=data.in_chans, seed=0)

    return backbone


def banked(lite0, data, split, cache, builds=None, device=DEVICE):
    reuse = Reuse()
    feats, labels = extract_features(
        counting_backbone(lite0, data, builds if builds is not None else []),
        data,
        split,
        device=device,
        precision="fp32",
        cache=cache,
        weights_fingerprint=lite0.fingerprint,
        reuse_out=reuse,
    )
    return feats, labels, reuse


@pytest.mark.device
def test_outputs_copied_to_the_host_arrive_whole_and_pinned_on_cuda():
    from tlbench.engine.runtime import to_host, wait_for_host_copies

    batches = [torch.randn(64, 1280, device=DEVICE) * i for i in range(4)]
    copies = [to_host(batch) for batch in batches]  # queued, no wait per batch on CUDA
    wait_for_host_copies(DEVICE)
    for copy, batch in zip(copies, batches, strict=True):
        assert copy.device.type == "cpu" and torch.equal(copy, batch.cpu())
        assert copy.is_pinned() == (DEVICE.type == "cuda")


@pytest.mark.device
@pytest.mark.slow
def test_banked_features_equal_a_fresh_extraction(lite0, digits_by_seed, tmp_path):
    data = digits_by_seed(0)
    cache = Cache(tmp_path)
    banked(lite0, data, "val", cache)  # the bank now holds val's images, computed in other batches
    model = lite0.build(num_classes=0, in_chans=data.in_chans, seed=0).eval().to(DEVICE)
    model = model.to(memory_format=torch.channels_last)
    for split in ("val", "train", "test"):
        ours, labels, _ = banked(lite0, data, split, cache)
        fresh, fresh_labels = _run_frozen(model, data, split, DEVICE, "fp32", 64)
        assert torch.equal(labels, fresh_labels)
        # One forward pass, so rounding is not amplified; but oneDNN picks kernels by batch shape
        # (AVX-512 builds round differently for other batch sizes), so bit-equality would hold on
        # some CPUs only (issue 26).
        tol = 1e-3 if DEVICE.type != "cpu" else 1e-5
        torch.testing.assert_close(ours, fresh, rtol=tol, atol=tol * fresh.abs().max().item())


def test_a_second_seed_computes_only_the_images_the_first_did_not(lite0, digits_by_seed, tmp_path):
    cache, builds = Cache(tmp_path), []
    first, second = digits_by_seed(0), digits_by_seed(1)
    seen = set()
    for split in ("train", "val"):
        _, _, reuse = banked(lite0, first, split, cache, builds)
        assert (reuse.computed, reuse.reused) == (first.size(split), 0)
        seen |= set(first.indices(split).tolist())
    for split in ("train", "val"):
        rows = set(second.indices(split).tolist())
        _, _, reuse = banked(lite0, second, split, cache, builds)
        assert reuse.computed == len(rows - seen) and reuse.reused == len(rows & seen)
        seen |= rows
    assert len(builds) == 4  # each request with a missing image builds the backbone once
    _, _, reuse = banked(lite0, second, "train", cache, builds)
    assert (reuse.computed, reuse.reused) == (0, second.size("train")) and len(builds) == 4


def test_another_process_reads_the_bank_from_disk_without_building_the_model(
    lite0, digits_by_seed, tmp_path
):
    data = digits_by_seed(0)
    first, _, _ = banked(lite0, data, "test", Cache(tmp_path))
    builds = []
    again, _, reuse = banked(lite0, data, "test", Cache(tmp_path), builds)
    assert builds == [] and reuse.computed == 0 and torch.equal(first, again)


def test_a_part_lost_from_disk_is_computed_again(lite0, digits_by_seed, tmp_path):
    data = digits_by_seed(0)
    first, _, _ = banked(lite0, data, "val", Cache(tmp_path))
    for payload in (tmp_path / "features").glob("*/*.pt"):
        payload.unlink()
    again, _, reuse = banked(lite0, data, "val", Cache(tmp_path))
    assert reuse.computed == data.size("val") and torch.equal(first, again)


def test_without_a_cache_nothing_is_shared(lite0, digits_by_seed):
    data, cache = digits_by_seed(0), Cache(enabled=False)
    for _ in range(2):
        _, _, reuse = banked(lite0, data, "val", cache)
        assert (reuse.computed, reuse.reused) == (data.size("val"), 0)


# ------------------------------------------------------------------------------ strategies


def run_cell(lite0, data, cache, strategy, seed=0, device=DEVICE, **given):
    from tlbench.builtin.strategies import SPECS

    spec = {s.name: s for s in SPECS}[strategy]
    options = resolve_options(spec.options, given)
    cell = Cell(
        "t", lite0.name, "digits", strategy, seed, lite0.name, "digits", strategy, {}, {}, options
    )
    ctx = CellContext(
        cell=cell,
        source=lite0,
        data=data,
        device=device,
        cache=cache,
        seed=seed,
        log=lambda m: None,
    )
    return spec.load_factory()(options).run(ctx)


QUICK = {"epochs": 1, "lr": [1e-4], "batch_size": 32, "refit": False}


@pytest.fixture
def quick_probe(monkeypatch):
    """Probes solved to a small iteration cap: these tests are about what is shared, not about
    the optimum (tests/test_logistic.py is); the cap is part of every cached probe's key."""
    import tlbench.engine.logistic as logistic

    monkeypatch.setattr(logistic, "DEFAULT_MAX_ITER", 30)


@pytest.mark.slow
def test_linear_probe_cells_record_features_computed_and_reused(
    lite0, digits_by_seed, tmp_path, quick_probe
):
    cache, data = Cache(tmp_path), digits_by_seed(0)
    images = sum(data.size(s) for s in ("train", "val", "test"))
    first = run_cell(lite0, data, cache, "linear-probe")
    again = run_cell(lite0, data, cache, "linear-probe")
    assert (first.cost["features_computed"], first.cost["features_reused"]) == (images, 0)
    assert (again.cost["features_computed"], again.cost["features_reused"]) == (0, images)
    assert first.metrics == again.metrics


@pytest.mark.slow
def test_lp_ft_starts_from_the_linear_probe_head_when_it_scales_features_the_same_way(
    lite0, digits_by_seed, tmp_path, quick_probe
):
    cache, data = Cache(tmp_path), digits_by_seed(0)
    probe = run_cell(lite0, data, cache, "linear-probe")
    shared = run_cell(lite0, data, cache, "lp-ft", probe_scaling="feature", **QUICK)
    assert shared.hparams["probe_shared"] is True
    assert shared.hparams["probe_l2"] == probe.hparams["l2"]
    assert shared.hparams["sweep_probe"] == probe.hparams["sweep"]
    assert shared.cost["features_computed"] == 0  # the probe cell's features, read back
    own = run_cell(lite0, data, cache, "lp-ft", **QUICK)  # global scaling: another fit
    assert own.hparams["probe_scaling"] == "global" and own.hparams["probe_shared"] is False
    assert own.cost["features_computed"] == 0


@pytest.mark.slow
def test_seeds_share_prefix_activations_of_the_images_they_have_in_common(
    lite0, digits_by_seed, tmp_path
):
    cache = Cache(tmp_path)
    first, second = digits_by_seed(0), digits_by_seed(1)
    a = run_cell(lite0, first, cache, "partial-unfreeze", k=1, **QUICK)
    b = run_cell(lite0, second, cache, "partial-unfreeze", seed=1, k=1, **QUICK)
    rows = lambda d: set(np.concatenate([d.indices(s) for s in ("train", "val", "test")]).tolist())  # noqa: E731
    assert a.cost["prefix_computed"] == len(rows(first)) and a.cost["prefix_reused"] == 0
    assert b.cost["prefix_computed"] == len(rows(second) - rows(first))
    assert b.cost["prefix_reused"] == len(rows(second) & rows(first)) > 0


@pytest.mark.device
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.slow
def test_fine_tuning_with_a_halving_sweep_runs_on_the_device(
    lite0, digits_by_seed, tmp_path, precision
):
    options = {
        "k": 1,
        "epochs": 2,
        "lr": [3e-3, 3e-2],
        "batch_size": 32,
        "refit": True,
        "grace_epochs": 1,  # a cut after one epoch, at a test's cost
    }
    result = run_cell(
        lite0,
        digits_by_seed(0),
        Cache(tmp_path),
        "partial-unfreeze",
        precision=precision,
        **options,
    )
    assert (
        result.cost["device"].startswith(DEVICE.type) and result.hparams["precision"] == precision
    )
    assert result.hparams["sweep_schedule"]["pruned"] == 1
    assert 0 <= result.metrics["top1"] <= 100 and result.predictions is not None


@pytest.mark.device
@pytest.mark.slow
def test_full_fine_tuning_and_the_linear_probe_run_on_the_device(
    lite0, digits_by_seed, tmp_path, quick_probe
):
    cache, data = Cache(tmp_path), digits_by_seed(0)
    full = run_cell(lite0, data, cache, "full-finetune", **QUICK)
    probe = run_cell(lite0, data, cache, "linear-probe")
    assert full.cost["prefix_cache"] is False and full.cost["throughput_img_s"] > 0
    assert probe.metrics["top1"] > 50  # 10 classes; ImageNet features separate digits well


# ------------------------------------------------------------------------------ the plan


def test_the_dry_run_plan_says_what_is_shared_and_how_sweeps_run(write_suite, tmp_path):
    from click.testing import CliRunner

    from tlbench.cli import cli

    suite = write_suite(
        """
name = "shared"
seeds = [0, 1]
[[models]]
name = "efficientnet_lite0.in1k"
[[datasets]]
name = "digits"
[[strategies]]
name = "linear-probe"
[[strategies]]
name = "full-finetune"
[[strategies]]
name = "partial-unfreeze"
lr = [1e-3]
[[strategies]]
name = "lp-ft"
id = "lp-ft-grid"
sweep = "grid"
"""
    )
    args = ["run", str(suite), "--dry-run", "--cache-dir", str(tmp_path / "cache")]
    plan = json.loads(CliRunner().invoke(cli, [*args, "--json"]).stdout)
    assert plan["shared_work"]["feature_pools"] == 1
    # full-finetune and lp-ft sweep three learning rates each; partial-unfreeze has one here.
    assert plan["shared_work"]["sweeps"] == {"asha": 2, "grid": 2, "candidates": 12}
    text = " ".join(CliRunner().invoke(cli, args).output.split())
    assert "1 per-image feature pools serve 8 cells" in text
    assert "2 by successive halving" in text and "2 every candidate to its end" in text
