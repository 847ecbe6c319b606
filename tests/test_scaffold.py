"""``tlbench new-plugin``: the generated package is valid, registers working components, and (slow
test) installs with pip, shows up in ``tlbench plugins``, runs a suite and passes its own tests."""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

from tlbench.errors import UserError
from tlbench.scaffold import create_plugin, module_name
from tlbench.suite import load_suite

REPO = Path(__file__).resolve().parent.parent
TOKENS = ("__NAME__", "__MODULE__", "__TLBENCH_MINOR__")


@pytest.fixture
def generated(tmp_path, monkeypatch):
    """A freshly generated ``tlbench-acme`` package, importable for the test's duration."""
    root = create_plugin("acme", tmp_path)
    monkeypatch.syspath_prepend(str(root))
    yield root
    for name in [m for m in sys.modules if m == "tlbench_acme" or m.startswith("tlbench_acme.")]:
        del sys.modules[name]


def test_writes_a_package_with_code_tests_readme_and_suite(tmp_path):
    root = create_plugin("acme-vision", tmp_path)
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert root == tmp_path / "tlbench-acme-vision"
    assert files == [
        "README.md",
        "pyproject.toml",
        "suite.toml",
        "tests/conftest.py",
        "tests/test_plugin.py",
        "tlbench_acme_vision/__init__.py",
        "tlbench_acme_vision/components.py",
    ]
    leftovers = [p for p in files for token in TOKENS if token in (root / p).read_text()]
    assert leftovers == []


def test_pyproject_names_the_distribution_and_declares_the_entry_point(tmp_path):
    project = tomllib.loads((create_plugin("acme", tmp_path) / "pyproject.toml").read_text())[
        "project"
    ]
    assert project["name"] == "tlbench-acme"
    assert project["entry-points"]["tlbench"] == {"acme": "tlbench_acme"}


def test_generated_plugin_registers_a_model_a_dataset_and_a_strategy(generated, make_tlbench_host):
    host = make_tlbench_host(importlib.import_module("tlbench_acme"), builtins=False)
    registered = {kind: host.registry.names(kind) for kind in ("model", "dataset", "strategy")}
    assert registered == {
        "model": ["acme-tiny"],
        "dataset": ["acme-digits"],
        "strategy": ["acme-nearest-centroid"],
    }
    assert {row["name"]: row["hooks"] for row in host.plugin_rows()} == {
        "tlbench_acme": ["register_datasets", "register_models", "register_strategies"]
    }


def test_registering_the_generated_plugin_does_not_import_torch(generated):
    code = (
        "import sys; import tlbench_acme; from tlbench.plugins import load_plugins;"
        "host = load_plugins(builtins=(), load_entrypoints=False, extra=[tlbench_acme]);"
        "assert host.registry.names('model') == ['acme-tiny'], host.errors;"
        "print('torch' in sys.modules)"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(generated), str(REPO)])}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert out.stdout.strip() == "False"


def test_generated_example_suite_is_valid(generated, make_tlbench_host):
    host = make_tlbench_host(importlib.import_module("tlbench_acme"))
    suite = load_suite(generated / "suite.toml", host.registry)
    assert [e.ref for e in suite.models + suite.datasets + suite.strategies] == [
        "acme-tiny",
        "acme-digits",
        "acme-nearest-centroid",
    ]
    assert suite.requires == ("tlbench-acme>=0.1",)


def test_generated_components_run_a_cell_through_the_runner(generated, tlbench_run):
    suite = {
        "models": ["acme-tiny"],
        "datasets": [{"name": "acme-digits", "train_size": 200, "test_size": 200}],
        "strategies": ["acme-nearest-centroid"],
    }
    [record] = tlbench_run(suite, plugins=[importlib.import_module("tlbench_acme")])
    assert record["status"] == "ok"
    assert record["metrics"]["top1"] > 30  # ten classes: chance is 10 %
    assert record["cost"]["trainable_params"] == 0 and record["cost"]["total_params"] > 100_000


