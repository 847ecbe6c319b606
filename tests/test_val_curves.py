"""The validation-curve figure: each trained cell's chosen candidate per epoch, per seed and
mean, its best epoch, its budget and whether it was still improving (report/curves.py and
``val_curves`` in report/plots.py)."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from tlbench.errors import UserError
from tlbench.report.commands import report_command
from tlbench.report.curves import chosen_curves
from tlbench.report.plots import figures, val_curves
from tlbench.report.records import load_records
from tlbench.report.samples import write_sample_run

TRAINED = ("full-finetune", "partial-unfreeze")


def candidate(lr, curve, pruned_at=None):
    best = max(range(len(curve)), key=lambda i: curve[i]) + 1
    return {
        "lr": lr,
        "val_curve": curve,
        "val_top1": max(curve),
        "best_epoch": best,
        "epochs_trained": len(curve),
        "pruned_at_epoch": pruned_at,
        "weight_decay": 0.05,
    }


def with_curves(run: Path, keep=lambda record: True, rising=()) -> Path:
    """Give the trained cells of a sample run the sweep a trained strategy records: lr 1e-3
    chosen (longer for seed 1, so seeds stop at different epochs), lr 1e-2 pruned at epoch 2;
    ``rising`` holds the (model, seed) pairs still improving at a 6-epoch budget. Records
    ``keep`` rejects are dropped (a suite's excludes)."""
    path = run / "cells.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    records = [r for r in records if keep(r)]
    for record in records:
        if record["strategy"] not in TRAINED or record["status"] != "ok":
            continue
        chosen = [40.0, 55.0, 61.0, 64.0, 63.0] + ([66.0] if record["seed"] == 1 else [])
        still = (record["model"], record["seed"]) in rising
        record["hparams"] = {
            "lr": 1e-3,
            "weight_decay": 0.05,
            "recipe": "fine-tune",
            "sweep": [candidate(1e-2, [30.0, 35.0], pruned_at=2), candidate(1e-3, chosen)],
            "convergence": {
                "best_epoch": len(chosen),
                "epochs_run": len(chosen),
                "budget_epochs": 6,
                "stopped": "budget" if still else "early",
                "still_improving": still,
            },
        }
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return run


def sample(tmp_path, **grid):
    grid = {"models": ["scratch-r18", "lite0-imagenet"], "seeds": (0, 1)} | grid
    return write_sample_run(tmp_path / "run", **grid)


def test_the_chosen_candidate_is_the_one_the_record_names_and_the_others_stay_beside_it(
    tmp_path,
):
    run = with_curves(sample(tmp_path, datasets=["cifar10"], strategies=["full-finetune"]))

    curves = chosen_curves(load_records(run)).set_index(["model", "seed"])
    row = curves.loc[("lite0-imagenet", 1)]

    assert row["curve"] == [40.0, 55.0, 61.0, 64.0, 63.0, 66.0] and row["best_epoch"] == 6
    assert row["budget_epochs"] == 6 and row["lr"] == 1e-3
    assert row["others"] == [
        {"label": "lr 0.01, weight_decay 0.05", "curve": [30.0, 35.0], "pruned_at_epoch": 2}
    ]


def test_records_without_usable_curves_give_no_row(tmp_path):
    run = with_curves(sample(tmp_path, datasets=["cifar10"], strategies=["full-finetune"]))
    path = run / "cells.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    records[0]["hparams"]["sweep"] = {"lr": [0.001, 0.01]}  # the grid, as older records kept it
    records[1]["hparams"]["sweep"] = [{"lr": 0.001, "val_curve": ["n/a"]}]  # damaged
    path.write_text("".join(json.dumps(r) + "\n" for r in records))

    curves = chosen_curves(load_records(run))

    assert len(curves) == len(records) - 2


def test_a_report_of_trained_cells_writes_and_embeds_the_val_curves(tmp_path):
    run = with_curves(
        sample(tmp_path, datasets=["cifar10"], strategies=["linear-probe", "full-finetune"])
    )
    output, plots = tmp_path / "report.html", tmp_path / "plots"

    result = CliRunner().invoke(
        report_command, [str(run), "-o", str(output), "--plots", str(plots)]
    )

    assert result.exit_code == 0, result.output
    assert f"wrote {plots / 'val_curves.png'}" in result.output
    with Image.open(plots / "val_curves.png") as image:
        assert image.format == "PNG" and image.width > 400
    text = output.read_text()
    assert 'id="plot-val_curves"' in text and text.count('src="data:image/png;base64,') == 4


def test_a_run_without_trained_curves_writes_no_val_curves_and_the_rest_as_before(tmp_path):
    run = sample(tmp_path, datasets=["cifar10"], strategies=["linear-probe", "full-finetune"])
    plots = tmp_path / "plots"

    result = CliRunner().invoke(report_command, [str(run), "--plots", str(plots)])

    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in plots.iterdir()) == [
        "accuracy_vs_params.png",
        "heatmap.png",
        "strategies.png",
    ]
    with pytest.raises(UserError, match="no trained cell recorded validation curves"):
        val_curves(load_records(run))


def test_a_suite_with_one_strategy_per_dataset_gets_one_panel_per_dataset(tmp_path):
    pairs = {("small", "full-finetune"), ("large", "partial-unfreeze")}
    run = with_curves(
        sample(tmp_path, datasets=["small", "large"], strategies=list(TRAINED)),
        keep=lambda r: (r["dataset"], r["strategy"]) in pairs,
    )

    figure = figures(load_records(run))["val_curves"]

    titles = [ax.get_title() for ax in figure.axes if ax.get_visible()]
    assert titles == ["small / full-finetune", "large / partial-unfreeze"]


def test_every_strategy_on_every_dataset_is_a_strategy_by_dataset_grid(tmp_path):
    run = with_curves(sample(tmp_path, datasets=["small", "large"], strategies=list(TRAINED)))

    figure = val_curves(load_records(run))

    titles = [ax.get_title() for ax in figure.axes if ax.get_visible()]
    assert figure.axes[0].get_gridspec().get_geometry() == (2, 2)
    assert titles == [
        "small / full-finetune",
        "large / full-finetune",
        "small / partial-unfreeze",
        "large / partial-unfreeze",
    ]


def test_cells_still_improving_at_the_budget_are_counted_in_their_panel(tmp_path):
    run = with_curves(
        sample(tmp_path, datasets=["cifar10"], strategies=["full-finetune"]),
        rising={("lite0-imagenet", 0)},
    )

    (ax,) = val_curves(load_records(run)).axes[:1]

    assert ax.get_title() == "cifar10 / full-finetune\n1 of 4 cells still improving at the budget"


def test_a_subset_keeps_the_models_asked_for_and_an_unknown_one_is_named(tmp_path):
    run = with_curves(sample(tmp_path, datasets=["small", "large"], strategies=["full-finetune"]))
    records = load_records(run)

    figure = val_curves(records, models=["lite0-imagenet"], datasets=["large"], others=False)
    with pytest.raises(UserError, match="no validation curves for model 'r18-imagenet'"):
        val_curves(records, models=["r18-imagenet"])

    labels = [text.get_text() for text in figure.legends[0].get_texts()]
    assert [ax.get_title() for ax in figure.axes] == ["large / full-finetune"]
    assert "lite0-imagenet" in labels and "scratch-r18" not in labels
    assert not any(label.startswith("other candidates") for label in labels)
