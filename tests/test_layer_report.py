"""The layer-transfer study in a report: one curve per (model, dataset) from one suite entry,
frozen and fine-tuned with seed intervals, the from-scratch and linear-probe references, a
table beside it; and nothing of it when a run has no layer-transfer cell."""

from __future__ import annotations

import pytest

from tlbench.report.layers import layer_curves, layer_table, references
from tlbench.report.records import records_frame

STAGES = ["stem", "b0", "b1", "b2"]


def layer_cell(keep, mode, top1, seed, model="lite0", dataset="digits", status="ok"):
    return {
        "suite": "s",
        "model": model,
        "dataset": dataset,
        "strategy": f"layer-transfer[keep={keep},mode={mode}]",
        "strategy_ref": "layer-transfer",
        "seed": seed,
        "status": status,
        "model_ref": "efficientnet_lite0.in1k",
        "options": {"strategy": {"keep": keep, "mode": mode, "unit": "stage"}},
        "hparams": {"kept_groups": STAGES[:keep]} if status == "ok" else {},
        "metrics": {"top1": top1} if status == "ok" else {},
        "cost": {"wall_s": 1.0, "trainable_params": 10, "total_params": 100},
    }


def probe_cell(top1, seed, model="lite0", dataset="digits"):
    return {
        "suite": "s",
        "model": model,
        "dataset": dataset,
        "strategy": "linear-probe",
        "strategy_ref": "linear-probe",
        "seed": seed,
        "status": "ok",
        "model_ref": "efficientnet_lite0.in1k",
        "options": {"strategy": {}},
        "metrics": {"top1": top1},
        "cost": {"wall_s": 1.0, "trainable_params": 10, "total_params": 100},
    }


@pytest.fixture
def records():
    cells = []
    for seed, shift in ((0, 0.0), (1, 2.0)):
        for keep in range(5):
            cells.append(layer_cell(keep, "finetune", 90 + keep + shift, seed))
            if keep:  # keep=0 frozen is the same cell as keep=0 fine-tuned: excluded
                cells.append(layer_cell(keep, "frozen", 90 - 5 * keep + shift, seed))
        cells.append(probe_cell(70 + shift, seed))
    cells.append(layer_cell(2, "frozen", None, 2, status="failed"))
    return records_frame(cells)


def test_curves_hold_one_point_per_mode_and_groups_kept_with_seed_statistics(records):
    curves = layer_curves(records)
    frozen = curves[curves["mode"] == "frozen"].set_index("keep")
    assert list(frozen.index) == [1, 2, 3, 4] and frozen.loc[2, "mean"] == pytest.approx(81.0)
    assert frozen.loc[2, "n"] == 2 and frozen.loc[2, "problems"] == {"failed": 1}
    assert frozen.loc[3, "ci95"] > 0 and frozen.loc[3, "kept"] == "b1"
    assert set(curves["curve"]) == {"layer-transfer"}
    assert references(records).iloc[0]["mean"] == pytest.approx(71.0)


def test_the_table_puts_frozen_and_fine_tuned_side_by_side_with_the_probe(records):
    table = layer_table(records)
    text = table.text.set_index("n kept")
    assert list(text.columns[-2:]) == ["frozen (AnB)", "fine-tuned (AnB+)"]
    assert "Linear probe (frozen features): lite0 / digits 71.0 ±" in table.note
    start = text.loc[0, "fine-tuned (AnB+)"]
    assert start.startswith("91.0 ±") and text.loc[0, "frozen (AnB)"] == start  # one cell, both
    assert (
        text.loc[2, "frozen (AnB)"].endswith("(1 failed)")
        and text.loc[4, "last group kept"] == "b2"
    )
    best = table.best.set_index(text.index)
    assert best.loc[4, "fine-tuned (AnB+)"] and best.loc[0, "frozen (AnB)"]
    assert not best.loc[4, "frozen (AnB)"]
    assert "**" in table.to_markdown()


def test_report_figures_add_the_layer_curve_only_when_a_run_has_one(records):
    from tlbench.report.plots import figures, render_plots

    figure = figures(records)["layer_transfer"]
    (panel,) = [ax for ax in figure.axes if ax.get_visible() and ax.get_title()]
    assert panel.get_title() == "lite0 / digits"
    assert len(panel.lines) >= 4  # two curves (with error bars) and two reference lines
    assert any(
        p.name == "layer_transfer" and p.png.startswith(b"\x89PNG") for p in render_plots(records)
    )
    plain = records[records["strategy_ref"] != "layer-transfer"]
    assert "layer_transfer" not in figures(plain)
    assert layer_table(plain) is None


def test_one_suite_entry_runs_the_whole_curve_and_the_report_draws_it(tmp_path):
    from tlbench.report.plots import figures
    from tlbench.report.records import load_records
    from tlbench.testing import run_tiny_suite

    suite = """
name = "layers"
[[models]]
name = "efficientnet_lite0.in1k"
input_size = 32
[[datasets]]
name = "digits"
train_size = 150
test_size = 100
[[strategies]]
name = "layer-transfer"
keep = [7, 8]
mode = "frozen"
epochs = 1
lr = 3e-3
refit = false
[[strategies]]
name = "linear-probe"
"""
    records = run_tiny_suite(tmp_path, suite)
    assert sorted(r["strategy"] for r in records) == [
        "layer-transfer[keep=7]",
        "layer-transfer[keep=8]",
        "linear-probe",
    ]
    frame = load_records(tmp_path / "run")
    curves = layer_curves(frame)
    assert list(curves["keep"]) == [7, 8] and set(curves["mode"]) == {"frozen"}
    assert "layer_transfer" in figures(frame)
