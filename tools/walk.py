"""The walk of a run request: how far ``tlbench run`` wanders before its cells run (issue 26).

    PYTHONPATH=TREE python tools/walk.py [--show] [SUITE]

Runs ``tlbench run`` in this process on SUITE (default: the tests' tiny suite, one seed, over
the cheap ``test_runner`` plugin, in a temporary directory) under ``sys.setprofile`` and follows
the run request through the code.

Definition (it gives the issue's figures for the code the issue was filed on within a few:
issue 85 stays in 17 modules / 38 climbs; measured at 7156a81: 81 / 15 / 40; CHANGELOG.md
has the later figures):

- The walk starts in ``tlbench.runner.run_suite``, the orchestration of a request. Each
  *distinct* function it calls, itself or through helpers of its own module, is visited once
  (a loop over cells does not lengthen the walk); a call into another tlbench module is a step
  there, and its return a step back. What that callee does inside is not followed: it is the
  callee module's own business, which is the point of giving a concern one owner.
- A *stay* is a maximal run of the walk in one module: 1 + the number of module changes.
  *Modules* counts the distinct modules the walk stays in.
- A *climb back up* is a step from a module into one above it in the import layering that
  ``tests/test_architecture.py`` enforces (module B is above A when B imports A, directly or
  through others), e.g. the return from ``tlbench.planning`` to ``tlbench.runner``, or a
  callback from an executor into the runner.

Frames outside ``tlbench`` (the standard library, pluggy, click) are transparent: a call through
them counts from the nearest tlbench frame.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import tlbench

PACKAGE = Path(tlbench.__file__).resolve().parent
ROOT = PACKAGE.parent
START = ("tlbench.runner", "run_suite")
_modules: dict[str, str | None] = {}


def module_of(code) -> str | None:
    name = _modules.get(code.co_filename, "")
    if name == "":
        path = Path(code.co_filename)
        name = None
        if path.is_relative_to(PACKAGE) and path.suffix == ".py":
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        _modules[code.co_filename] = name
    return name


class Tracer:
    """The call tree of tlbench frames (repeated calls of one function under one node merged)."""

    def __init__(self):
        self.root = {"m": "<top>", "f": "", "c": {}}
        self.stack = [self.root]

    def __call__(self, frame, event, arg):
        if event == "call":
            module = module_of(frame.f_code)
            if module is not None:
                key = (module, frame.f_code.co_qualname)
                node = self.stack[-1]["c"].setdefault(key, {"m": module, "f": key[1], "c": {}})
                self.stack.append(node)
        elif event == "return" and module_of(frame.f_code) is not None and len(self.stack) > 1:
            self.stack.pop()

    def find(self, module: str, function: str, node=None):
        node = node or self.root
        if (node["m"], node["f"]) == (module, function):
            return node
        for child in node["c"].values():
            if found := self.find(module, function, child):
                return found
        return None


def layering() -> dict[str, set[str]]:
    """For each module, every module it imports directly or through others."""
    sys.path.insert(0, str(ROOT / "tests"))
    from test_architecture import import_graph

    graph = import_graph()
    below: dict[str, set[str]] = {}

    def reach(name: str) -> set[str]:
        if name not in below:
            below[name] = set()
            for target in graph.get(name, ()):
                below[name] |= {target} | reach(target)
        return below[name]

    for name in graph:
        reach(name)
    return below


def walk(start: dict) -> list[tuple[str, str]]:
    """``(module, what)`` for each step: the calls of ``start``'s module, each once, and back."""
    steps = [(start["m"], start["f"])]
    seen = set()

    def visit(node):
        for key, child in node["c"].items():
            if key in seen:
                continue
            seen.add(key)
            if child["m"] == start["m"]:
                visit(child)  # a helper of the orchestrating module: the stay goes on
            else:
                steps.append((child["m"], child["f"]))
                steps.append((start["m"], "back"))

    visit(start)
    return steps


def measure(steps: list[tuple[str, str]], below: dict[str, set[str]]) -> dict:
    stays = [s for i, s in enumerate(steps) if i == 0 or steps[i - 1][0] != s[0]]
    climbs = [
        (a[0], b[0]) for a, b in zip(stays, stays[1:], strict=False) if a[0] in below.get(b[0], ())
    ]
    return {
        "stays": len(stays),
        "modules": len({m for m, _ in stays}),
        "climbs": len(climbs),
        "walk": stays,
    }


def _tiny_suite(folder: Path) -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    from helpers import tiny_suite

    return tiny_suite(folder / "tiny.toml", seeds=(0,))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("suite", nargs="?", help="suite file (default: the tests' tiny suite)")
    parser.add_argument("--show", action="store_true", help="print every stay of the walk")
    args = parser.parse_args(argv)
    from tlbench.cli import cli

    with tempfile.TemporaryDirectory(prefix="tlbench-walk-") as tmp:
        folder = Path(tmp)
        suite = args.suite or str(_tiny_suite(folder))
        command = ["run", suite, "--out", str(folder / "run"), "--cache-dir", str(folder / "c")]
        command += ["--device", "cpu", "-q"]
        if not args.suite:
            command = ["--plugin", "test_runner", *command]
        tracer = Tracer()
        sys.setprofile(tracer)
        try:
            cli.main(command, standalone_mode=False)
        finally:
            sys.setprofile(None)
    start = tracer.find(*START)
    if start is None:
        print(f"{'.'.join(START)} was never called", file=sys.stderr)
        return 1
    result = measure(walk(start), layering())
    if args.show:
        for module, what in result["walk"]:
            print(f"  {module}.{what}")
    print(
        f"walk of a run request ({ROOT}): {result['stays']} stays in {result['modules']} "
        f"modules, {result['climbs']} climbs back up"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
