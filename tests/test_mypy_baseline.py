"""tools/mypy_baseline.py: the type checker's baseline may only shrink."""

from __future__ import annotations

import importlib.util
from collections import Counter
from pathlib import Path

_SPEC = importlib.util.spec_from_file_location(
    "mypy_baseline", Path(__file__).resolve().parent.parent / "tools" / "mypy_baseline.py"
)
assert _SPEC and _SPEC.loader
baseline = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(baseline)

OUTPUT = """\
tlbench/cli.py:12: error: Incompatible types in assignment  [assignment]
tlbench/cli.py:30:5: error: Missing return statement  [return]
tlbench/cli.py:31: note: See https://mypy.readthedocs.io
tlbench/log.py:3: error: Name "x" is not defined  [name-defined]
"""


def test_errors_are_counted_per_file_and_notes_are_not_errors():
    assert baseline.count_errors(OUTPUT) == Counter({"tlbench/cli.py": 2, "tlbench/log.py": 1})


def test_a_file_with_more_errors_than_its_baseline_fails_and_fewer_passes():
    grew, shrank = baseline.compare(
        {"tlbench/cli.py": 3, "tlbench/runner.py": 1},
        Counter({"tlbench/cli.py": 2, "tlbench/runner.py": 2}),
    )
    assert grew == ["tlbench/runner.py: 2 mypy errors, baseline 1"]
    assert shrank == ["tlbench/cli.py: 2 mypy errors, baseline 3"]


def test_a_new_file_starts_at_zero_errors():
    grew, _ = baseline.compare({}, Counter({"tlbench/new.py": 1}))
    assert grew == ["tlbench/new.py: 1 mypy errors, baseline 0"]
