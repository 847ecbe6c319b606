"""End to end through the CLI with the built-in components on real data, offline: packaged
ImageNet weights, a local checkpoint, a self-pretrained source and a from-scratch baseline, on
digits, fashion-mnist (VTAB-1k protocol) and an image folder of real images."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from tlbench.cli import cli


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """Real images in class folders: scikit-learn's digits, written as PNG files."""
    from PIL import Image
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("folder")
    digits = load_digits()
    for i, (pixels, label) in enumerate(zip(digits.images[:300], digits.target[:300], strict=True)):
        folder = root / f"class_{label}"
        folder.mkdir(exist_ok=True)
        Image.fromarray((pixels * 15.9375).astype("uint8")).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def local_checkpoint(tmp_path_factory):
    """The packaged ImageNet weights saved as a user's own .safetensors file."""
    from safetensors.torch import save_file

    from tlbench.builtin.model_sources import efficientnet_lite0_in1k
    from tlbench.cache import Cache
    from tlbench.components import BuildContext

    source = efficientnet_lite0_in1k(
        None,
        {"input_size": None, "input_adaptation": "replicate"},
        BuildContext(cache=Cache(), device="cpu"),
    )
    path = tmp_path_factory.mktemp("ckpt") / "lite0.safetensors"
    save_file({k: v.contiguous() for k, v in source.build(0).state_dict().items()}, str(path))
    return path


@pytest.mark.slow
def test_mixed_sources_and_datasets_run_end_to_end_and_report(
    tmp_path, image_folder, local_checkpoint
):
    suite = tmp_path / "e2e.toml"
    suite.write_text(
        f"""
name = "e2e"
seeds = [0]
estimators = ["logme", "leep"]

[[models]]
name = "efficientnet_lite0.in1k"
id = "packaged"
input_size = 32

[[models]]
name = "file:tf_efficientnet_lite0"
id = "local-file"
path = "{local_checkpoint}"
input_size = 32

[[models]]
name = "self-pretrained:test_efficientnet"
id = "self-pretrained"
source_dataset = "fashion-mnist"
source_train_size = 600
epochs = 1
input_size = 32

[[models]]
name = "scratch:tf_efficientnet_lite0"
id = "scratch"
input_size = 32

[[datasets]]
name = "digits"
train_size = 400

[[datasets]]
name = "fashion-mnist"
protocol = "vtab1k"
test_size = 500

[[datasets]]
name = "imagefolder"
id = "folder"
root = "{image_folder}"

[[strategies]]
name = "linear-probe"
l2 = [1e-2, 1.0]           # two strengths: the search, the refit and the records, at a test's cost
refine_steps = 1
"""
    )
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(
        cli, ["run", str(suite), "--out", str(run_dir), "--device", "cpu"], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (run_dir / "cells.jsonl").read_text().splitlines()]
    assert len(records) == 12 and all(r["status"] == "ok" for r in records)
    by_cell = {(r["model"], r["dataset"]): r for r in records}

    # The same weights, packaged or from a local file, give the same features and accuracy.
    for dataset in ("digits", "fashion-mnist", "folder"):
        assert (
            by_cell[("packaged", dataset)]["metrics"]["top1"]
            == by_cell[("local-file", dataset)]["metrics"]["top1"]
        )

    # Every record says what produced it.
    record = by_cell[("packaged", "fashion-mnist")]
    assert record["split"]["sizes"]["train"] == 800 and record["split"]["sizes"]["val"] == 200
    assert record["split"]["hash"]
    assert record["model_card"]["input_size_override"] == 32
    assert record["cost"]["trainable_params"] > 0 and record["cost"]["wall_s"] > 0
    assert record["hparams"], "the chosen regularisation strength is recorded"
    assert all(r["metrics"]["top1"] > 40 for r in records), (
        "every linear probe learns far above chance"
    )

    # Estimates were recorded for every (model, dataset); LEEP needs a source head.
    estimates = [
        json.loads(line) for line in (run_dir / "estimates.jsonl").read_text().splitlines()
    ]
    logme = [e for e in estimates if e["estimator"] == "logme"]
    assert len(logme) == 12 and all(e["status"] == "ok" for e in logme)
    leep = {(e["model"], e["dataset"]): e["status"] for e in estimates if e["estimator"] == "leep"}
    assert leep[("packaged", "digits")] == "ok" and leep[("scratch", "digits")] == "skipped"

    # The terminal table was printed, and the Markdown report carries the transferability section.
    assert "linear-probe" in result.output and "packaged" in result.output
    report = CliRunner().invoke(cli, ["report", str(run_dir), "--format", "md"])
    assert report.exit_code == 0, report.output
    assert "Transferability estimation" in report.output and "kendall_tau" in report.output


