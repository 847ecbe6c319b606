"""plugins/tlbench-trackers: ``tlbench run SUITE --track mlflow --track wandb --track
tensorboard`` leaves one tracker run per cell under a parent for the suite run, read back with
each library's own reader: ``mlflow.search_runs`` on a file store, W&B's offline run files, and
TensorBoard's ``EventAccumulator``. A tracker that fails costs one warning, never a cell."""

from __future__ import annotations

import json
import struct
import subprocess
import sys

import pytest
from click.testing import CliRunner

tlbench_trackers = pytest.importorskip("tlbench_trackers")
mlflow = pytest.importorskip("mlflow")
wandb = pytest.importorskip("wandb")
pytest.importorskip("tensorboard")

from tlbench.cli import cli  # noqa: E402

SUITE = """
name = "track"
seeds = [0, 1]
[[models]]
name = "pixels"
input_size = 8
[[datasets]]
name = "digits"
train_size = 200
test_size = 100
[[strategies]]
name = "linear-probe"
l2 = [0.1, 10.0]
refit = false
refine_steps = 0
"""


def _run(tmp_path, args, env):
    suite = tmp_path / "suite.toml"
    suite.write_text(SUITE)
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(
        cli,
        ["run", str(suite), "--out", str(run_dir), "--device", "cpu", "--quiet", *args],
        env={"TLBENCH_TRACK": None, "WANDB_DIR": None, **env},
    )
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (run_dir / "cells.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all(r["status"] == "ok" for r in records)
    return run_dir, records, result.output


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """One tiny run (2 cells) sent to all three trackers."""
    tmp_path = tmp_path_factory.mktemp("tracked")
    store = tmp_path / "mlruns"
    env = {"MLFLOW_TRACKING_URI": f"file:{store}", "WANDB_MODE": "offline"}
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")  # wandb's service logs, not the user's cache
    track = ["--track", "mlflow", "--track", "wandb", "--track", "tensorboard"]
    run_dir, records, _ = _run(tmp_path, track, env)
    return run_dir, records, f"file:{store}"


def test_mlflow_file_store_holds_one_run_per_cell_under_the_suite_run(tracked, monkeypatch):
    run_dir, records, uri = tracked
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # not mlflow.set_tracking_uri: a global
    runs = mlflow.search_runs(experiment_names=["tlbench-track"])
    (parent,) = runs[runs["tags.tlbench.level"] == "suite"]["run_id"]
    cells = runs[runs["tags.tlbench.level"] == "cell"]
    assert len(cells) == 2 and set(cells["tags.mlflow.parentRunId"]) == {parent}
    by_hash = {r["config_hash"]: r for r in records}
    for _, row in cells.iterrows():
        record = by_hash[row["tags.tlbench.config_hash"]]
        assert row["metrics.top1"] == record["metrics"]["top1"]
        assert row["metrics.val_top1"] == record["metrics"]["val_top1"]
        assert float(row["params.hparams.l2"]) == record["hparams"]["l2"]
        assert row["params.model.input_size"] == "8" and row["params.seed"] == str(record["seed"])
        assert row["tags.tlbench.split_hash"] == record["split"]["hash"]
        assert row["tags.tlbench.run_id"] == run_dir.name and row["tags.tlbench.suite"] == "track"
        assert row["status"] == "FINISHED"
        client = mlflow.MlflowClient(uri)
        sweep = client.get_metric_history(row["run_id"], "sweep/val_top1")
        assert sorted(m.step for m in sweep) == [0, 1]
        files = {a.path for a in client.list_artifacts(row["run_id"])}
        assert files == {"record.json", "env.json", "confusion_matrix.csv"}
        matrix = client.download_artifacts(row["run_id"], "confusion_matrix.csv")
        counts = [list(map(int, line.split(",")[1:])) for line in open(matrix).read().split()[1:]]
        assert sum(map(sum, counts)) == 100 and len(counts) == 10


def _wandb_records(path):
    """The protobuf records of an offline run's .wandb file (a LevelDB-style log of W&B's own
    ``Record`` messages, which W&B's Go core writes and `wandb sync` uploads)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        room = block - pos % block
        if room < 7:
            pos += room
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            pos += room
            continue
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def test_wandb_offline_runs_carry_config_summary_curves_and_files(tracked):
    run_dir, records, _ = tracked
    runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 2, "WANDB_DIR unset: the offline runs live in the run directory"
    by_hash = {r["config_hash"]: r for r in records}
    for folder in runs:
        config, summary, history = {}, {}, []
        for record in _wandb_records(next(folder.glob("run-*.wandb"))):
            kind = record.WhichOneof("record_type")
            if kind in ("run", "config"):  # the config comes with the run, updates after
                updates = record.run.config.update if kind == "run" else record.config.update
                config.update({i.key: json.loads(i.value_json) for i in updates})
            elif kind == "summary":
                summary.update({i.key: json.loads(i.value_json) for i in record.summary.update})
            elif kind == "history":
                history.append(
                    {"/".join(i.nested_key) or i.key: i.value_json for i in record.history.item}
                )
        cell = by_hash[config["tlbench.config_hash"]]
        assert summary["top1"] == cell["metrics"]["top1"]
        assert config["hparams.l2"] == cell["hparams"]["l2"] and config["tlbench.suite"] == "track"
        steps = [int(h["sweep/val_top1/step"]) for h in history if "sweep/val_top1" in h]
        assert steps == [0, 1]
        files = {p.name for p in (folder / "files").iterdir()}
        assert {"record.json", "env.json", "confusion_matrix.csv"} <= files
        assert json.loads((folder / "files" / "record.json").read_text()) == cell


def test_tensorboard_event_files_per_cell_under_the_run_directory(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, records, _ = tracked
    by_hash = {r["config_hash"][:8]: r for r in records}
    folders = [p for p in (run_dir / "tensorboard").iterdir() if p.name != "_suite"]
    assert len(folders) == 2 and (run_dir / "tensorboard" / "_suite").is_dir()
    for folder in folders:
        record = by_hash[folder.name.rsplit("__", 1)[1]]
        events = EventAccumulator(str(folder))
        events.Reload()
        assert [e.value for e in events.Scalars("top1")] == [
            pytest.approx(record["metrics"]["top1"])
        ]
        assert [e.step for e in events.Scalars("sweep/val_top1")] == [0, 1]
        assert (folder / "confusion_matrix.csv").is_file()


def test_training_curves_become_step_metrics(tmp_path, monkeypatch):
    """A fine-tuning record's sweep: each candidate's val_curve, by epoch."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"file:{tmp_path / 'mlruns'}")
    from tlbench_trackers import cell, mlflow_tracker

    record = {
        "config_hash": "ab" * 32,
        "suite": "s",
        "run_id": "r",
        "status": "ok",
        "metrics": {"top1": 50.0},
        "hparams": {
            "lr": 0.01,
            "sweep": [
                {"lr": 0.01, "val_top1": 40.0, "val_curve": [10.0, 30.0, 40.0]},
                {"lr": 0.1, "val_top1": 20.0, "val_curve": [20.0]},
            ],
        },
    }
    assert list(cell.curves(record)) == [
        ("sweep/val_top1", 0, 40.0),
        ("sweep/0/val_curve", 1, 10.0),
        ("sweep/0/val_curve", 2, 30.0),
        ("sweep/0/val_curve", 3, 40.0),
        ("sweep/val_top1", 1, 20.0),
        ("sweep/1/val_curve", 1, 20.0),
    ]
    tracker = mlflow_tracker.Tracker(tmp_path, "s")
    tracker.log_cell(record)
    tracker.finish(interrupted=False)
    client = mlflow.MlflowClient()
    (run,) = [
        r for r in client.search_runs([tracker.experiment_id]) if r.info.run_id != tracker.parent_id
    ]
    history = client.get_metric_history(run.info.run_id, "sweep/0/val_curve")
    assert [(m.step, m.value) for m in history] == [(1, 10.0), (2, 30.0), (3, 40.0)]
    assert run.data.params["hparams.lr"] == "0.01" and "hparams.sweep" not in run.data.params


def test_a_failing_tracker_costs_one_warning_and_no_cell(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    env = {"MLFLOW_TRACKING_URI": f"file:{blocker}/mlruns"}
    _, records, output = _run(tmp_path, ["--track", "mlflow"], env)  # both cells ok
    warnings = [line for line in output.splitlines() if "tracker mlflow failed" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: ")


def test_track_refuses_an_unknown_tracker_with_usage_exit_code():
    result = CliRunner().invoke(cli, ["run", "nowhere.toml", "--track", "neptune"])
    assert result.exit_code == 2 and "--track" in result.output


def test_help_and_list_import_none_of_the_data_and_tracking_libraries():
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from tlbench.cli import cli\n"
        "for args in (['--help'], ['run', '--help'], ['list']):\n"
        "    assert CliRunner().invoke(cli, args).exit_code == 0, args\n"
        "heavy = ['datasets', 'webdataset', 'mlflow', 'wandb', 'tensorboard', 'pyarrow', 'torch']\n"
        "print([m for m in heavy if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_track_names_the_extra_when_a_library_is_missing(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a)
    )
    result = CliRunner().invoke(cli, ["run", "nowhere.toml", "--track", "wandb"])
    assert result.exit_code == 2
    assert "pip install 'tlbench-trackers[wandb]'" in result.output
