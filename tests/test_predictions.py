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


def _stored(tmp_path, data: bytes) -> dict:
    (tmp_path / "predictions").mkdir(exist_ok=True)
    (tmp_path / "predictions" / "x.npz").write_bytes(data)
    return {"predictions": {"file": "predictions/x.npz"}}


def _npz(**arrays) -> bytes:
    import io

    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


GOOD = {
    "index": np.arange(4, dtype=np.int64),
    "label": np.array([0, 1, 2, 3], dtype=np.int16),
    "pred": np.array([0, 1, 2, 0], dtype=np.int16),
    "true_prob": np.array([0.9, 0.8, 0.7, 0.1], dtype=np.float16),
    "split_hash": np.array("abc"),
}


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            {"label": np.array([0, 1, 2, 30000], dtype=np.int64)},
            "label 30000 is not a class of a 10-class dataset",
        ),
        ({"label": np.array([0, -1, 2, 3], dtype=np.int16)}, "label -1 is not a class"),
        (
            {"index": np.arange(4, dtype=np.float64)},
            "array index has dtype float64, expected integers",
        ),
        ({"label": np.array(3)}, "array label has shape (), expected one dimension"),
        (
            {"label": np.zeros((4, 1), dtype=np.int16)},
            "array label has shape (4, 1), expected one dimension",
        ),
        ({"pred": np.array(["a", "b", "c", "d"])}, "array pred has dtype <U1, expected integers"),
        ({"pred": np.zeros(3, dtype=np.int16)}, "prediction arrays differ in length"),
        ({"index": np.zeros(20_000_000, dtype=np.int64)}, "array index unpacks to"),
    ],
)
def test_a_hostile_predictions_file_is_one_line_before_its_arrays_are_read(
    tmp_path, change, expected
):
    record = _stored(tmp_path, _npz(**{**GOOD, **change}))
    with pytest.raises(UserError) as caught:
        read_predictions(tmp_path, record, classes=10)
    assert expected in str(caught.value) and "\n" not in str(caught.value)


def test_the_valid_file_those_were_made_from_reads(tmp_path):
    assert len(read_predictions(tmp_path, _stored(tmp_path, _npz(**GOOD)), classes=10)) == 4


@pytest.mark.parametrize("target", ["/dev/zero", "outside"])
def test_a_predictions_file_that_is_a_link_is_refused_unread(tmp_path, target):
    run_dir = tmp_path / "run"
    (run_dir / "predictions").mkdir(parents=True)
    outside = tmp_path / "outside.npz"
    outside.write_bytes(_npz(**GOOD))
    (run_dir / "predictions" / "x.npz").symlink_to(target if target.startswith("/") else outside)
    with pytest.raises(UserError, match="is a symbolic link"):
        read_predictions(run_dir, {"predictions": {"file": "predictions/x.npz"}})


def test_a_predictions_folder_that_is_a_link_is_refused(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "x.npz").write_bytes(_npz(**GOOD))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "predictions").symlink_to(elsewhere)
    with pytest.raises(UserError, match="predictions: is a symbolic link"):
        read_predictions(tmp_path / "run", {"predictions": {"file": "predictions/x.npz"}})