@pytest.mark.parametrize(
    "name",
    [
        "",
        "Acme",
        "acme_models",
        "-acme",
        "acme-",
        "acme--x",
        "9lives",
        "tlbench-acme",
        "a" * 41,
        "ac me",
    ],
)
def test_refuses_a_bad_name(tmp_path, name):
    with pytest.raises(UserError, match="plugin name"):
        create_plugin(name, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_refuses_an_existing_target_directory_and_leaves_it_alone(tmp_path):
    (tmp_path / "tlbench-acme").mkdir()
    (tmp_path / "tlbench-acme" / "mine.txt").write_text("keep")
    with pytest.raises(UserError, match="tlbench-acme already exists"):
        create_plugin("acme", tmp_path)
    assert [p.name for p in (tmp_path / "tlbench-acme").iterdir()] == ["mine.txt"]


def test_module_name_maps_hyphens_to_underscores():
    assert module_name("acme-vision-2") == "tlbench_acme_vision_2"


def test_templates_ship_in_the_tlbench_wheel():
    # Without package data, `pip install tlbench` (not editable) would have no templates.
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    patterns = setuptools.get("package-data", {}).get("tlbench", [])
    assert any(p.startswith("templates/") for p in patterns), (
        'pyproject.toml needs [tool.setuptools.package-data] tlbench = ["templates/**/*.tmpl"]'
    )


# ------------------------------------------------------------------------------------------ slow


def _venv_on_top_of_this_one(path: Path) -> Path:
    """A fresh venv that sees this interpreter's packages (torch is not reinstalled).

    ``venv --system-site-packages`` would expose the *base* Python's packages, not this venv's,
    so a .pth runs ``site.addsitedir`` on our site-packages instead (which also honours the
    editable-install hooks found there). Its own site-packages still comes first on sys.path.
    """
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    python = path / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    parent = sysconfig.get_paths()["purelib"]
    Path(purelib, "_tlbench_parent_env.pth").write_text(
        f"import site; site.addsitedir({parent!r})\n"
    )
    return python


@pytest.mark.slow
def test_new_plugin_installs_lists_runs_a_suite_and_passes_its_own_tests(tmp_path):
    python = _venv_on_top_of_this_one(tmp_path / "venv")
    tlbench = tmp_path / "venv" / "bin" / "tlbench"
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("TLBENCH_DISABLE_AUTOLOAD", "TLBENCH_PLUGINS", "PYTHONPATH")
    }
    env.update(TLBENCH_CACHE=str(tmp_path / "cache"), HF_HUB_OFFLINE="1", COLUMNS="200")

    def run(*args, cwd=tmp_path):
        done = subprocess.run(
            [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, (
            f"{' '.join(map(str, args))} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
        )
        return done.stdout

    pip = [python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation"]
    run(*pip, "-e", REPO)  # gives the fresh venv its own `tlbench` command
    run(tlbench, "new-plugin", "demo", "--dir", tmp_path)
    plugin = tmp_path / "tlbench-demo"
    run(*pip, plugin)

    listed = run(tlbench, "plugins")
    demo_row = next(line for line in listed.splitlines() if line.split("\t")[0] == "demo")
    assert (
        "0.1.0" in demo_row and "register_models" in demo_row and "register_strategies" in demo_row
    )
    assert "tlbench-demo==0.1.0" in run(tlbench, "plugins", "--requirements").splitlines()

    run(tlbench, "run", "suite.toml", "--out", tmp_path / "out", cwd=plugin)
    records = [
        json.loads(line) for line in (tmp_path / "out" / "cells.jsonl").read_text().splitlines()
    ]
    assert [(r["model"], r["dataset"], r["strategy"], r["status"]) for r in records] == [
        ("demo-tiny", "demo-digits", "demo-nearest-centroid", "ok")
    ]
    assert records[0]["metrics"]["top1"] > 30

    summary = run(python, "-m", "pytest", "-q", "-p", "no:cacheprovider", cwd=plugin).splitlines()[
        -1
    ]
    assert re.match(r"5 passed in ", summary), summary


DOCS = Path(__file__).resolve().parent.parent / "docs"
TAUGHT = [*sorted((DOCS / "plugins").glob("*.md")), DOCS / "strategies.md", DOCS / "datasets.md"]
IMPORT = re.compile(r"^\s*(?:from (tlbench[\w.]*) import|import (tlbench[\w.]*))", re.M)


def _tlbench_imports(text: str) -> set[str]:
    """tlbench modules imported (a plugin's own ``tlbench_acme`` is not tlbench's)."""
    found = {a or b for a, b in IMPORT.findall(text)}
    return {m for m in found if m == "tlbench" or m.startswith("tlbench.")}


@pytest.mark.parametrize("path", TAUGHT, ids=lambda p: p.name)
def test_the_plugin_docs_teach_only_the_public_api(path):
    code = "\n".join(re.findall(r"```python\n(.*?)```", path.read_text(), re.S))
    assert _tlbench_imports(code) <= {"tlbench.api"}, path


def test_the_scaffold_imports_only_the_public_api(tmp_path):
    root = create_plugin("acme", tmp_path)
    imported = set()
    for path in root.rglob("*.py"):
        imported |= _tlbench_imports(path.read_text())
    assert imported <= {"tlbench.api"}
    assert (
        (root / "tests" / "conftest.py").read_text().count('pytest_plugins = ["tlbench.testing"]')
    )


def test_the_scaffolded_model_is_recognised_as_trained_from_scratch(generated):
    from tlbench_acme.components import tiny_model

    from tlbench.report.records import is_baseline

    source = tiny_model(None, {}, None)
    assert source.card["weights"] == "random" and is_baseline("acme-tiny", source.card)
