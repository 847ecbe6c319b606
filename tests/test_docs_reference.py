"""The plugin reference cannot drift from the code: every field table in
docs/plugins/reference.md equals its dataclass (names, order, annotated types, defaults), every
documented method and helper has the documented parameters, every name ``tlbench.api`` exports
is on docs/plugins/api.md, and the adapter has everything the model contract lists."""

from __future__ import annotations

import dataclasses
import inspect
import re
from pathlib import Path

import pytest

import tlbench.api as api
from tlbench.data import PreparedData
from tlbench.datasetlib import common

DOCS = Path(__file__).resolve().parent.parent / "docs" / "plugins"
REFERENCE = DOCS / "reference.md"

CLASSES = {
    cls.__name__: cls
    for cls in (
        api.ModelSpec,
        api.DatasetSpec,
        api.StrategySpec,
        api.EstimatorSpec,
        api.Option,
        api.BuildContext,
        api.SourceModel,
        api.TargetData,
        api.ImageSet,
        common.Decoded,
        api.CellContext,
        api.Cell,
        PreparedData,
        api.StrategyResult,
        api.Predictions,
    )
}


def sections(path: Path) -> dict[str, str]:
    """``### heading`` -> its text, up to the next heading of level 2 or 3."""
    parts = re.split(r"^#{2,3} +(.+?)[ \t]*$", path.read_text(), flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def tables(text: str) -> dict[str, list[list[str]]]:
    """First header cell -> the rows of each Markdown table in ``text`` (cells unquoted)."""
    found: dict[str, list[list[str]]] = {}
    for block in re.findall(r"(?:^\|.*\|[ \t]*\n?)+", text, flags=re.MULTILINE):
        rows = [_cells(line) for line in block.strip().splitlines()]
        found[rows[0][0]] = [row for row in rows[2:]]
    return found


def _cells(line: str) -> list[str]:
    cells = re.split(r"(?<!\\)\|", line.strip())[1:-1]
    return [cell.strip().replace("\\|", "|").strip("`") for cell in cells]


def documented_classes() -> dict[str, list[list[str]]]:
    """Class name -> its field rows, for every heading that names classes and has a field table."""
    found = {}
    for heading, text in sections(REFERENCE).items():
        rows = tables(text).get("field")
        if rows is None:
            continue
        for name in re.findall(r"`(\w+)`", heading):
            found[name] = rows
    return found


def default_text(field: dataclasses.Field) -> str:
    if field.default is not dataclasses.MISSING:
        value = field.default
        return value.__name__ if callable(value) and hasattr(value, "__name__") else repr(value)
    if field.default_factory is not dataclasses.MISSING:
        return f"{field.default_factory.__name__}()"
    return "required"


def call_form(name: str, function) -> str:
    """``batches(split, batch_size, *, augment=False, ...)``: parameters and defaults, no types."""
    signature = inspect.signature(function)
    parameters = [
        p.replace(annotation=p.empty)
        for p in signature.parameters.values()
        if p.name not in ("self", "cls")
    ]
    bare = signature.replace(parameters=parameters, return_annotation=signature.empty)
    return f"{name}{bare}"


def test_every_contract_class_has_a_field_table():
    missing = sorted(set(CLASSES) - set(documented_classes()))
    assert missing == [], f"docs/plugins/reference.md has no field table for {missing}"


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_the_field_table_equals_the_dataclass(name):
    rows = documented_classes()[name]
    documented = [(row[0], row[1], row[2]) for row in rows]
    actual = [
        (f.name, str(f.type), default_text(f))
        for f in dataclasses.fields(CLASSES[name])
        if not f.name.startswith("_")
    ]
    assert documented == actual, (
        f"docs/plugins/reference.md: the table of {name} drifted from the code; it should read\n"
        + "\n".join(f"| `{n}` | `{t}` | {d} |" for n, t, d in actual)
    )


def test_documented_methods_have_the_documented_parameters():
    checked = 0
    for heading, text in sections(REFERENCE).items():
        rows = tables(text).get("method")
        if rows is None:
            continue
        [owner] = [CLASSES[n] for n in re.findall(r"`(\w+)`", heading) if n in CLASSES]
        for method, signature, _meaning in rows:
            assert hasattr(owner, method), f"{owner.__name__} has no method {method!r}"
            assert signature == call_form(method, getattr(owner, method))
            checked += 1
    assert checked >= 7


def test_documented_dataset_helpers_have_the_documented_parameters():
    rows = tables(sections(REFERENCE)["Dataset helpers"])["function"]
    assert {row[0] for row in rows} >= {"decode_once", "decode_files", "make_target"}
    for name, signature, _meaning in rows:
        assert signature == call_form(name, getattr(common, name))
        assert getattr(api, name) is getattr(common, name), f"tlbench.api does not export {name}"


def test_table_cells_keep_escaped_pipes_inside_types():
    assert _cells("| `test` | `ImageSet \\| None` | required | the official test split |") == [
        "test",
        "ImageSet | None",
        "required",
        "the official test split",
    ]


def test_every_public_api_name_is_documented_and_every_documented_name_exists():
    names = {
        row[0]
        for text in sections(DOCS / "api.md").values()
        for row in tables(text).get("name", [])
    }
    assert names == set(api.__all__)


def test_the_adapter_has_everything_the_model_contract_lists():
    rows = tables(sections(REFERENCE)["The model contract"])["the module has"]
    wanted = set()
    for (
        row
    ) in rows:  # `get_classifier()`, `forward_features(x)`, `forward_head(...)`, `num_features`
        wanted |= set(re.findall(r"(\w+)\(", row[0])) or {row[0]}
    assert {"get_classifier", "reset_classifier", "forward_features", "group_matcher"} <= wanted
    from torch import nn

    model = api.FeatureModel(nn.Sequential(nn.Flatten(), nn.Linear(12, 4)), 4, 3)
    assert [name for name in sorted(wanted) if not hasattr(model, name)] == []
