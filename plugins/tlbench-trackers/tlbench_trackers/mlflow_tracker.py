"""MLflow: a parent run for the suite run, a nested run per cell, through ``MlflowClient``
(no global active run). ``MLFLOW_TRACKING_URI`` chooses the store: ``file:DIR`` (MLflow's
file store), a tracking server ``http://...``, or MLflow's default; ``MLFLOW_EXPERIMENT_NAME``
the experiment (default: ``tlbench-<suite>``)."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from tlbench_trackers import cell


class Tracker:
    name = "mlflow"

    def __init__(self, run_dir: Path, suite: str):
        from mlflow import MlflowClient

        self.run_dir = run_dir
        if os.environ.get("MLFLOW_TRACKING_URI", "").startswith("file:"):
            # A file: URI asks for MLflow's file store, which MLflow 3 keeps behind this opt-in
            # (and the only store mlflow-skinny has without a server); a user's "false" stands.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        # MLflow retries an unreachable server 7 times with growing waits (minutes); a benchmark
        # should warn after seconds. A user's own settings stand.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        self.client = MlflowClient()  # honours MLFLOW_TRACKING_URI
        experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME") or f"tlbench-{suite}"
        found = self.client.get_experiment_by_name(experiment)
        self.experiment_id = (
            found.experiment_id if found else self.client.create_experiment(experiment)
        )
        parent = self.client.create_run(
            self.experiment_id,
            run_name=f"{suite} {run_dir.name}",
            tags={"tlbench.suite": suite, "tlbench.run_id": run_dir.name, "tlbench.level": "suite"},
        )
        self.parent_id = parent.info.run_id
        env = run_dir / "env.json"
        if env.is_file():
            self.client.log_artifact(self.parent_id, str(env))

    def log_cell(self, record: dict) -> None:
        from mlflow.entities import Metric, Param

        tags = {**cell.tags(record), "mlflow.parentRunId": self.parent_id, "tlbench.level": "cell"}
        run = self.client.create_run(self.experiment_id, run_name=cell.label(record), tags=tags)
        run_id = run.info.run_id
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, 0) for k, v in cell.metrics(record).items()]
        metrics += [Metric(k, v, now, step) for k, step, v in cell.curves(record)]
        params = [Param(k, cell.param_text(v)) for k, v in cell.params(record).items()]
        for start in range(0, max(len(metrics), len(params), 1), 100):  # MLflow's batch limit
            self.client.log_batch(
                run_id, metrics=metrics[start : start + 100], params=params[start : start + 100]
            )
        with tempfile.TemporaryDirectory(prefix="tlbench-mlflow-") as folder:
            for name, text in cell.artifacts(self.run_dir, record).items():
                (Path(folder) / name).write_text(text, encoding="utf-8")
            self.client.log_artifacts(run_id, folder)
        self.client.set_tag(run_id, "tlbench.cell", cell.slug(record))
        status = "FINISHED" if record.get("status") == "ok" else "FAILED"
        self.client.set_terminated(run_id, status=status)

    def finish(self, interrupted: bool) -> None:
        self.client.set_terminated(self.parent_id, status="KILLED" if interrupted else "FINISHED")
