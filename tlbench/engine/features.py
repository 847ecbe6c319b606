"""Frozen-backbone features and frozen-prefix activations, computed once per image and cached.

Outputs are stored per image, not per split (``FeatureBank``): a split's features are gathered
from every earlier request on the same *image pool* (one image set of the target, preprocessed
one way, through one frozen module at one precision), and only images no earlier request covered
are computed. So seeds whose splits draw from the same images, the strategies and estimators of
one (model, dataset), and later runs never compute an image's features twice. On CPU an image's
outputs do not depend on the batch it was computed in (checked by tests/test_sharing.py), so
gathered features equal a fresh extraction bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tlbench.cache import stable_hash
from tlbench.engine.runtime import (
    autocast,
    memory_format,
    resolve_device,
    resolve_precision,
    to_host,
    wait_for_host_copies,
    with_oom_retry,
)

# Splits the cached paths read; trainval is assembled from train + val (same images).
BASE_SPLITS = ("train", "val", "test")
# Heads and pooling are not part of the feature stack a prefix/suffix split cuts through.
_HEAD_CHILDREN = {"global_pool", "classifier", "fc", "head", "head_drop", "fc_norm", "pre_logits"}
# Prefix activations above this size are recomputed instead of cached (they would not pay).
MAX_PREFIX_CACHE_BYTES = 3 * 2**30
# Bump when what a bank part holds changes; it enters every pool key.
BANK_VERSION = 1
# Extraction batches ("auto"): at most this many images, and no more than the memory budget
# holds at ACTIVATION_FACTOR times an image's float32 input bytes. lite0's forward at 224 px
# peaked at ~23x (3.45 GiB for 256 images); 32x leaves room for wider models.
MAX_BATCH = 256
ACTIVATION_FACTOR = 32
# The share of the memory available that one extraction batch may use (CPU: at most 1 GiB).
CPU_BUDGET_SHARE, CPU_BUDGET_MAX = 0.25, 1 << 30
CUDA_BUDGET_SHARE = 0.5


Backbone = nn.Module | Callable[[], nn.Module]
BatchSize = int | str | None  # an int, or "auto"/None: sized by ``auto_batch_size``


def available_memory(device: torch.device) -> int:
    """Bytes free for one batch's activations: the CUDA allocator's free memory, else the
    host's MemAvailable (Linux; 4 GiB assumed where it cannot be read)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 << 30


def auto_batch_size(input_size, device: torch.device, available: int | None = None) -> int:
    """The extraction batch for images of ``input_size`` (C, H, W): the largest power of two
    up to ``MAX_BATCH`` whose estimated forward memory fits the budget. On CPU an image's
    features do not depend on its batch, so this never changes a number, only the peak memory."""
    available = available_memory(device) if available is None else available
    if device.type == "cuda":
        budget = CUDA_BUDGET_SHARE * available
    else:
        budget = min(CPU_BUDGET_SHARE * available, CPU_BUDGET_MAX)
    channels, height, width = input_size
    per_image = ACTIVATION_FACTOR * 4 * max(int(channels), 3) * int(height) * int(width)
    batch = MAX_BATCH
    while batch > 1 and batch * per_image > budget:
        batch //= 2
    return batch


def resolve_batch_size(batch_size: BatchSize, data, device: torch.device) -> int:
    if batch_size is None or batch_size == "auto":
        return auto_batch_size(data.input_size, device)
    if isinstance(batch_size, str) or int(batch_size) < 1:
        raise ValueError(f"batch_size must be a positive integer or 'auto', got {batch_size!r}")
    return int(batch_size)


