"""What publishing adds to the record checks of ``tlbench report``: every field a page uses,
checked by type and range.

Whether a record is a cell record at all (an object of this schema, with its identity fields)
and whether its result can be used is decided by ``tlbench.report.records``, the one validator
report and publish share, with the same warnings. A run directory handed to ``tlbench publish``
may come from a stranger, though, so each record and the run's ``env.json`` are untrusted input
(the threat model is in docs/publishing.md): on top, a record needs the ``config_hash`` runs are
merged by, and a record with a field a page cannot show as it is (a control character in an id,
a field of the wrong type, nesting deeper than ``MAX_DEPTH``, text beyond ``MAX_TEXT``) is
refused as a whole, with one line naming the field; a wrong ``env.json`` field is dropped with
one line, and the run is kept. What passes here is what every page builder may rely on.
"""

from __future__ import annotations

import math
import unicodedata

MAX_DEPTH = 12  # records nest 5 deep; a deeper value is not one tlbench wrote
MAX_ID = 200  # characters in an id (model, dataset, strategy, suite, run)
MAX_TEXT = 100_000  # characters in a free-text field (error with traceback, detail)
MAX_SEED = 2**63
MAX_CLASSES = 100_000
PERCENTAGES = ("top1", "val_top1", "top5")

_IDS = ("suite", "config_hash", "model", "dataset", "strategy", "status")
_OPTIONAL_IDS = ("run_id", "model_ref", "dataset_ref", "strategy_ref", "tlbench_version")
_OPTIONAL_TEXT = ("finished_at", "started_at", "detail", "predictions_error")
_OBJECTS = (
    "metrics",
    "options",
    "cost",
    "hparams",
    "split",
    "versions",
    "predictions",
    "dataset_card",
    "model_card",
    "worker",
    "runtime",
)
# env.json: the fields a page reads, and the JSON type each must have
ENV_FIELDS = {
    "suite": str,
    "git_revision": str,
    "device": str,
    "created_at": str,
    "packages": dict,
    "plugins": list,
    "resumes": list,
    "hardware": dict,
    "argv": list,
}


