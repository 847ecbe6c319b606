"""Whatever a suite file holds, tlbench answers with a UserError (CLI: ``error:`` lines, exit 2),
never a traceback. Hypothesis generates both TOML-ish text and already-parsed dicts."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner
from helpers import PLUGIN, tiny_host
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tlbench.errors import UserError
from tlbench.suite import TOP_LEVEL, load_suite, parse_suite

HOST = tiny_host()
# Every field the parser knows, plus option, exclude and misspelt keys.
KEYS = [
    *sorted(TOP_LEVEL),
    "id",
    "l2",
    "work",
    "width",
    "train_size",
    "shots",
    "protocol",
    "model",
    "dataset",
    "strategy",
    "seed",
    "modle",
]
NAMES = ["tiny-proj", "tiny-digits", "ridge", "ridge-strong", "nope", "tiny-proj:x", "", "scratch"]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 2000),
    st.floats(allow_nan=True),
    st.sampled_from(NAMES),
    st.text(max_size=8),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(KEYS), inner, max_size=4)
    ),
    max_leaves=12,
)
suites = st.dictionaries(st.sampled_from(KEYS), values, max_size=8)


def toml_value(value) -> str:
    """Render almost-TOML: mostly valid, sometimes not (None, NaN, nested tables inline)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return json.dumps(value)


fragments = st.one_of(
    st.builds(lambda k, v: f"{k} = {toml_value(v)}", st.sampled_from(KEYS), values),
    st.builds(
        lambda k: f"[[{k}]]",
        st.sampled_from(["models", "datasets", "strategies", "exclude", "seeds"]),
    ),
    st.builds(lambda k: f"[{k}]", st.sampled_from(KEYS)),
    st.text(max_size=12),
)
texts = st.lists(fragments, max_size=10).map("\n".join)
SLOW_OK = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@SLOW_OK
@given(raw=suites)
# Found by this test: an unhashable exclude value reached a set lookup (TypeError).
@example(
    raw={
        "models": ["tiny-proj"],
        "datasets": ["tiny-digits"],
        "strategies": ["ridge"],
        "exclude": [{"model": ["x"]}],
    }
)
def test_parsed_suites_raise_nothing_but_user_errors(raw):
    try:
        parse_suite(raw, Path("fuzz.toml"), HOST.registry)
    except UserError as exc:
        assert str(exc).strip()


@SLOW_OK
@given(text=texts)
def test_suite_texts_raise_nothing_but_user_errors(tmp_path, text):
    path = tmp_path / "fuzz.toml"
    path.write_text(text)
    try:
        load_suite(path, HOST.registry)
    except UserError as exc:
        assert all(line.startswith(str(path)) for line in str(exc).splitlines())


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(text=texts)
def test_dry_run_of_any_suite_file_never_shows_a_traceback(tmp_path, text):
    from tlbench.cli import cli

    path = tmp_path / "fuzz.toml"
    path.write_text(text)
    result = CliRunner().invoke(
        cli,
        [
            "--plugin",
            PLUGIN,
            "run",
            str(path),
            "--dry-run",
            "--json",
            "--out",
            str(tmp_path / "run"),
        ],
    )
    assert result.exit_code in (0, 2), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert "Traceback" not in result.output
    if result.exit_code == 2:
        assert result.stderr.strip().splitlines()[-1].startswith("error: ")


def test_a_suite_nested_3000_arrays_deep_is_one_line(tmp_path):
    path = tmp_path / "deep.toml"
    path.write_text("x = " + "[" * 3000 + "]" * 3000 + "\n")
    try:
        load_suite(path, HOST.registry)
    except UserError as exc:
        assert str(exc) == f"{path}: values nested too deeply (at most 32 levels)"
    else:
        raise AssertionError("a 3000-deep suite was accepted")


def test_an_id_with_a_bidirectional_override_is_refused_naming_its_field(tmp_path):
    path = tmp_path / "bidi.toml"
    path.write_text(
        'seeds = [0]\nmodels = ["tiny-proj"]\ndatasets = ["tiny-digits"]\n'
        '[[strategies]]\nname = "ridge"\nid = "ridge\u202egpj.exe"\n'
    )
    try:
        load_suite(path, HOST.registry)
    except UserError as exc:
        assert "strategies[0]" in str(exc) and "U+202E" in str(exc), str(exc)
    else:
        raise AssertionError("an id holding U+202E was accepted")


def test_a_split_size_beyond_any_dataset_is_refused_naming_the_option(tmp_path):
    path = tmp_path / "huge.toml"
    path.write_text(
        'seeds = [0]\nmodels = ["tiny-proj"]\nstrategies = ["ridge"]\n'
        '[[datasets]]\nname = "tiny-digits"\ntrain_size = 1000000000000000000000000000000\n'
    )
    try:
        load_suite(path, HOST.registry)
    except UserError as exc:
        assert "'train_size': expected an integer in [1, 1000000000]" in str(exc), str(exc)
    else:
        raise AssertionError("train_size = 1e30 was accepted")
