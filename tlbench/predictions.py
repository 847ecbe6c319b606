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
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tlbench.errors import UserError
from tlbench.safeio import describe, read_inside

if TYPE_CHECKING:  # pragma: no cover
    import torch

PREDICTIONS_DIR = "predictions"  # in the run directory (tlbench.rundir)
_ARRAYS = ("index", "label", "pred", "true_prob")
MAX_FILE_BYTES = 256 * 2**20
MAX_ITEMS = 10_000_000  # test items of one cell
MAX_ARRAY_BYTES = 8 * MAX_ITEMS + 1024
CLASS_LIMIT = 2**15  # labels are stored as int16


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
    def from_bytes(
        cls, data: bytes, origin: str = "predictions", classes: int | None = None
    ) -> Predictions:
        """Parse a predictions file, refusing anything tlbench would not have written.

        Each array's header (dtype and shape) is checked before its data is read, and the
        whole file is bounded, so a hostile file costs no memory its size does not: labels and
        predictions must be integers from 0 to ``classes`` - 1 (or to the int16 range when the
        class count is unknown), every array one-dimensional and of one length.
        """
        try:
            return cls(**_parse(data, origin, classes))
        except ValueError as exc:
            raise UserError(f"{origin}: {exc}") from None


def _parse(data: bytes, origin: str, classes: int | None) -> dict:
    names = (*_ARRAYS, "split_hash")
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = {info.filename: info for info in archive.infolist()}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise UserError(f"{origin}: not a tlbench predictions file ({describe(exc)})") from None
    missing = [name for name in names if f"{name}.npy" not in members]
    if missing:
        raise UserError(f"{origin}: not a tlbench predictions file (lacks {', '.join(missing)})")
    arrays = {}
    for name in names:
        info = members[f"{name}.npy"]
        if info.file_size > MAX_ARRAY_BYTES:
            raise UserError(f"{origin}: array {name} unpacks to {info.file_size} bytes, too large")
        try:
            with archive.open(info) as member:
                version = np.lib.format.read_magic(member)
                read_header = (
                    np.lib.format.read_array_header_1_0
                    if version == (1, 0)
                    else np.lib.format.read_array_header_2_0
                )
                shape, _fortran, dtype = read_header(member)
                problem = _header_problem(name, shape, dtype)
                if problem:
                    raise UserError(f"{origin}: {problem}")
                member.seek(0)
                arrays[name] = np.lib.format.read_array(member, allow_pickle=False)
        except UserError:
            raise
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, RuntimeError) as exc:
            raise UserError(f"{origin}: array {name} unreadable ({describe(exc)})") from None
    split_hash = str(arrays.pop("split_hash"))
    sizes = {len(arrays[name]) for name in _ARRAYS}
    if len(sizes) != 1:
        raise UserError(f"{origin}: prediction arrays differ in length: {sorted(sizes)}")
    limit = classes if classes is not None else CLASS_LIMIT
    for name in ("label", "pred"):
        values = arrays[name]
        if len(values) and (values.min() < 0 or values.max() >= limit):
            bad = int(values.min()) if values.min() < 0 else int(values.max())
            within = f"a {classes}-class dataset" if classes is not None else "int16 class labels"
            raise UserError(f"{origin}: {name} {bad} is not a class of {within}")
    index = arrays["index"]
    if len(index) and index.min() < 0:
        raise UserError(f"{origin}: index {int(index.min())} is negative")
    prob = arrays["true_prob"]
    if len(prob) and not (np.all(prob >= 0) and np.all(prob <= 1)):
        raise UserError(f"{origin}: true_prob holds values outside 0 to 1")
    return {**arrays, "split_hash": split_hash}


def _header_problem(name: str, shape: tuple, dtype: np.dtype) -> str | None:
    if name == "split_hash":
        if shape != () or dtype.kind != "U" or dtype.itemsize > 4 * 256:
            return "split_hash is not a short string"
        return None
    if len(shape) != 1:
        return f"array {name} has shape {shape}, expected one dimension"
    if shape[0] > MAX_ITEMS:
        return f"array {name} holds {shape[0]} items, at most {MAX_ITEMS}"
    wanted = "f" if name == "true_prob" else "iu"
    if dtype.kind not in wanted or dtype.hasobject:
        return (
            f"array {name} has dtype {dtype}, expected {'floats' if wanted == 'f' else 'integers'}"
        )
    return None


def relative_path(config_hash: str) -> str:
    return f"{PREDICTIONS_DIR}/{config_hash}.npz"


def write_predictions(run_dir: Path, config_hash: str, predictions: Predictions) -> dict:
    """Store ``predictions`` for the cell ``config_hash``; return the record's entry for them.
    Written to a temporary name and renamed, so a reader never sees half a file."""
    from tlbench.safeio import atomic_write_bytes

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


def read_predictions(run_dir: Path, record: dict, classes: int | None = None) -> Predictions | None:
    """The predictions a record points to, or ``None`` when it has none (older runs, failed
    cells). The file is read only from inside ``run_dir`` (no link, no special file, at most
    ``MAX_FILE_BYTES``); a file whose sha256 differs from the record's was replaced or damaged,
    and a file tlbench would not have written is refused: ``UserError``, one line."""
    entry = record.get("predictions")
    if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
        return None
    relative = entry["file"]
    try:
        data = read_inside(run_dir, relative, MAX_FILE_BYTES)
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        return None
    except OSError as exc:
        raise UserError(f"{relative}: cannot read predictions: {describe(exc)}") from None
    expected = entry.get("sha256")
    if expected and hashlib.sha256(data).hexdigest() != expected:
        raise UserError(f"{relative}: predictions file does not match its record's sha256")
    return Predictions.from_bytes(data, relative, classes)
