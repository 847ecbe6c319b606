"""Meta-tests that keep the hook reference and the test suite honest (datasette's trick): every
hook in tlbench/hookspecs.py has a heading in docs/plugins/hooks.md carrying its docstring, and
a real run calls it: a spy plugin implementing every hook rides along a tiny suite."""

import inspect
import re
from collections import defaultdict
from pathlib import Path

import pytest
import test_runner  # the cheap real plugin of the runner tests: digits, a projection, ridge

from tlbench import hookimpl, hookspecs
from tlbench.plugins import HOOK_NAMES
from tlbench.testing import run_tiny_suite

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


class Spy:
    """Implements every hook and records what each call received."""

    def __init__(self):
        self.calls = defaultdict(list)

    @hookimpl
    def register_models(self, register):
        self.calls["register_models"].append(register)

    @hookimpl
    def register_datasets(self, register):
        self.calls["register_datasets"].append(register)

    @hookimpl
    def register_strategies(self, register):
        self.calls["register_strategies"].append(register)

    @hookimpl
    def register_estimators(self, register):
        self.calls["register_estimators"].append(register)

    @hookimpl
    def register_commands(self, cli):
        self.calls["register_commands"].append(cli)

    @hookimpl
    def on_cell_finished(self, record):
        self.calls["on_cell_finished"].append(record)

    @hookimpl
    def on_run_started(self, run_dir, suite):
        self.calls["on_run_started"].append((run_dir, suite))

    @hookimpl
    def on_run_finished(self, run_dir, records, interrupted):
        self.calls["on_run_finished"].append((run_dir, records, interrupted))


TINY_SUITE = {
    "name": "every-hook",
    "seeds": [0, 1],
    "models": ["tiny-proj"],
    "datasets": [{"name": "tiny-digits", "train_size": 400}],
    "strategies": ["ridge"],
}


@pytest.fixture(scope="module")
def spied_run(tmp_path_factory):
    spy = Spy()
    records = run_tiny_suite(tmp_path_factory.mktemp("hooks"), TINY_SUITE, [test_runner, spy])
    return spy, records


@pytest.mark.parametrize("hook", HOOK_NAMES)
def test_the_spy_implements_every_hook(hook):
    assert getattr(getattr(Spy, hook, None), "tlbench_impl", None) is not None, (
        f"add {hook!r} to Spy in tests/test_docs_hooks.py, so a real run proves tlbench calls it"
    )


# Hooks a run does not call; each has its own test (tests/test_plugins.py for the commands).
NOT_IN_A_RUN = ("register_commands",)


@pytest.mark.parametrize("hook", [h for h in HOOK_NAMES if h not in NOT_IN_A_RUN])
def test_every_hook_is_called_in_a_real_run(spied_run, hook):
    spy, _ = spied_run
    assert spy.calls[hook], f"a real run of a tiny suite never called the hook {hook!r}"


def test_registration_hooks_are_called_once_with_a_register_callback(spied_run):
    spy, _ = spied_run
    for hook in HOOK_NAMES:
        if hook.startswith("register_") and hook not in NOT_IN_A_RUN:
            assert len(spy.calls[hook]) == 1 and callable(spy.calls[hook][0]), hook


def test_register_commands_is_called_with_a_click_group():
    import click

    from tlbench.testing import make_host

    spy = Spy()
    make_host(spy).plugin_commands()
    ((group,),) = [spy.calls["register_commands"]]
    assert isinstance(group, click.Group)


def test_on_cell_finished_sees_every_record_once_in_order(spied_run):
    spy, records = spied_run
    assert len(records) == 2
    seen = [(r["config_hash"], r["status"]) for r in spy.calls["on_cell_finished"]]
    assert seen == [(r["config_hash"], r["status"]) for r in records]


def test_run_hooks_frame_the_cells_once_with_the_run_directory(spied_run):
    spy, records = spied_run
    ((started_dir, suite),) = spy.calls["on_run_started"]
    ((finished_dir, final, interrupted),) = spy.calls["on_run_finished"]
    assert suite == "every-hook" and started_dir == finished_dir
    assert (started_dir / "env.json").is_file() and not interrupted
    assert [r["config_hash"] for r in final] == [r["config_hash"] for r in records]
