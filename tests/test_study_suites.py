"""The shipped study suites are valid and say what they test: every findings suite states its
expected direction at the top, the layer study draws its curve from one entry, and the
transferability zoo is large enough for a rank correlation to reach significance."""

from __future__ import annotations

import math

import pytest

from tlbench.suite import expand_cells, load_suite

FINDINGS = ("pretraining-gain-vs-data", "yosinski-layer-transfer", "lp-ft-under-shift")


@pytest.fixture(scope="module")
def registry():
    from tlbench.plugins import load_plugins

    return load_plugins(load_entrypoints=False).registry


@pytest.mark.parametrize("name", FINDINGS)
def test_each_findings_suite_is_valid_and_states_its_expected_direction(name, registry, repo_root):
    path = repo_root / "suites" / "findings" / f"{name}.toml"
    header = path.read_text().split("\nname = ", 1)[0]
    assert "EXPECTED DIRECTION:" in header and "Protocol (0.3)" in header
    suite = load_suite(path, registry)
    assert len(suite.seeds) >= 3  # seed intervals


def test_the_layer_study_is_one_entry_expanded_into_the_whole_curve(registry, repo_root):
    suite = load_suite(repo_root / "suites" / "findings" / "yosinski-layer-transfer.toml", registry)
    layer = [c for c in expand_cells(suite) if c.strategy_ref == "layer-transfer" and c.seed == 0]
    keeps = {(c.strategy_options["keep"], c.strategy_options["mode"]) for c in layer}
    assert keeps == {(n, m) for n in range(9) for m in ("frozen", "finetune")} - {(0, "frozen")}


def test_the_pretraining_gain_suite_trains_small_sets_longer_and_scratch_three_times_as_long(
    registry, repo_root
):
    suite = load_suite(
        repo_root / "suites" / "findings" / "pretraining-gain-vs-data.toml", registry
    )
    budget = {}
    for cell in expand_cells(suite):
        options = cell.strategy_options
        assert options["scratch_epochs"] == 3 * options["epochs"]  # He et al.: scratch needs longer
        assert options["grace_epochs"] < options["patience"] < options["epochs"]
        budget[cell.dataset_options["train_size"]] = (options["epochs"], options["patience"])
    sizes = sorted(budget)
    assert sizes == [100, 300, 1000]
    # Fewer examples: more epochs and more patience (their validation curves are noisier).
    assert [budget[n] for n in sizes] == sorted(budget.values(), reverse=True)


def test_the_transferability_zoo_can_reach_significance(registry, repo_root):
    suite = load_suite(repo_root / "suites" / "transferability.toml", registry)
    assert [e.ref for e in suite.estimators] == [
        "logme",
        "leep",
        "nce",
        "hscore",
        "gbc",
        "sfda",
        "pactran",
    ]
    assert len(suite.models) >= 12 and 2 / math.factorial(len(suite.models)) < 0.05
    reinit = sorted(m.options["k"] for m in suite.models if m.ref.startswith("reinit-top:"))
    assert reinit == list(range(1, 8))
