"""The dataset helpers plugin authors are told to use behave as docs/plugins/reference.md says:
``decode_once`` takes ``load(argument, options)`` or ``load(argument, options, context)``, makes
it a factory, decodes once per content, and names a loader of any other shape at once."""

from __future__ import annotations

import pytest

from tlbench.datasetlib.common import decode_once


def test_a_two_argument_loader_becomes_a_factory_that_decodes_once_per_content():
    calls = []

    @decode_once
    def load(argument, options):
        calls.append((argument, dict(options)))
        return f"decoded {argument}"

    assert load("a", {"root": "/data", "shots": 5}, "context") == "decoded a"
    assert load("a", {"root": "/data", "shots": 10, "train_size": 300}, "other") == "decoded a"
    assert calls == [("a", {"root": "/data"})], "split options neither reach it nor re-decode"
    load("a", {"root": "/elsewhere"}, None)
    assert len(calls) == 2


def test_a_loader_taking_the_context_gets_the_first_calls_context():
    seen = []

    @decode_once
    def load(argument, options, context):
        seen.append(context)
        return len(seen)

    assert load(None, {}, "first") == 1 and load(None, {"root": "/other"}, "x") == 2
    assert load(None, {}, "second") == 1, "memoised: the context is not part of the key"
    assert seen == ["first", "x"]


@pytest.mark.parametrize(
    "loader",
    [lambda argument: None, lambda a, b, c, d: None, lambda argument, options, *, root: None],
    ids=["one-argument", "four-arguments", "required-keyword"],
)
def test_a_loader_of_another_shape_is_named_when_decorated(loader):
    with pytest.raises(TypeError, match=r"decode_once wraps load\(argument, options\) or load\("):
        decode_once(loader)
