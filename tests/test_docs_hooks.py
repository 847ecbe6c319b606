"""Meta-tests that keep the hook reference and the test suite honest (datasette's trick): every
hook in tlbench/hookspecs.py has a heading in docs/plugins/hooks.md carrying its docstring, and
at least one test exercises it."""

import inspect
import re
from pathlib import Path

import pytest

from tlbench import hookspecs
from tlbench.plugins import HOOK_NAMES

REPO = Path(__file__).resolve().parent.parent
HOOKS_MD = REPO / "docs" / "plugins" / "hooks.md"


def _sections() -> dict[str, str]:
    """``## heading`` -> the text up to the next ``## `` heading."""
    parts = re.split(r"^## +(\S+)[ \t]*$", HOOKS_MD.read_text(), flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def _words(text: str) -> str:
    return " ".join(text.split())


def test_hook_names_come_from_hookspecs():
    assert HOOK_NAMES and all(callable(getattr(hookspecs, name)) for name in HOOK_NAMES)


@pytest.mark.parametrize("hook", HOOK_NAMES)
def test_every_hook_has_a_heading_in_the_reference(hook):
    assert hook in _sections(), f"docs/plugins/hooks.md has no '## {hook}' heading"


@pytest.mark.parametrize("hook", HOOK_NAMES)
def test_the_reference_carries_the_hook_docstring_verbatim(hook):
    docstring = inspect.cleandoc(getattr(hookspecs, hook).__doc__ or "")
    section = _sections().get(hook, "")
    assert docstring, f"tlbench/hookspecs.py: {hook} has no docstring"
    assert _words(docstring) in _words(section), (
        f"docs/plugins/hooks.md '## {hook}' does not contain the current docstring; paste:\n\n{docstring}"
    )


def test_every_hook_like_heading_is_a_real_hook():
    stale = [
        h for h in _sections() if re.fullmatch(r"(register|on)_\w+", h) and h not in HOOK_NAMES
    ]
    assert stale == [], f"docs/plugins/hooks.md documents hooks that do not exist: {stale}"


@pytest.mark.parametrize("hook", HOOK_NAMES)
def test_every_hook_is_exercised_by_some_test(hook):
    this = Path(__file__).resolve()
    mentioned = [
        path.name
        for path in sorted((REPO / "tests").rglob("test_*.py"))
        if path.resolve() != this and hook in path.read_text()
    ]
    assert mentioned, f"no test in tests/ mentions the hook {hook!r}; write one that exercises it"
