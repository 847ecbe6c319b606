"""What a cell got wrong: its confusion matrix and thumbnails of its worst mistakes.

Both come from the per-example predictions the runner stores next to each record
(``tlbench.predictions``). The gallery shows the misclassified test images with the lowest
probability on their true class first (the most confident mistakes), at most ``GALLERY_SIZE``
per cell, as small PNG files shared between cells that score the same test image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tlbench.errors import UserError
from tlbench.predictions import CLASS_LIMIT, Predictions, read_predictions
from tlbench.publish.merge import Entry
from tlbench.publish.targets import Targets, TestSource

GALLERY_SIZE = 48
DENSE_CLASSES = 1000  # beyond this the page lists the top confusions, without a full matrix
THUMB_PX = 64  # longest side; small images (8x8 digits, 28x28 MNIST) keep their size
THUMBS_DIR = "thumbs"


@dataclass(frozen=True)
class Mistake:
    index: int  # row in the test source
    image: str  # path relative to the site root
    true_name: str
    pred_name: str
    true_prob: float


@dataclass
class Evidence:
    """What the stored predictions of one entry show, and why anything is missing."""

    predictions: Predictions | None = None
    confusion: np.ndarray | None = None  # [true, predicted] counts, up to DENSE_CLASSES
    confusions: list[tuple[int, int, int]] = field(default_factory=list)  # (count, true, pred)
    classes: int = 0
    class_names: tuple[str, ...] = ()
    mistakes: list[Mistake] = field(default_factory=list)
    errors: int = 0  # misclassified test items in all
    missing: str = ""  # why there are no predictions
    caveats: list[str] = field(default_factory=list)  # checks that failed
    no_gallery: str = ""  # why there are no images (the dataset cannot be shown here)
    refused: str = ""  # a predictions file that is not one tlbench wrote: one note


class Thumbnails:
    """Writes each (test source, item) once into ``site/thumbs/``."""

    def __init__(self, site_root: Path):
        self.root = site_root
        self.written: set[str] = set()

    def thumbnail(self, source: TestSource, index: int) -> str:
        relative = f"{THUMBS_DIR}/{source.key}/{index}.png"
        if relative not in self.written:
            image = source.images.load(int(index))
            if image.mode not in ("L", "RGB"):
                image = image.convert("RGB")
            image.thumbnail((THUMB_PX, THUMB_PX))
            path = self.root / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            image.save(path, format="PNG", optimize=True)
            self.written.add(relative)
        return relative


def evidence(
    entry: Entry, metric: str, targets: Targets, thumbs: Thumbnails, size: int = GALLERY_SIZE
) -> Evidence:
    record = entry.record
    if not isinstance(record.get("predictions"), dict):
        if record.get("predictions_error"):
            why = str(record["predictions_error"])  # the runner could not write the file
        elif entry.status != "ok":
            why = "the cell did not finish"
        else:
            why = "the run that recorded it did not store them"
        return Evidence(missing=f"Per-example predictions were not stored ({why}).")
    carded = (record.get("dataset_card") or {}).get("classes")
    try:
        predictions = read_predictions(entry.run.path, record, carded)
    except UserError as exc:
        return Evidence(
            missing=f"Per-example predictions are not shown: {exc} (run {entry.run.label}).",
            refused=f"run {entry.run.label}: {exc}; its predictions are not shown",
        )
    if predictions is None:
        name = record["predictions"].get("file")
        return Evidence(
            missing=f"Per-example predictions were not found: {name} is missing from run {entry.run.label}."
        )
    found = Evidence(predictions=predictions, caveats=_checks(entry, predictions, metric))
    source, reason = targets.test_source(record)
    classes = _class_count(predictions, record, source)
    found.classes = classes
    if source:
        found.class_names = source.class_names
    elif classes <= DENSE_CLASSES:
        found.class_names = tuple(str(c) for c in range(classes))
    found.confusions = top_confusions(predictions)
    if classes <= DENSE_CLASSES:
        found.confusion = confusion_matrix(predictions, classes)
    found.errors = int((~predictions.correct).sum())
    found.no_gallery = reason if source is None else _source_mismatch(predictions, source)
    if found.no_gallery:
        return found
    found.mistakes = _mistakes(predictions, source, thumbs, size, found)
    return found


def confusion_matrix(predictions: Predictions, classes: int) -> np.ndarray:
    """``[true, predicted]`` counts."""
    label = predictions.label.astype(np.int64)
    pred = predictions.pred.astype(np.int64)
    counts = np.bincount(label * classes + pred, minlength=classes * classes)
    return counts.reshape(classes, classes)


def top_confusions(predictions: Predictions, top: int = 20) -> list[tuple[int, int, int]]:
    """The ``top`` most frequent ``(count, true, predicted)`` errors, computed over the errors
    only, so a thousand-class dataset costs no class-by-class matrix."""
    wrong = ~predictions.correct
    pairs = np.stack([predictions.label[wrong], predictions.pred[wrong]], axis=1).astype(np.int64)
    if not len(pairs):
        return []
    unique, counts = np.unique(pairs, axis=0, return_counts=True)
    order = np.lexsort((-unique[:, 1], -unique[:, 0], -counts))[:top]
    return [(int(counts[i]), int(unique[i, 0]), int(unique[i, 1])) for i in order]


def scored_split_hash(record: dict) -> str | None:
    """The hash of the test items the record was scored on (what predictions are keyed by)."""
    split = record.get("split")
    hashes = split.get("hashes") if isinstance(split, dict) else None
    value = hashes.get("test") if isinstance(hashes, dict) else None
    return str(value) if value else None


def _checks(entry: Entry, predictions: Predictions, metric: str) -> list[str]:
    record, caveats = entry.record, []
    recorded_split = scored_split_hash(record)
    if recorded_split and predictions.split_hash and predictions.split_hash != recorded_split:
        caveats.append(
            f"the predictions belong to split {predictions.split_hash[:10]}…, the record to {recorded_split[:10]}…"
        )
    expected = record["predictions"].get("n")
    if isinstance(expected, int) and expected != len(predictions):
        caveats.append(f"the record says {expected} predictions, the file holds {len(predictions)}")
    value = entry.metric("top1")
    if value is not None and abs(predictions.top1 - value) > 0.05:
        caveats.append(
            f"top1 from the predictions is {predictions.top1:.2f}, the record says {value:.2f}"
        )
    return caveats


def _class_count(predictions: Predictions, record: dict, source: TestSource | None) -> int:
    largest = int(max(predictions.label.max(initial=0), predictions.pred.max(initial=0))) + 1
    carded = (record.get("dataset_card") or {}).get("classes")
    known = len(source.class_names) if source else carded if isinstance(carded, int) else 0
    largest = min(largest, CLASS_LIMIT)
    return max(largest, known)


def _source_mismatch(predictions: Predictions, source: TestSource) -> str:
    labels = np.asarray(source.images.labels)
    index = predictions.index
    if len(index) and (index.min() < 0 or index.max() >= len(labels)):
        return f"the predictions index test items up to {int(index.max())}, but the dataset loaded here has {len(labels)}"
    differ = int((labels[index] != predictions.label).sum())
    if differ:
        return f"the dataset loaded here differs from the one the run used ({differ} of {len(index)} test labels differ)"
    return ""


def _mistakes(
    predictions: Predictions, source: TestSource, thumbs: Thumbnails, size: int, found: Evidence
) -> list[Mistake]:
    wrong = np.flatnonzero(~predictions.correct)
    worst = wrong[np.argsort(predictions.true_prob[wrong].astype(np.float32), kind="stable")]
    names, mistakes, unreadable = source.class_names, [], []
    for i in worst[:size]:
        index = int(predictions.index[i])
        try:
            image = thumbs.thumbnail(source, index)
        except Exception as exc:  # a file gone or corrupt since the run: show the others
            unreadable.append(f"{index} ({type(exc).__name__})")
            continue
        mistakes.append(
            Mistake(
                index=index,
                image=image,
                true_name=_name(names, int(predictions.label[i])),
                pred_name=_name(names, int(predictions.pred[i])),
                true_prob=float(predictions.true_prob[i]),
            )
        )
    if unreadable:
        found.caveats.append(f"test items {', '.join(unreadable[:5])} could not be read here")
    return mistakes


def _name(names: tuple[str, ...], label: int) -> str:
    return names[label] if 0 <= label < len(names) else str(label)
