"""The shape of the code base, kept true: no import cycles, the core never imports a built-in
plugin, and plugins build on the public API only."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "tlbench"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imported(path: Path, name: str) -> Iterator[str]:
    """Every tlbench module ``path`` imports, at top level, inside functions or for types only."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            yield base
            # `from tlbench import weights` imports the module tlbench.weights
            yield from (f"{base}.{alias.name}" for alias in node.names)


def import_graph() -> dict[str, set[str]]:
    graph = {}
    for name, path in MODULES.items():
        targets = set()
        for target in _imported(path, name):
            if target not in MODULES or target == name:
                continue
            targets.add(target)
            # Importing a.b.c runs a/__init__ and a/b/__init__, unless we are inside them.
            parts = target.split(".")
            for i in range(1, len(parts)):
                parent = ".".join(parts[:i])
                if parent in MODULES and not name.startswith(parent + ".") and parent != name:
                    targets.add(parent)
        graph[name] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_tlbench_module_imports_in_a_circle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_core_never_imports_a_builtin_plugin():
    offenders = [
        f"{name} imports {target}"
        for name, targets in import_graph().items()
        if not name.startswith("tlbench.builtin")
        for target in targets
        if target.startswith("tlbench.builtin")
    ]
    assert offenders == []


def test_the_worker_side_and_the_orchestration_are_separate_modules():
    graph = import_graph()
    assert "tlbench.runner" not in graph["tlbench.executors"]
    assert "tlbench.runner" not in graph["tlbench.cell"]
    assert "tlbench.executors" not in graph["tlbench.cell"]


def _plugin_imports(folder: Path) -> set[str]:
    found = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tlbench"):
                found.add(node.module)
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("tlbench")}
    return found


def test_the_peft_plugin_imports_only_the_public_api():
    imports = _plugin_imports(ROOT / "plugins" / "tlbench-peft" / "tlbench_peft")
    assert imports == {"tlbench.api"}


def test_the_builtin_strategies_build_on_the_public_authoring_api():
    imports = _plugin_imports(PACKAGE / "builtin")
    assert "tlbench.api" in imports
    assert "tlbench.strategies" not in imports  # through tlbench.api, like any plugin


def test_the_public_api_names_what_it_exports_and_imports_no_torch():
    import subprocess
    import sys

    code = "import sys, tlbench.api as a; assert set(a.__all__) <= set(dir(a)); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
