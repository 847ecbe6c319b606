"""Weights & Biases: one W&B run per cell, grouped by the suite run (W&B's parent: the group),
in project ``$WANDB_PROJECT`` or ``tlbench-<suite>``. ``WANDB_MODE=offline`` writes the runs
to disk for ``wandb sync``; ``WANDB_DIR`` chooses where (default: the run directory)."""

from __future__ import annotations

import os
from pathlib import Path

from tlbench_trackers import cell


class Tracker:
    name = "wandb"

    def __init__(self, run_dir: Path, suite: str):
        import wandb

        self.wandb, self.run_dir, self.suite = wandb, run_dir, suite
        self.project = os.environ.get("WANDB_PROJECT") or f"tlbench-{suite}"
        self.group = f"{suite}/{run_dir.name}"
        self.dir = os.environ.get("WANDB_DIR") or str(run_dir)

    def log_cell(self, record: dict) -> None:
        wandb = self.wandb
        tags = cell.tags(record)
        run = wandb.init(
            project=self.project,
            group=self.group,
            job_type="cell",
            name=cell.label(record),
            config={**cell.params(record), **tags},
            tags=[f"suite:{self.suite}", f"run:{self.run_dir.name}"][:64],
            dir=self.dir,
            reinit="create_new",
            settings=wandb.Settings(console="off", silent=True, disable_git=True),
        )
        try:
            curves: dict[str, list[tuple[int, float]]] = {}
            for name, step, value in cell.curves(record):
                curves.setdefault(name, []).append((step, value))
            for name, points in curves.items():
                run.define_metric(name, step_metric=f"{name}/step")
                for step, value in points:
                    run.log({name: value, f"{name}/step": step})
            for key, value in cell.metrics(record).items():
                run.summary[key] = value
            # files in the run's folder are part of the run (uploaded now or by `wandb sync`)
            for name, text in cell.artifacts(self.run_dir, record).items():
                (Path(run.dir) / name).write_text(text, encoding="utf-8")
        finally:
            run.finish(exit_code=0 if record.get("status") == "ok" else 1)

    def finish(self, interrupted: bool) -> None:
        pass  # every cell's run is already finished; the group needs no closing
