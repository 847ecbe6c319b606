"""Which entries may be averaged together, and what the leaderboards' rows and columns are.

A suite's cells are laid out as models (rows) x datasets (columns), one leaderboard per strategy.
Two entries with the same ids are only averaged over seeds when everything that defines what
they computed agrees. Otherwise the id gets a second *variant* (``lite0 (2)``) and a note that
says what differs:

* a dataset's reference, options, split protocol or test split (``split.hashes.test``), or its
  recipe versions: another column;
* a strategy's reference, options or recipe versions: another strategy (another leaderboard);
* a model's reference, options or recipe versions, recipe versions that name no component, or
  the same seed recorded twice with different splits or config hashes: another row.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field

from tlbench.publish.merge import Entry, versions_of, versions_text
from tlbench.publish.runs import Run
from tlbench.report.records import init_role, is_baseline, is_trivial

KINDS = ("model", "dataset", "strategy")
# Fields of a split record that are the same for every seed of one protocol.
SPLIT_PROTOCOL = ("protocol", "options", "test_from", "test_seed", "sizes")


@dataclass(frozen=True)
class Variant:
    """One row (model), column (dataset) or strategy of a suite. ``index`` 0 is the variant
    seen first; later ones carry ``difference``, how they differ from it."""

    kind: str
    id: str
    index: int
    ref: str
    difference: str = ""

    @property
    def label(self) -> str:
        return self.id if self.index == 0 else f"{self.id} ({self.index + 1})"

    @property
    def key(self) -> str:
        return self.id if self.index == 0 else f"{self.id}~{self.index + 1}"


@dataclass
class Group:
    """The entries (one per seed) of one model x dataset x strategy: what a leaderboard cell
    shows and what one cell page describes."""

    suite: str
    model: Variant
    dataset: Variant
    strategy: Variant
    entries: list[Entry] = field(default_factory=list)

    @property
    def id(self) -> str:
        key = json.dumps([self.suite, self.model.key, self.dataset.key, self.strategy.key])
        return hashlib.sha256(key.encode()).hexdigest()[:10]

    @property
    def baseline(self) -> bool:
        """A randomly initialised model (``tlbench.report.records.is_baseline``)."""
        return any(
            is_baseline(e.record.get("model_ref"), e.record.get("model_card")) for e in self.entries
        )

    @property
    def role(self) -> str:
        """What a random-init model's cell measures, the report's ``init_role``: trained from
        scratch, random-init features, or "" for a pretrained model."""
        roles = (_role(e.record) for e in self.entries)
        return next((role for role in roles if role), "")

    @property
    def trivial(self) -> bool:
        """A trivial baseline (raw pixels, random features): never given a gain."""
        return any(is_trivial(e.record.get("model_card")) for e in self.entries)


def _role(record: dict) -> str:
    cost: dict = record["cost"] if isinstance(record.get("cost"), dict) else {}
    return init_role(
        record.get("model_ref"),
        record.get("model_card"),
        record.get("strategy_ref", record["strategy"]),
        cost.get("trainable_params"),
        cost.get("total_params"),
    )


@dataclass
class SuiteView:
    """Everything published about one suite name."""

    name: str
    runs: list[Run]
    groups: list[Group]
    models: list[Variant]
    datasets: list[Variant]
    strategies: list[Variant]
    description: str = ""
    notes: list[str] = field(default_factory=list)


def suite_views(entries: Iterable[Entry], runs: list[Run]) -> list[SuiteView]:
    """One view per suite name, in the order the suites were first seen."""
    by_suite: dict[str, list[Entry]] = {}
    for entry in entries:
        by_suite.setdefault(entry.record["suite"], []).append(entry)
    return [_suite_view(name, part, runs) for name, part in by_suite.items()]


def _suite_view(name: str, entries: list[Entry], all_runs: list[Run]) -> SuiteView:
    runs = [run for run in all_runs if any(r["suite"] == name for r in run.records)]
    datasets = _Variants("dataset", wildcard_field="split")
    strategies = _Variants("strategy")
    models = _Variants("model")
    placed = []
    for entry in entries:
        part = _parts(entry.record)
        placed.append(
            (
                entry,
                models.place(entry.record["model"], entry.record.get("model_ref"), part["model"]),
                datasets.place(
                    entry.record["dataset"], entry.record.get("dataset_ref"), part["dataset"]
                ),
                strategies.place(
                    entry.record["strategy"], entry.record.get("strategy_ref"), part["strategy"]
                ),
            )
        )
    groups, rows = _groups_with_rows(name, placed)
    order = _suite_order(runs)
    view = SuiteView(
        name=name,
        runs=runs,
        groups=groups,
        models=_ordered(rows, order.get("model", [])),
        datasets=_ordered(datasets.variants(), order.get("dataset", [])),
        strategies=_ordered(strategies.variants(), order.get("strategy", [])),
        description=next((run.suite_description for run in runs if run.suite_description), ""),
    )
    view.notes = _notes(view)
    return view


def _parts(record: dict) -> dict:
    """What must agree per kind for two entries to be averaged; ``model`` also holds the
    recipe versions that name no component (they change what the row computed)."""
    versions = versions_of(record)
    owned: dict[str, dict] = {kind: {} for kind in KINDS}
    rest: dict = {}
    for key, value in versions.items():
        kind = next((k for k in KINDS if key in _names(record, k)), None)
        (owned[kind] if kind else rest)[key] = value
    options: dict = record["options"] if isinstance(record.get("options"), dict) else {}
    parts = {
        kind: {
            "ref": record.get(f"{kind}_ref"),
            "options": options.get(kind) or {},
            "versions": versions_text(owned[kind]),
        }
        for kind in KINDS
    }
    parts["dataset"]["split"] = _split_protocol(record)
    if rest:
        parts["model"]["other versions"] = versions_text(rest)
    return parts


def _names(record: dict, kind: str) -> set[str]:
    """Keys of ``record["versions"]`` that belong to ``kind`` (the runner writes ``model``,
    ``dataset``, ``strategy`` and ``protocol``, the split protocol's version)."""
    ref = str(record.get(f"{kind}_ref") or "")
    base = ref.partition(":")[0]
    names = {kind, str(record[kind]), ref, base, f"{kind}:{base}", f"{kind}:{record[kind]}"}
    return names | ({"protocol", "split"} if kind == "dataset" else set())


def _split_protocol(record: dict) -> dict | None:
    split = record.get("split")
    if not isinstance(split, dict) or not split.get("hash"):
        return None  # the cell failed before its data was split
    protocol = {key: split.get(key) for key in SPLIT_PROTOCOL}
    protocol["test set"] = (split.get("hashes") or {}).get("test")
    return protocol


class _Variants:
    """Distinct signatures per id, numbered in order of first appearance. With
    ``wildcard_field``, a part whose field is unknown (None) joins the first variant that agrees
    on everything else."""

    def __init__(self, kind: str, wildcard_field: str | None = None):
        self.kind = kind
        self.wildcard = wildcard_field
        self._seen: dict[str, list[tuple[dict, Variant]]] = {}

    def place(self, id_: str, ref, part: dict) -> Variant:
        known = self._seen.setdefault(id_, [])
        for seen, variant in known:
            if _agree(seen, part, self.wildcard):
                if self.wildcard and seen.get(self.wildcard) is None:
                    seen[self.wildcard] = part.get(self.wildcard)  # now known
                return variant
        difference = _difference(known[0][0], part) if known else ""
        variant = Variant(self.kind, id_, len(known), str(ref or id_), difference)
        known.append((dict(part), variant))
        return variant

    def variants(self) -> list[Variant]:
        return [variant for known in self._seen.values() for _, variant in known]


def _agree(a: dict, b: dict, wildcard: str | None) -> bool:
    if wildcard is None:
        return _canonical(a) == _canonical(b)
    strip = {k: v for k, v in a.items() if k != wildcard}
    other = {k: v for k, v in b.items() if k != wildcard}
    unknown = a.get(wildcard) is None or b.get(wildcard) is None
    return _canonical(strip) == _canonical(other) and (
        unknown or _canonical(a[wildcard]) == _canonical(b[wildcard])
    )


def _groups_with_rows(suite: str, placed: list) -> tuple[list[Group], list[Variant]]:
    """Groups of entries and the rows they sit in. A seed already present in its group
    (recorded twice, with another split or config hash) opens a further group; every distinct
    (model variant, repeat number) of a model id is a row of its own."""
    buckets: dict[tuple, list[list[Entry]]] = {}
    for entry, model, dataset, strategy in placed:
        slots = buckets.setdefault((model, dataset, strategy), [])
        slot = next((s for s in slots if all(e.seed != entry.seed for e in s)), None)
        if slot is None:
            slot = []
            slots.append(slot)
        slot.append(entry)
    rows: dict[str, dict[tuple[int, int], Variant]] = {}
    groups = []
    for (model, dataset, strategy), slots in buckets.items():
        for repeat, slot in enumerate(slots):
            known = rows.setdefault(model.id, {})
            if (model.index, repeat) not in known:
                difference = "; ".join(
                    text for text in (model.difference, _repeat_reason(slot, slots[0])) if text
                )
                known[(model.index, repeat)] = Variant(
                    "model", model.id, len(known), model.ref, difference
                )
            row = known[(model.index, repeat)]
            groups.append(Group(suite, row, dataset, strategy, sorted(slot, key=lambda e: e.seed)))
    return groups, [row for known in rows.values() for row in known.values()]


def _repeat_reason(slot: list[Entry], first: list[Entry]) -> str:
    if slot is first:
        return ""
    reasons = []
    for b in slot:
        a = next((e for e in first if e.seed == b.seed), None)
        if a is None:
            continue
        if a.record["config_hash"] != b.record["config_hash"]:
            what = f"config hashes {_short(a.record['config_hash'])} and {_short(b.record['config_hash'])}"
        else:
            what = f"splits {_short(a.split_identity)} and {_short(b.split_identity)}"
        reasons.append(f"seed {b.seed} recorded twice, with {what}")
    return "; ".join(reasons[:3])


def _difference(first: dict, other: dict) -> str:
    """``options.lr: 0.001 -> 0.0003; versions: unversioned -> linear-probe 2``."""
    a, b = dict(_flatten(first)), dict(_flatten(other))
    changed = [
        f"{key}: {_shown(a.get(key))} → {_shown(b.get(key))}"
        for key in dict.fromkeys([*a, *b])
        if _canonical(a.get(key)) != _canonical(b.get(key))
    ]
    return "; ".join(changed[:6]) + ("; …" if len(changed) > 6 else "")


def _flatten(value, prefix: str = "") -> list[tuple[str, object]]:
    if isinstance(value, dict) and value:
        return [pair for k, v in value.items() for pair in _flatten(v, f"{prefix}{k}.")]
    return [(prefix.rstrip("."), value)]


def _shown(value) -> str:
    if value is None:
        return "unset"
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return _short(text) if len(text) == 64 and text.isalnum() else text


def _short(text) -> str:
    return str(text)[:10] + "…" if text and len(str(text)) > 12 else str(text)


def _canonical(value) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _suite_order(runs: list[Run]) -> dict[str, list[str]]:
    """Ids per kind as the suite files list them, the newest run's file first."""
    order: dict[str, list[str]] = {}
    for run in sorted(runs, key=lambda r: r.order, reverse=True):
        for kind, ids in run.suite_order.items():
            order.setdefault(kind, [])
            order[kind] += [i for i in ids if i not in order[kind]]
    return order


def _ordered(variants: list[Variant], order: list[str]) -> list[Variant]:
    """Suite-file order, ids the files do not list after them; variants follow their id."""
    first_seen = list(dict.fromkeys(v.id for v in variants))
    ids = [i for i in order if i in first_seen] + [i for i in first_seen if i not in order]
    return sorted(variants, key=lambda v: (ids.index(v.id), v.index))


def _notes(view: SuiteView) -> list[str]:
    """One line per variant beyond the first, and one when the runs' suite files differ."""
    notes = []
    what = {"model": "row", "dataset": "column", "strategy": "leaderboard"}
    for variant in [*view.strategies, *view.datasets, *view.models]:
        if variant.index > 0:
            notes.append(
                f"{variant.kind} {variant.label} is a separate {what[variant.kind]}, never "
                f"averaged with {variant.id}: {variant.difference or 'its configuration differs'}"
            )
    files: dict = {}
    for run in view.runs:
        if run.suite_sha256:
            files.setdefault(run.suite_sha256, []).append(run.label)
    if len(files) > 1:
        described = "; ".join(
            f"{', '.join(labels)} (sha256 {digest[:10]}…)" for digest, labels in files.items()
        )
        notes.append(
            f"The runs used {len(files)} different versions of the suite file: {described}. "
            "Cells are averaged only where their configurations agree."
        )
    return notes
