"""Deterministic, stratified, recorded splits: the same rules for every dataset.

Protocols (decided here once, documented in docs/datasets.md):

* The **test split** is the dataset's official test split. Without one, a stratified 20% is carved
  from the training data with the fixed seed ``TEST_SEED``, not the run seed: like VTAB and most
  papers, every seed is scored on the same test images, so seeds vary only train/val selection.
  ``test_size`` caps it (stratified, also with ``TEST_SEED``).
* ``standard``: the training pool is everything that is not test. ``train_size`` caps the
  labelled pool (stratified), i.e. ``trainval``; validation is carved from it (stratified, 20%
  capped at 10000, or ``val_size``) and ``train`` is the rest.
* ``vtab1k``: 1000 examples drawn stratified from the pool; ``val`` is 200 of them, ``train`` the
  other 800, and ``trainval`` all 1000 for the final fit (Zhai et al. 2019).
* ``shots = k``: ``train`` holds exactly k examples per class; ``val`` holds min(k, 4) per class
  from the rest of the pool, as CoOp (Zhou et al. 2022) does, unless ``val_size`` overrides it.
* The **source reserve**: a fixed, stratified 20% of the training pool (seed ``RESERVE_SEED``,
  carved after the test split), where sources pretrained inside a suite draw their images
  (protocol ``source-reserve``). Every *capped* target split (``train_size`` below the pool,
  ``shots``, ``vtab1k``) draws from the pool minus the reserve, so no such target ever shares an
  image with a self-pretrained source; an uncapped ``standard`` split uses the whole pool, as the
  field's full-data protocols do, and the runner refuses to pair it with a source trained on the
  same dataset (``tlbench.leakage``).
* ``source-reserve``: ``trainval`` is ``train_size`` images of the reserve (80% of it when not
  given), ``test`` up to ``SOURCE_TEST_MAX`` other reserve images: a source's own held-out check,
  which touches no image any target split can hold.

Index arrays are sorted int64; ``train``/``val`` index ``target.train``; ``test`` indexes
``target.test``, or ``target.train`` when it was carved (``test_from == "train"``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tlbench.errors import UserError

SPLIT_NAMES = ("train", "val", "trainval", "test")
SPLIT_OPTIONS = ("train_size", "val_size", "test_size", "shots", "protocol")
# Bump when a rule below changes which images land in which split: it enters every cell's
# config hash (``Cell.versions["protocol"]``), so resumed runs never mix old and new splits.
PROTOCOL_VERSION = "2"  # 2: capped splits draw outside the source reserve; hashes cover content
TEST_SEED = 0
RESERVE_SEED = 0
RESERVE_FRACTION = 0.2
SOURCE_TEST_MAX = 1000
PROTOCOLS = ("standard", "vtab1k", "source-reserve")
TEST_FRACTION = 0.2
VAL_FRACTION = 0.2
VAL_MAX = 10_000
VTAB_TRAIN, VTAB_VAL = 800, 200
COOP_MAX_VAL_SHOTS = 4


@dataclass(frozen=True)
class Splits:
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    test_from: str  # "test" (official) or "train" (carved from the training data)
    record: dict = field(default_factory=dict)

    @property
    def trainval(self) -> np.ndarray:
        return np.concatenate([self.train, self.val])

    def indices(self, split: str) -> np.ndarray:
        check_split(split)
        return getattr(self, split)


def check_split(split: str) -> None:
    if split not in SPLIT_NAMES:
        raise UserError(f"unknown split {split!r} (expected one of {', '.join(SPLIT_NAMES)})")


def indices_hash(*arrays: np.ndarray) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array, dtype=np.int64).tobytes())
        digest.update(b"|")  # so that moving an index between splits changes the hash
    return digest.hexdigest()


def content_hash(fingerprint: str, *arrays: np.ndarray) -> str:
    """Identifies the images a split holds: the dataset's content fingerprint and the indices.
    Equal hashes mean the same images, so records with equal split hashes may be compared."""
    return hashlib.sha256(f"{fingerprint}|{indices_hash(*arrays)}".encode()).hexdigest()


def make_splits(target, options: Mapping[str, Any], seed: int) -> Splits:
    """Split ``target`` (a ``TargetData``) by the common dataset options; see the module docstring."""
    opts = {k: options.get(k) for k in SPLIT_OPTIONS}
    protocol = opts["protocol"] or "standard"
    _check_combination(target.name, opts, protocol)
    train_labels = np.asarray(target.train.labels, dtype=np.int64)
    num_classes = target.num_classes

    pool = np.arange(len(train_labels))
    if target.test is not None and protocol != "source-reserve":
        test_from, test_labels = "test", np.asarray(target.test.labels, dtype=np.int64)
        test = np.arange(len(test_labels))
    else:
        test_from, test_labels = "train", train_labels
        test = np.empty(0, dtype=np.int64)
        if target.test is None:
            n_test = max(1, round(TEST_FRACTION * len(pool)))
            test, pool = stratified_take(
                train_labels, pool, n_test, _rng(TEST_SEED, "test"), num_classes
            )
    reserve, outside = source_reserve(train_labels, pool, num_classes)
    capped = (
        protocol != "standard"
        or opts["shots"] is not None
        or (opts["train_size"] is not None and opts["train_size"] < len(pool))
    )
    if protocol == "source-reserve":
        train, val, test = _from_reserve(
            target.name, train_labels, reserve, opts, seed, num_classes
        )
        return _splits(target, protocol, seed, test_from, train, val, test, reserve, capped, opts)
    if opts["test_size"] is not None and opts["test_size"] < len(test):
        test, _ = stratified_take(
            test_labels, test, opts["test_size"], _rng(TEST_SEED, "test_size"), num_classes
        )
    draw_from = outside if capped else pool
    if capped and opts["train_size"] is not None and opts["train_size"] > len(outside):
        raise UserError(
            f"dataset {target.name!r}: train_size = {opts['train_size']} but a capped split draws from the {len(outside)} images outside the source reserve; omit train_size to use the whole pool of {len(pool)}"
        )
    rng = _rng(seed, "trainval")
    if protocol == "vtab1k":
        train, val = _fixed_size(
            target.name, train_labels, draw_from, VTAB_TRAIN, VTAB_VAL, rng, num_classes
        )
    elif opts["shots"] is not None:
        train, val = _shots(target, train_labels, draw_from, opts["shots"], opts["val_size"], rng)
    else:
        train, val = _standard(target.name, train_labels, draw_from, opts, rng, num_classes)
    return _splits(target, protocol, seed, test_from, train, val, test, reserve, capped, opts)


def source_reserve(
    labels: np.ndarray, pool: np.ndarray, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """(reserve, the rest of the pool): the fixed stratified share sources pretrain on."""
    n = round(RESERVE_FRACTION * len(pool))
    if n < 1:
        return np.empty(0, dtype=np.int64), pool
    return stratified_take(labels, pool, n, _rng(RESERVE_SEED, "reserve"), num_classes)


def _from_reserve(name, labels, reserve, opts, seed, num_classes):
    held_out = min(SOURCE_TEST_MAX, max(1, round(VAL_FRACTION * len(reserve))))
    size = opts["train_size"] if opts["train_size"] is not None else len(reserve) - held_out
    if size >= len(reserve):
        raise UserError(
            f"dataset {name!r}: its source reserve holds {len(reserve)} images; a source can train on at most {len(reserve) - 1} of them (train_size = {size}), the rest are its held-out check"
        )
    trainval, rest = stratified_take(
        labels, reserve, size, _rng(seed, "reserve-trainval"), num_classes
    )
    n_val = max(1, min(VAL_MAX, round(VAL_FRACTION * len(trainval))))
    val, train = stratified_take(labels, trainval, n_val, _rng(seed, "reserve-val"), num_classes)
    test, _ = stratified_take(
        labels, rest, min(SOURCE_TEST_MAX, len(rest)), _rng(TEST_SEED, "reserve-test"), num_classes
    )
    return train, val, test


def _splits(target, protocol, seed, test_from, train, val, test, reserve, capped, opts) -> Splits:
    train, val, test = (np.sort(a).astype(np.int64) for a in (train, val, test))
    fingerprint = target.fingerprint
    record = {
        "protocol": "shots" if opts["shots"] is not None and protocol == "standard" else protocol,
        "seed": seed,
        "test_seed": TEST_SEED,
        "test_from": test_from,
        "dataset_fingerprint": fingerprint,
        "sizes": {
            "train": len(train),
            "val": len(val),
            "trainval": len(train) + len(val),
            "test": len(test),
        },
        "hash": content_hash(fingerprint, train, val, test),
        "hashes": {
            "train": content_hash(fingerprint, train),
            "val": content_hash(fingerprint, val),
            "test": content_hash(fingerprint, test),
        },
        "reserve": {
            "size": len(reserve),
            "hash": content_hash(fingerprint, reserve),
            "excluded": bool(capped),
        },
        "options": {k: v for k, v in opts.items() if v is not None},
        "version": PROTOCOL_VERSION,
    }
    return Splits(train=train, val=val, test=test, test_from=test_from, record=record)


def _check_combination(name: str, opts: Mapping[str, Any], protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise UserError(
            f"dataset {name!r}: unknown protocol {protocol!r} (expected one of {', '.join(PROTOCOLS)})"
        )
    if protocol == "source-reserve":
        clash = [k for k in ("val_size", "test_size", "shots") if opts[k] is not None]
        if clash:
            raise UserError(
                f"dataset {name!r}: option {clash[0]!r} cannot be combined with protocol = 'source-reserve' (train_size picks how many reserve images a source trains on)"
            )
    if protocol == "vtab1k":
        clash = [k for k in ("train_size", "val_size", "shots") if opts[k] is not None]
        if clash:
            raise UserError(
                f"dataset {name!r}: option {clash[0]!r} cannot be combined with protocol = 'vtab1k' (it fixes 800 train + 200 val)"
            )
    if opts["shots"] is not None and opts["train_size"] is not None:
        raise UserError(f"dataset {name!r}: give either 'shots' or 'train_size', not both")


def _standard(name, labels, pool, opts, rng, num_classes):
    if opts["train_size"] is not None and opts["train_size"] < len(pool):
        pool, _ = stratified_take(labels, pool, opts["train_size"], rng, num_classes)
    n_val = (
        opts["val_size"]
        if opts["val_size"] is not None
        else min(VAL_MAX, round(VAL_FRACTION * len(pool)))
    )
    if n_val >= len(pool):
        raise UserError(
            f"dataset {name!r}: val_size = {n_val} leaves no training examples (the training pool has {len(pool)})"
        )
    val, train = stratified_take(labels, pool, max(n_val, 1), rng, num_classes)
    return train, val


def _fixed_size(name, labels, pool, n_train, n_val, rng, num_classes):
    if len(pool) < n_train + n_val:
        raise UserError(
            f"dataset {name!r}: protocol 'vtab1k' needs {n_train + n_val} training examples, the training pool outside the source reserve has {len(pool)}"
        )
    chosen, _ = stratified_take(labels, pool, n_train + n_val, rng, num_classes)
    val, train = stratified_take(labels, chosen, n_val, rng, num_classes)
    return train, val


def _shots(target, labels, pool, shots, val_size, rng):
    train_parts, rest_parts = [], []
    for c in range(target.num_classes):
        members = rng.permutation(pool[labels[pool] == c])
        if len(members) < shots:
            raise UserError(
                f"dataset {target.name!r}: shots = {shots} but class {target.class_names[c]!r} has only "
                f"{len(members)} training examples"
            )
        train_parts.append(members[:shots])
        rest_parts.append(members[shots:])
    train = np.concatenate(train_parts)
    if val_size is not None:
        rest = np.concatenate(rest_parts)
        if val_size > len(rest):
            raise UserError(
                f"dataset {target.name!r}: val_size = {val_size} but only {len(rest)} examples remain after the shots"
            )
        val, _ = stratified_take(labels, rest, val_size, rng, target.num_classes)
    else:
        per_class = min(shots, COOP_MAX_VAL_SHOTS)
        val = np.concatenate([rest[:per_class] for rest in rest_parts])
    return train, val


def stratified_take(
    labels: np.ndarray, candidates: np.ndarray, n: int, rng: np.random.Generator, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Take ``n`` of ``candidates`` keeping class proportions; return (taken, rest).

    Quotas use largest remainders; when ``n`` allows, every present class gets at least one, so
    small subsets (VTAB-1k on 100+ classes) do not silently drop a class.
    """
    candidates = np.asarray(candidates, dtype=np.int64)
    n = min(n, len(candidates))
    counts = np.bincount(labels[candidates], minlength=num_classes)
    quotas = _quotas(counts, n)
    taken, rest = [], []
    for c in np.flatnonzero(counts):
        members = rng.permutation(candidates[labels[candidates] == c])
        taken.append(members[: quotas[c]])
        rest.append(members[quotas[c] :])
    return np.sort(np.concatenate(taken)), np.sort(np.concatenate(rest))


def _quotas(counts: np.ndarray, n: int) -> np.ndarray:
    exact = counts * (n / counts.sum())
    quotas = np.floor(exact).astype(np.int64)
    order = np.lexsort((np.arange(len(counts)), -(exact - quotas)))  # ties: lower class first
    for c in order[: n - quotas.sum()]:
        quotas[c] += 1
    present = np.flatnonzero(counts)
    if n >= len(present):
        for c in present[quotas[present] == 0]:
            donor = int(np.argmax(quotas))  # has >= 2 by pigeonhole, since n >= present classes
            quotas[donor] -= 1
            quotas[c] += 1
    return quotas


def _rng(seed: int, purpose: str) -> np.random.Generator:
    # A separate stream per purpose: changing the run seed never moves the carved test split.
    salt = int.from_bytes(hashlib.sha256(purpose.encode()).digest()[:4], "little")
    return np.random.default_rng([seed, salt])
