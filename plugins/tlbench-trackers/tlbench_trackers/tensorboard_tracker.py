"""TensorBoard: event files in ``<run dir>/tensorboard/<cell>/`` (or under
``$TLBENCH_TENSORBOARD_DIR``), one folder per cell under the suite run's folder, written with
PyTorch's ``SummaryWriter``; view with ``tensorboard --logdir <run dir>/tensorboard``."""

from __future__ import annotations

import os
from pathlib import Path

from tlbench_trackers import cell


class Tracker:
    name = "tensorboard"

    def __init__(self, run_dir: Path, suite: str):
        import tensorboard  # noqa: F401  (SummaryWriter needs it; fail here, named, if absent)

        self.run_dir, self.suite = run_dir, suite
        self.root = Path(os.environ.get("TLBENCH_TENSORBOARD_DIR") or run_dir / "tensorboard")
        self.cells: list[str] = []

    def log_cell(self, record: dict) -> None:
        from torch.utils.tensorboard import SummaryWriter

        folder = self.root / cell.slug(record)
        writer = SummaryWriter(log_dir=str(folder))
        try:
            for key, value in cell.metrics(record).items():
                writer.add_scalar(key, value, 0)
            for name, step, value in cell.curves(record):
                writer.add_scalar(name, value, step)
            rows = "\n".join(
                f"| {k} | {cell.param_text(v)} |" for k, v in cell.params(record).items()
            )
            writer.add_text("params", f"| param | value |\n|---|---|\n{rows}", 0)
            tags = "\n".join(f"| {k} | {v} |" for k, v in cell.tags(record).items())
            writer.add_text("tags", f"| tag | value |\n|---|---|\n{tags}", 0)
            for name, text in cell.artifacts(self.run_dir, record).items():
                (folder / name).write_text(text, encoding="utf-8")
                if name == "confusion_matrix.csv":
                    writer.add_text("confusion_matrix", f"```\n{text}```", 0)
        finally:
            writer.close()
        self.cells.append(folder.name)

    def finish(self, interrupted: bool) -> None:
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(log_dir=str(self.root / "_suite")) as writer:
            listing = "\n".join(f"- {name}" for name in self.cells) or "(none)"
            state = "interrupted" if interrupted else "finished"
            writer.add_text("run", f"{self.suite} {self.run_dir.name}: {state}\n\n{listing}", 0)
