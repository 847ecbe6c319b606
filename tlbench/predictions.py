"""Per-example test predictions of a cell: what each test item was predicted as, and how much
probability the model gave its true class.

Statistics that include the test set's own noise (bootstrap intervals over test items, McNemar's
test between two cells scored on the same items) and the published site's gallery of
misclassified images are computed from these, not from the single top-1 number.

One file per cell, ``predictions/<config_hash>.npz`` in the run directory, written by the runner
next to the cell's record (``record["predictions"]`` names the file, its sha256 and the split hash
it belongs to). Arrays, aligned, in the order of the test split's indices::

    index      int64   row of the test item in the dataset's test source (``split["test_from"]``)
    label      int16   true class
    pred       int16   predicted class (argmax of the logits)
    true_prob  float16 softmax probability of the true class

Written with ``numpy.savez_compressed`` and read with ``allow_pickle=False``: about 10 kB for 2000
test items.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tlbench.errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    import torch

PREDICTIONS_DIR = "predictions"
_ARRAYS = ("index", "label", "pred", "true_prob")


@dataclass(frozen=True)
class Predictions:
    """Aligned per-item arrays of one cell's test split (see the module docstring)."""

    index: np.ndarray
    label: np.ndarray
    pred: np.ndarray
    true_prob: np.ndarray
    split_hash: str

    def __post_init__(self):
        sizes = {len(getattr(self, name)) for name in _ARRAYS}
        if len(sizes) != 1:
            raise ValueError(f"prediction arrays differ in length: {sizes}")

    def __len__(self) -> int:
        return len(self.label)

    @property
    def correct(self) -> np.ndarray:
        return self.pred == self.label

    @property
    def top1(self) -> float:
        return 100.0 * float(self.correct.mean()) if len(self) else float("nan")

    @classmethod
    def from_logits(
        cls, logits: torch.Tensor, labels: torch.Tensor, index, split_hash: str
    ) -> Predictions:
        """From a (N, classes) logit tensor, its labels and the test split's indices."""
        import torch

        logits = logits.detach().float().cpu()
        labels = labels.detach().cpu().long()
        probs = torch.softmax(logits, dim=1)
        true_prob = probs.gather(1, labels[:, None]).squeeze(1)
        return cls(
            index=np.asarray(index, dtype=np.int64),
            label=labels.numpy().astype(np.int16),
            pred=logits.argmax(1).numpy().astype(np.int16),
            true_prob=true_prob.numpy().astype(np.float16),
            split_hash=split_hash,
        )

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez_compressed(
            buffer,
            **{name: getattr(self, name) for name in _ARRAYS},
            split_hash=np.array(self.split_hash),
        )
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, origin: str = "predictions") -> Predictions:
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in _ARRAYS}
                split_hash = str(npz["split_hash"])
        except (OSError, ValueError, KeyError, EOFError) as exc:
            raise UserError(f"{origin}: not a tlbench predictions file ({exc})") from None
        try:
            return cls(**arrays, split_hash=split_hash)
        except ValueError as exc:
            raise UserError(f"{origin}: {exc}") from None


def relative_path(config_hash: str) -> str:
    return f"{PREDICTIONS_DIR}/{config_hash}.npz"


def write_predictions(run_dir: Path, config_hash: str, predictions: Predictions) -> dict:
    """Store ``predictions`` for the cell ``config_hash``; return the record's entry for them.
    Written to a temporary name and renamed, so a reader never sees half a file."""
    from tlbench.cache import atomic_write_bytes

    data = predictions.to_bytes()
    relative = relative_path(config_hash)
    path = Path(run_dir) / relative
    path.parent.mkdir(exist_ok=True)
    atomic_write_bytes(path, data)
    return {
        "file": relative,
        "sha256": hashlib.sha256(data).hexdigest(),
        "split_hash": predictions.split_hash,
        "n": len(predictions),
    }


def read_predictions(run_dir: Path, record: dict) -> Predictions | None:
    """The predictions a record points to, or ``None`` when it has none (older runs, failed
    cells). A file whose sha256 differs from the record's was replaced or damaged: refused."""
    entry = record.get("predictions")
    if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
        return None
    path = Path(run_dir) / entry["file"]
    if Path(entry["file"]).is_absolute() or ".." in Path(entry["file"]).parts:
        raise UserError(f"{run_dir}: record names predictions outside its run directory")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UserError(f"{path}: cannot read predictions: {exc.strerror or exc}") from None
    if entry.get("sha256") and hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise UserError(f"{path}: predictions file does not match its record's sha256")
    return Predictions.from_bytes(data, str(path))