def depth(value: object) -> int:
    """How deeply ``value`` nests lists and objects (iterative: any depth is safe)."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            stack.extend((v, level + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, level + 1) for v in item)
        else:
            continue
        deepest = max(deepest, level + 1)
    return deepest


def id_problem(value: object, longest: int = MAX_ID) -> str | None:
    """Why ``value`` cannot be an id, or ``None``: a non-empty string of printable characters,
    without bidirectional controls (which make an id read differently from what it is)."""
    if not isinstance(value, str):
        return f"is {_kind(value)}, expected a string"
    if not value.strip():
        return "is empty"
    if len(value) > longest:
        return f"is {len(value)} characters long, at most {longest}"
    for char in value:
        if not char.isprintable() or unicodedata.bidirectional(char) in _BIDI_CONTROLS:
            return f"holds the control character U+{ord(char):04X}"
    return None


_BIDI_CONTROLS = frozenset({"LRE", "RLE", "LRO", "RLO", "PDF", "LRI", "RLI", "FSI", "PDI"})


def record_problem(record: dict) -> str | None:
    """Why a record that ``tlbench.report.records`` can place is not one publish can show, or
    ``None``."""
    if "config_hash" not in record:
        return "lacks config_hash, which publish merges runs by"
    if depth(record) > MAX_DEPTH:
        return f"nests deeper than {MAX_DEPTH} levels"
    for key in _IDS:
        if problem := id_problem(record[key]):
            return f"{key} {problem}"
    seed = record["seed"]
    if not 0 <= seed < MAX_SEED:
        return f"seed {_short(seed)} is not an integer from 0 to 2**63-1"
    for key in _OPTIONAL_IDS:
        if record.get(key) is not None and (problem := id_problem(record[key])):
            return f"{key} {problem}"
    for key in _OPTIONAL_TEXT:
        value = record.get(key)
        if value is not None and not isinstance(value, str):
            return f"{key} is {_kind(value)}, expected a string"
        if isinstance(value, str) and len(value) > MAX_TEXT:
            return f"{key} is longer than {MAX_TEXT} characters"
    error = record.get("error")
    if error is not None and not isinstance(error, dict):
        return f"error is {_kind(error)}, expected an object (type, message, traceback)"
    for key, value in (error or {}).items():
        if value is not None and not isinstance(value, str) or len(value or "") > MAX_TEXT:
            return f"error.{_short(key)} is not a string of at most {MAX_TEXT} characters"
    for key in _OBJECTS:
        value = record.get(key)
        if value is not None and not isinstance(value, dict):
            return f"{key} is {_kind(value)}, expected an object"
    return _nested_problem(record)


def _nested_problem(record: dict) -> str | None:
    for name, value in (record.get("metrics") or {}).items():
        if value is None:
            continue
        if not _is_number(value) or math.isinf(value):
            return f"metrics.{_short(name)} is {_kind(value)}, expected a finite number or null"
        if name in PERCENTAGES and value == value and not 0 <= value <= 100:  # NaN passes
            return f"metrics.{name} is {_short(value)}, expected a percentage in [0, 100]"
    for kind, options in (record.get("options") or {}).items():
        if options is not None and not isinstance(options, dict):
            return f"options.{_short(kind)} is {_kind(options)}, expected an object"
    split = record.get("split") or {}
    for key, expected in (("hashes", dict), ("sizes", dict), ("test_from", str), ("hash", str)):
        # present means of its type: readers take a present key for one (``sizes: null``)
        if key in split and not isinstance(split[key], expected) and key != "test_from":
            return f"split.{key} is {_kind(split[key])}, expected {_name(expected)}"
        if split.get(key) is not None and not isinstance(split[key], expected):
            return f"split.{key} is {_kind(split[key])}, expected {_name(expected)}"
    for name, value in (split.get("hashes") or {}).items():
        if value is not None and not isinstance(value, str):
            return f"split.hashes.{_short(name)} is {_kind(value)}, expected a string"
    for name, value in (split.get("sizes") or {}).items():
        if value is not None and (not _is_int(value) or value < 0):
            return f"split.sizes.{_short(name)} is {_short(value)}, expected a count"
    if split.get("test_from") not in (None, "test", "train"):
        return f"split.test_from is {_short(split['test_from'])}, expected 'test' or 'train'"
    predictions = record.get("predictions") or {}
    for key in ("file", "sha256", "split_hash"):
        if predictions.get(key) is not None and not isinstance(predictions[key], str):
            return f"predictions.{key} is {_kind(predictions[key])}, expected a string"
    count = predictions.get("n")
    if count is not None and (not _is_int(count) or count < 0):
        return f"predictions.n is {_short(count)}, expected a count"
    classes = (record.get("dataset_card") or {}).get("classes")
    if classes is not None and (not _is_int(classes) or not 0 < classes <= MAX_CLASSES):
        return f"dataset_card.classes is {_short(classes)}, expected 1 to {MAX_CLASSES}"
    return None


def env_problems(env: dict) -> list[tuple[str, str]]:
    """``(field, why)`` for each field of ``env.json`` a page cannot use as it is."""
    found = []
    for key, expected in ENV_FIELDS.items():
        value = env.get(key)
        if value is not None and not isinstance(value, expected):
            found.append((key, f"is {_kind(value)}, expected {_name(expected)}"))
        elif depth(value) > MAX_DEPTH:
            found.append((key, f"nests deeper than {MAX_DEPTH} levels"))
    if found:
        return found  # the rows below are read only from fields of the right type
    for row in env.get("plugins") or []:
        if not isinstance(row, dict) or not all(
            isinstance(row.get(k), str | None) for k in ("name", "version", "source")
        ):
            found.append(("plugins", "holds an entry that is not a plugin row"))
            break
        hooks = row.get("hooks")
        if hooks is not None and not (
            isinstance(hooks, list) and all(isinstance(h, str) for h in hooks)
        ):
            found.append(("plugins", "holds hooks that are not a list of names"))
            break
    for row in env.get("resumes") or []:
        if not isinstance(row, dict) or not isinstance(row.get("packages") or {}, dict):
            found.append(("resumes", "holds an entry that is not a resume row"))
            break
    return found


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _kind(value: object) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    if type(value) in names:
        return names[type(value)]
    return f"the number {_short(value)}" if _is_number(value) else type(value).__name__


def _name(expected: type) -> str:
    return {dict: "an object", list: "a list", str: "a string"}.get(expected, expected.__name__)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