def test_installed_peft_plugin_runs_lora_through_the_cli(tmp_path):
    """plugins/tlbench-peft is its own distribution (installed by `make setup`); its entry point
    brings the lora strategy, and a suite requiring it runs end to end."""
    suite = tmp_path / "lora.toml"
    suite.write_text(
        """
name = "lora"
requires = ["tlbench-peft>=0.1"]
[[models]]
name = "efficientnet_lite0.in1k"
input_size = 32
[[datasets]]
name = "digits"
train_size = 300
[[strategies]]
name = "lora"
lr = 3e-3
epochs = 1
refit = false
"""
    )
    listed = CliRunner().invoke(cli, ["plugins"], env={"COLUMNS": "200"})
    assert "peft" in listed.output and "register_strategies" in listed.output
    result = CliRunner().invoke(
        cli, ["run", str(suite), "--out", str(tmp_path / "run"), "-q", "--json"]
    )
    assert result.exit_code == 0, result.output
    (record,) = json.loads(result.stdout)
    assert record["status"] == "ok" and record["strategy"] == "lora"
    assert 0 < record["cost"]["trainable_params"] < record["cost"]["total_params"] / 5
    assert record["metrics"]["top1"] > 20, "one epoch of LoRA on digits learns far above chance"


def test_a_suite_requiring_a_missing_plugin_fails_before_any_work(tmp_path):
    suite = tmp_path / "needs.toml"
    suite.write_text(
        'requires = ["tlbench-nonexistent>=1"]\nmodels = ["scratch:resnet18"]\ndatasets = ["digits"]\nstrategies = ["linear-probe"]\n'
    )
    result = CliRunner().invoke(cli, ["run", str(suite), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert "requires" in result.output and "tlbench-nonexistent" in result.output
    assert not (tmp_path / "run" / "cells.jsonl").exists()


def test_layer_choice_and_frozen_feature_strategies_run_from_a_suite(tmp_path):
    """surgical (one cell per block), partial-unfreeze by name, L2-SP, k-NN and NCM, as a user
    writes them in a suite; every fine-tuning record names the groups it trained."""
    suite = tmp_path / "choice.toml"
    suite.write_text(
        """
name = "choice"
[[models]]
name = "efficientnet_lite0.in1k"
input_size = 32
[[datasets]]
name = "digits"
train_size = 300
[[strategies]]
name = "surgical"
block = ["first", "last"]
lr = 3e-3
epochs = 1
refit = false
[[strategies]]
name = "partial-unfreeze"
groups = "blocks.6"
unit = "stage"
lr = 3e-3
epochs = 1
refit = false
[[strategies]]
name = "l2-sp"
lr = 1e-2
epochs = 1
refit = false
[[strategies]]
name = "knn"
[[strategies]]
name = "ncm"
"""
    )
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(cli, ["run", str(suite), "--out", str(run_dir), "-q", "--json"])
    assert result.exit_code == 0, result.output
    records = {r["strategy"]: r for r in json.loads(result.stdout)}
    assert len(records) == 6 and all(r["status"] == "ok" for r in records.values())
    first, last = (r for name, r in records.items() if name.startswith("surgical"))
    assert first["hparams"]["trained_groups"][0] != last["hparams"]["trained_groups"][0]
    unfrozen = records["partial-unfreeze"]
    assert unfrozen["hparams"]["trained_groups"][0].startswith("blocks.6")
    assert 0 < unfrozen["cost"]["trainable_pct"] < 100
    assert records["l2-sp"]["cost"]["trainable_params"] == records["l2-sp"]["cost"]["total_params"]
    assert {"knn", "ncm"} <= set(records)
    top1 = {name: r["metrics"]["top1"] for name, r in records.items()}
    assert all(value > 20 for value in top1.values()), top1  # twice chance: each one learns
