"""Per-example test predictions: what the runner stores next to each record."""

import numpy as np
import pytest
import torch

from tlbench.errors import UserError
from tlbench.predictions import Predictions, read_predictions, write_predictions


def _predictions() -> Predictions:
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 1.0], [5.0, 0.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 2])
    return Predictions.from_logits(logits, labels, index=[4, 9, 12, 30], split_hash="abc")


def test_from_logits_keeps_argmax_and_true_class_probability():
    preds = _predictions()
    assert preds.pred.tolist() == [0, 1, 2, 0]
    assert preds.correct.tolist() == [True, True, False, False]
    assert preds.top1 == 50.0
    expected = torch.softmax(torch.tensor([0.0, 0.0, 1.0]), 0)[1].item()
    assert preds.true_prob[2] == pytest.approx(expected, abs=1e-3)


def test_written_predictions_read_back_identical(tmp_path):
    preds = _predictions()
    entry = write_predictions(tmp_path, "cafe", preds)
    assert entry["file"] == "predictions/cafe.npz" and entry["n"] == 4
    back = read_predictions(tmp_path, {"predictions": entry})
    for name in ("index", "label", "pred", "true_prob"):
        np.testing.assert_array_equal(getattr(back, name), getattr(preds, name))
    assert back.split_hash == "abc"


def test_a_replaced_predictions_file_is_refused(tmp_path):
    entry = write_predictions(tmp_path, "cafe", _predictions())
    other = Predictions.from_logits(torch.zeros(4, 3), torch.zeros(4).long(), range(4), "abc")
    (tmp_path / entry["file"]).write_bytes(other.to_bytes())
    with pytest.raises(UserError, match="does not match its record's sha256"):
        read_predictions(tmp_path, {"predictions": entry})


def test_records_without_predictions_read_as_none(tmp_path):
    assert read_predictions(tmp_path, {"status": "failed"}) is None
    assert read_predictions(tmp_path, {"predictions": {"file": "predictions/gone.npz"}}) is None


def test_a_record_cannot_point_outside_its_run_directory(tmp_path):
    with pytest.raises(UserError, match="outside its run directory"):
        read_predictions(tmp_path, {"predictions": {"file": "../elsewhere.npz"}})


def test_the_runner_stores_each_cells_test_predictions_next_to_its_record(tlbench_run, tmp_path):
    suite = {
        "models": [{"name": "scratch:test_resnet", "input_size": 32}],
        "datasets": [{"name": "digits", "test_size": 200}],
        "strategies": ["linear-probe", {"name": "full-finetune", "epochs": 1, "lr": 1e-3}],
    }
    records = tlbench_run(suite)
    for record in records:
        preds = read_predictions(tmp_path / "run", record)
        assert preds is not None and len(preds) == 200
        assert preds.split_hash == record["split"]["hashes"]["test"]
        assert preds.top1 == pytest.approx(record["metrics"]["top1"], abs=1e-3)
