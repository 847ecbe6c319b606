"""Every built-in strategy's record states what tuning it cost (``hparams.tuning``): k-NN and NCM
the candidates they scored on val, LP-FT both its probe search and its fine-tuning sweep. Real
cells through the runner on scikit-learn's digits with a tiny fixed network (8x8 inputs)."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from torch import nn

from tlbench.api import FeatureModel, ModelSpec, SourceModel, hookimpl
from tlbench.report.records import tuning
from tlbench.report.tables import tuning_budgets
from tlbench.testing import run_tiny_suite

WIDTH = 16
CONFIG = {
    "input_size": (3, 8, 8),
    "interpolation": "bilinear",
    "mean": (0.5, 0.5, 0.5),
    "std": (0.5, 0.5, 0.5),
    "crop_pct": 1.0,
    "crop_mode": "center",
}


def tiny_model(argument, options, context):
    def build(num_classes: int, in_chans: int = 3, seed: int = 0) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(3)  # the "pretrained" weights: the same in every cell
            body = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, WIDTH), nn.Tanh())
        return FeatureModel(body, WIDTH, num_classes, seed=seed)

    return SourceModel("tiny", "tiny-net", "seed-3", "tiny-net:seed3", CONFIG, build)


class TinyPlugin:
    @staticmethod
    @hookimpl
    def register_models(register):
        register(ModelSpec("tiny-net", factory=tiny_model))


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    suite = {
        "models": ["tiny-net"],
        "datasets": [{"name": "digits", "train_size": 200, "test_size": 100}],
        "strategies": [
            {"name": "knn", "k": [1, 5, 20]},
            {"name": "ncm"},
            {"name": "ncm", "id": "ncm-l2", "normalize": "l2"},
            {"name": "lp-ft", "epochs": 2, "lr": [1e-2, 3e-3], "batch_size": 32, "sweep": "grid"},
        ],
    }
    found = run_tiny_suite(tmp_path_factory.mktemp("tuning"), suite, [("tiny", TinyPlugin)])
    return {r["strategy"]: r for r in found}


def _scored_on_val(record, configurations):
    found = record["hparams"]["tuning"]
    assert found["configurations"] == configurations == len(record["hparams"]["sweep"])
    assert found["epochs"] == 0.0 and found["schedule"] == "grid" and found["train_s"] >= 0


def test_knn_records_each_k_it_scored_on_val_as_its_tuning(records):
    _scored_on_val(records["knn"], 3)


def test_ncm_records_the_normalisations_it_scored_on_val_as_its_tuning(records):
    _scored_on_val(records["ncm"], 3)  # none, l2, cl2n
    _scored_on_val(records["ncm-l2"], 1)  # nothing left to choose


def test_lp_ft_counts_its_probe_search_and_its_fine_tuning_sweep(records):
    hparams = records["lp-ft"]["hparams"]
    found = hparams["tuning"]
    probe, fine_tune = found["stages"]["probe"], found["stages"]["fine-tune"]
    assert probe["configurations"] == len(hparams["sweep_probe"]) > 1
    assert probe["schedule"] == "solver" and probe["epochs"] == 0.0 and probe["train_s"] >= 0
    assert probe["shared"] is False
    assert fine_tune["configurations"] == len(hparams["sweep"]) == 2
    assert fine_tune["schedule"] == "grid" and fine_tune["epochs"] >= 2  # both lrs trained
    assert found["configurations"] == probe["configurations"] + 2
    assert found["epochs"] == fine_tune["epochs"] and found["schedule"] == "solver + grid"
    assert found["train_s"] == pytest.approx(probe["train_s"] + fine_tune["train_s"], abs=2e-3)


def test_the_report_sets_every_strategys_tuning_budget_side_by_side(records):
    assert tuning(records["lp-ft"]["hparams"]) == {
        k: records["lp-ft"]["hparams"]["tuning"][k]
        for k in ("configurations", "epochs", "train_s", "schedule")
    }
    budgets = tuning_budgets(pd.DataFrame(list(records.values())))
    tried = budgets.set_index("strategy")["configurations"]
    assert tried.to_dict() == {
        "knn": 3,
        "ncm": 3,
        "ncm-l2": 1,
        "lp-ft": records["lp-ft"]["hparams"]["tuning"]["configurations"],
    }