@torch.no_grad()
def _run_frozen(
    module: Callable,
    data,
    split: str,
    device: torch.device,
    precision: str,
    batch_size: int,
    positions: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    chunks, labels = [], []
    for images, targets in data.batches(
        split,
        batch_size,
        augment=False,
        shuffle=False,
        seed=0,
        device=device,
        positions=positions,
        memory_format=memory_format(device),
    ):
        with autocast(device, precision):
            out = module(images)
        # Each batch is copied out as it finishes (activations of a whole split may not fit
        # on the device), without a wait per batch.
        chunks.append(to_host(out.float()))
        labels.append(to_host(targets))
    wait_for_host_copies(device)
    return torch.cat(chunks), torch.cat(labels)


# ------------------------------------------------------------------------------ the bank


@dataclass
class Reuse:
    """How many images' outputs a request computed, and how many it read from the bank."""

    computed: int = 0
    reused: int = 0

    def add(self, other: Reuse) -> None:
        self.computed += other.computed
        self.reused += other.reused


@dataclass
class FrozenModule:
    """A frozen module whose outputs the bank stores: ``key`` says which module it is (weights
    fingerprint; for a prefix also the architecture and cut), ``build`` makes it (called at most
    once, and only when some image is missing), ``params`` its parameter count once known."""

    key: dict
    build: Callable[[], nn.Module]
    _built: list = field(default_factory=list)
    params: int | None = None

    def module(self, device: torch.device) -> nn.Module:
        if not self._built:
            module = self.build().eval().to(device, memory_format=memory_format(device))
            self.params = sum(p.numel() for p in module.parameters())
            self._built.append(module)
        return self._built[0]


def pool_key(
    data, image_set: str, frozen: FrozenModule, precision: str, device: torch.device | str = "cpu"
) -> dict:
    """Everything that changes one image's output except which image it is. The device type
    enters the key off CPU (CUDA kernels round differently; CPU keys stay as they were)."""
    kind = torch.device(device).type
    return {
        **({"device": kind} if kind != "cpu" else {}),
        **frozen.key,
        "target": data.target.fingerprint,
        "from": image_set,
        "transform": data.transforms.describe(),
        "in_chans": data.in_chans,
        "input_size": list(data.input_size),
        "precision": precision,
        "bank": BANK_VERSION,
    }


class FeatureBank:
    """Outputs of frozen modules stored per image in ``cache`` (namespace ``namespace``).

    A pool's outputs live in *parts*, one per request that found images missing, each an
    ordinary cache entry (``{"rows", "outputs", "params"}``, sha256-checked, atomic); the pool's
    index (``<namespace>/pools/<pool hash>.jsonl``, one line per part with its rows) says where
    each image is. Requests on one pool hold a file lock, so concurrent workers compute an image
    once. A part lost from disk is recomputed from its rows. With a disabled cache nothing is
    shared: every request computes its images.
    """

    def __init__(self, cache, namespace: str):
        self.cache, self.namespace = cache, namespace

    def outputs(
        self,
        data,
        splits: tuple[str, ...],
        frozen: FrozenModule,
        *,
        device: torch.device,
        precision: str,
        batch_size: int,
    ) -> tuple[dict[str, torch.Tensor], Reuse]:
        """{split: outputs in the split's order} for the base splits in ``splits``."""
        out, reuse = {}, Reuse()
        by_set: dict[str, list[str]] = {}
        for split in splits:
            by_set.setdefault(data.image_set(split), []).append(split)
        for image_set, members in by_set.items():
            rows = np.unique(np.concatenate([data.indices(s) for s in members]))
            key = pool_key(data, image_set, frozen, precision, device)
            compute = _RowComputer(data, members, frozen, device, precision, batch_size)
            gathered, counts = self._rows(key, rows, compute)
            reuse.add(counts)
            for split in members:
                where = np.searchsorted(rows, data.indices(split))
                whole = np.array_equal(where, np.arange(len(rows)))
                out[split] = gathered if whole else gathered[torch.from_numpy(where)]
        return out, reuse

    def holds(self, data, split: str, frozen: FrozenModule, precision: str, device="cpu") -> bool:
        """Whether every image of ``split`` has its output in the bank (nothing is computed)."""
        key = pool_key(data, data.image_set(split), frozen, precision, device)
        known = {row for part in self._index(stable_hash(key)) for row in part["rows"]}
        return bool(known) and set(data.indices(split).tolist()) <= known

    # -- storage ----------------------------------------------------------------------------
    def _index_path(self, pool: str) -> Path:
        return self.cache.root / self.namespace / "pools" / f"{pool}.jsonl"

    def _index(self, pool: str) -> list[dict]:
        if not self.cache.enabled:
            return []
        # A damaged index (undecodable, a special file) is discarded: its parts are recomputed.
        parts = self.cache.read_lines(self._index_path(pool))
        return [part for part in parts if isinstance(part.get("rows"), list)]

    def _part(self, pool: str, rows: np.ndarray, compute: Callable | None) -> dict | None:
        """A part's value; for a listed part whose entry is gone (``compute`` None), ``None``."""
        from tlbench.splits import indices_hash

        def lost() -> dict:
            raise _PartLost

        try:
            return self.cache.get_or_compute(
                self.namespace,
                {"pool": pool, "rows": indices_hash(rows)},
                (lambda: compute(rows)) if compute is not None else lost,
            )
        except _PartLost:
            return None

    def _rows(
        self, key: Mapping, rows: np.ndarray, compute: _RowComputer
    ) -> tuple[torch.Tensor, Reuse]:
        if not self.cache.enabled:
            part = compute(rows)
            return part["outputs"], Reuse(computed=len(rows))
        pool = stable_hash(dict(key))
        index_path = self._index_path(pool)
        # Held while missing images are computed: a second worker waits (logged, with a
        # timeout) and then reads them; without the lock it computes and does not index.
        with self.cache.lock(index_path, f"the {self.namespace} of pool {pool[:12]}") as held:
            wanted, parts = set(rows.tolist()), []
            for entry in self._index(pool):
                if not wanted.intersection(entry["rows"]):
                    continue
                part_rows = np.asarray(entry["rows"], dtype=np.int64)
                part = self._part(pool, part_rows, None)
                if part is not None:  # a part deleted or corrupted on disk: its rows are missing
                    parts.append((part_rows, part))
                    wanted.difference_update(entry["rows"])
            if wanted:
                missing = np.asarray(sorted(wanted), dtype=np.int64)
                parts.append((missing, self._part(pool, missing, compute)))
                if held:  # a full disk costs a warning, never the cell
                    self.cache.append_line(index_path, {"rows": missing.tolist()})
        if compute.frozen.params is None:
            compute.frozen.params = parts[0][1].get("params")
        return _gather(rows, parts), Reuse(compute.computed, len(rows) - compute.computed)


class _PartLost(Exception):
    pass


class _RowComputer:
    """Computes the outputs of given image rows through the frozen module, counting them."""

    def __init__(self, data, splits, frozen: FrozenModule, device, precision, batch_size):
        self.data, self.splits, self.frozen = data, splits, frozen
        self.device, self.precision, self.batch_size = device, precision, batch_size
        self.computed = 0

    def __call__(self, rows: np.ndarray) -> dict:
        module = self.frozen.module(self.device)
        outputs, order = [], []
        remaining = rows
        for split in self.splits:  # each row through the first split that holds it
            indices = self.data.indices(split)  # trainval's are not sorted
            inside = np.isin(remaining, indices)
            if not inside.any():
                continue
            by_row = np.argsort(indices, kind="stable")
            found = by_row[np.searchsorted(indices[by_row], remaining[inside])]
            positions = torch.from_numpy(found.astype(np.int64))
            (acts, _), _ = with_oom_retry(
                lambda bs, pos=positions, s=split: _run_frozen(
                    module, self.data, s, self.device, self.precision, bs, pos
                ),
                self.batch_size,
                # the batch that fits is searched once per (module, input size, device)
                key=(stable_hash(self.frozen.key), tuple(self.data.input_size), str(self.device)),
            )
            outputs.append(acts)
            order.append(remaining[inside])
            remaining = remaining[~inside]
        if len(remaining):
            raise ValueError(f"rows {remaining[:5].tolist()}... belong to none of {self.splits}")
        found = np.concatenate(order)
        sort = torch.from_numpy(np.argsort(found, kind="stable"))
        self.computed += len(rows)
        return {
            "rows": torch.from_numpy(found[sort.numpy()]),
            "outputs": torch.cat(outputs)[sort],
            "params": self.frozen.params,
        }


def _gather(rows: np.ndarray, parts: list[tuple[np.ndarray, dict]]) -> torch.Tensor:
    """Outputs of ``rows`` (sorted) from parts holding them (a row in several parts: any)."""
    first = parts[0][1]["outputs"]
    if len(parts) == 1 and np.array_equal(parts[0][0], rows):
        return first  # the common case, one request's own part: no copy
    out = torch.empty((len(rows), *first.shape[1:]), dtype=first.dtype)
    for part_rows, part in parts:
        stored = part["rows"].numpy()
        take = np.isin(rows, part_rows)
        where = np.searchsorted(stored, rows[take])
        out[torch.from_numpy(np.flatnonzero(take))] = part["outputs"][torch.from_numpy(where)]
    return out


# ------------------------------------------------------------------------------ features


def _backbone_module(backbone: Backbone, weights_fingerprint: str | None) -> FrozenModule:
    build = backbone if not isinstance(backbone, nn.Module) else (lambda: backbone)
    return FrozenModule({"output": "features", "weights": weights_fingerprint}, build)


def extract_features(
    backbone: Backbone,
    data,
    split: str,
    *,
    device: str | torch.device | None = None,
    precision: str = "auto",
    batch_size: BatchSize = "auto",
    cache=None,
    weights_fingerprint: str | None = None,
    params_out: list | None = None,
    reuse_out: Reuse | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled penultimate features of ``split`` (float32, CPU) and their labels.

    ``backbone`` is a headless model (``source.build(num_classes=0, ...)``) or a zero-argument
    callable returning one, so a request whose images are all banked never builds the model.
    With ``cache`` and ``weights_fingerprint`` features are stored per image (``FeatureBank``,
    namespace ``features``); ``reuse_out`` then accumulates how many were computed and reused.
    """
    device = resolve_device(device)
    precision = resolve_precision(precision, device)
    batch_size = resolve_batch_size(batch_size, data, device)
    frozen = _backbone_module(backbone, weights_fingerprint)
    if cache is None or weights_fingerprint is None:
        module = frozen.module(device)
        (feats, labels), _ = with_oom_retry(
            lambda bs: _run_frozen(module, data, split, device, precision, bs), batch_size
        )
        counts = Reuse(computed=len(labels))
    else:
        outputs, counts = FeatureBank(cache, "features").outputs(
            data,
            (split,),
            frozen,
            device=device,
            precision=precision,
            batch_size=batch_size,
        )
        feats, labels = outputs[split], data.labels(split)
    if reuse_out is not None:
        reuse_out.add(counts)
    if params_out is not None:
        params_out.append(frozen.params)
    return feats, labels


def features_key(data, split: str, weights_fingerprint: str, precision: str) -> dict:
    """What identifies a split's features: the weights, the split's images and their
    preprocessing, channels, size and precision (used to key what is computed *from* them)."""
    return {
        "weights": weights_fingerprint,
        "data": data.fingerprint(split),
        "in_chans": data.in_chans,
        "input_size": list(data.input_size),
        "precision": precision,
    }


def features_banked(
    cache, data, split: str, weights_fingerprint: str, precision: str, device=None
) -> bool:
    """Whether ``split``'s features are all in ``cache`` already (a request would compute none)."""
    frozen = FrozenModule({"output": "features", "weights": weights_fingerprint}, lambda: None)
    device = resolve_device(device)
    return FeatureBank(cache, "features").holds(data, split, frozen, precision, device)


@dataclass(frozen=True)
class CellFeatures:
    splits: dict[str, tuple[torch.Tensor, torch.Tensor]]  # split -> (features, labels)
    backbone_params: int
    reuse: Reuse = field(default_factory=Reuse)

    def __getitem__(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        return self.splits[split]

    def cost(self) -> dict:
        """The record's ``cost`` entries: images whose features this cell computed / reused."""
        return {"features_computed": self.reuse.computed, "features_reused": self.reuse.reused}


def cell_features(
    ctx, splits=BASE_SPLITS, *, precision: str = "auto", batch_size: BatchSize = "auto"
) -> CellFeatures:
    """Features of a cell's splits from the bank, building the backbone only if some image is
    missing. ``trainval`` may be requested; it is assembled from train and val. ``batch_size``
    "auto" sizes extraction batches to the memory available (``auto_batch_size``)."""
    device = resolve_device(ctx.device)
    precision = resolve_precision(precision, device)
    batch_size = resolve_batch_size(batch_size, ctx.data, device)
    frozen = _backbone_module(
        lambda: ctx.source.build(num_classes=0, in_chans=ctx.data.in_chans, seed=ctx.seed),
        ctx.source.fingerprint,
    )
    base = tuple(
        dict.fromkeys(
            s for name in splits for s in (("train", "val") if name == "trainval" else (name,))
        )
    )
    outputs, reuse = FeatureBank(ctx.cache, "features").outputs(
        ctx.data, base, frozen, device=device, precision=precision, batch_size=batch_size
    )
    out = {s: (outputs[s], ctx.data.labels(s)) for s in base}
    if "trainval" in splits:
        out["trainval"] = tuple(
            torch.cat([a, b]) for a, b in zip(out["train"], out["val"], strict=True)
        )
    return CellFeatures({s: out[s] for s in splits}, frozen.params or 0, reuse)


# ------------------------------------------------------------------------------ prefix / suffix


@dataclass
class PrefixSplit:
    """A model cut into a frozen ``prefix`` and the ``suffix`` that continues from its output.

    ``forward_suffix(h)`` equals ``model(x)`` when ``h = prefix(x)``; the cut was verified
    numerically on the model itself before being trusted.
    """

    model: nn.Module
    prefix: nn.Sequential
    suffix: nn.Sequential
    boundary: str  # qualified name of the first suffix module ("" when the whole stack is frozen)

    def forward_suffix(self, h: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.suffix(h))


def _flatten(name: str, module: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    # nn.Sequential's forward is plain chaining, so expanding it keeps the computation identical.
    if isinstance(module, nn.Sequential):
        for child_name, child in module.named_children():
            yield from _flatten(f"{name}.{child_name}", child)
    else:
        yield name, module


def feature_stack(model: nn.Module) -> list[tuple[str, nn.Module]]:
    classifier = model.get_classifier() if hasattr(model, "get_classifier") else None
    stack = []
    for name, child in model.named_children():
        if name in _HEAD_CHILDREN or child is classifier:
            continue
        stack.extend(_flatten(name, child))
    return stack


@torch.no_grad()
def _chain_matches(
    model: nn.Module, stack: list[tuple[str, nn.Module]], sample: torch.Tensor
) -> bool:
    """The registration order of children is only a guess at the forward order; check it."""
    was_training = model.training
    model.eval()
    try:
        expected = model.forward_features(sample)
        got = nn.Sequential(*(m for _, m in stack))(sample)
        return got.shape == expected.shape and torch.allclose(got, expected, rtol=1e-4, atol=1e-4)
    except Exception:
        return False
    finally:
        model.train(was_training)


def split_frozen_prefix(model: nn.Module, sample: torch.Tensor) -> PrefixSplit | None:
    """Cut ``model`` before its first module with a trainable parameter, or return ``None`` when
    the model's forward is not a plain chain of its children (then run it whole)."""
    if not (hasattr(model, "forward_features") and hasattr(model, "forward_head")):
        return None
    stack = feature_stack(model)
    if not stack or not _chain_matches(model, stack, sample):
        return None
    cut = next(
        (i for i, (_, m) in enumerate(stack) if any(p.requires_grad for p in m.parameters())),
        len(stack),
    )
    if cut == 0:
        return None
    modules = [m for _, m in stack]
    boundary = stack[cut][0] if cut < len(stack) else ""
    return PrefixSplit(
        model, nn.Sequential(*modules[:cut]), nn.Sequential(*modules[cut:]), boundary
    )


def prefix_outputs(
    split_model: PrefixSplit,
    ctx,
    splits: tuple[str, ...],
    *,
    precision: str,
    batch_size: BatchSize = "auto",
) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], Reuse]:
    """Outputs of the frozen prefix on ``splits`` (no augmentation) with their labels, from the
    bank (namespace ``prefix``; the pool is keyed by weights, architecture and cut as well)."""
    frozen = FrozenModule(
        {
            "output": "prefix",
            "weights": ctx.source.fingerprint,
            "arch": ctx.source.arch,
            "boundary": split_model.boundary,
        },
        lambda: split_model.prefix,
    )
    device = resolve_device(ctx.device)
    outputs, reuse = FeatureBank(ctx.cache, "prefix").outputs(
        ctx.data,
        splits,
        frozen,
        device=device,
        precision=precision,
        batch_size=resolve_batch_size(batch_size, ctx.data, device),
    )
    return {s: (outputs[s], ctx.data.labels(s)) for s in splits}, reuse


def prefix_activations(
    split_model: PrefixSplit, ctx, split: str, *, precision: str, batch_size: BatchSize = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Outputs of the frozen prefix on one split and its labels (see ``prefix_outputs``)."""
    out, _ = prefix_outputs(split_model, ctx, (split,), precision=precision, batch_size=batch_size)
    return out[split]


def prefix_bytes(split_model: PrefixSplit, sample: torch.Tensor, num_images: int) -> int:
    with torch.no_grad():
        was_training = split_model.prefix.training
        out = split_model.prefix.eval()(sample[:1])
        split_model.prefix.train(was_training)
    return out[0].numel() * 4 * num_images
