"""tlbench as a user gets it: built into an sdist, then a wheel, installed into a fresh virtual
environment and run from a directory that is not a checkout. Offline: the build uses this
environment's setuptools and the fresh environment borrows the dependencies installed here."""

from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import tlbench
from tlbench.errors import UserError
from tlbench.suite import find_suite

REPO = Path(__file__).resolve().parent.parent
PACKAGED_SUITES = REPO / "tlbench" / "suites"
# What an sdist is built from; anything else in the checkout must not be needed.
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "tlbench")
# The editable installs of tlbench and tlbench-peft in this environment, hidden from the fresh one.
EDITABLE_TRACES = ("tlbench", "__editable__")
BUILD = "import sys; from setuptools import build_meta; print(getattr(build_meta, sys.argv[1])(sys.argv[2]))"


def _imported_modules(package: Path) -> set[str]:
    """Top-level names of every absolute import in ``package``, inside functions too."""
    names = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.partition(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.partition(".")[0])
    return names


@pytest.mark.parametrize(
    "package, project",
    [
        ("tlbench", "pyproject.toml"),
        ("plugins/tlbench-peft/tlbench_peft", "plugins/tlbench-peft/pyproject.toml"),
    ],
)
def test_every_imported_distribution_is_declared(package, project):
    metadata = tomllib.loads((REPO / project).read_text())["project"]
    requirements = [
        *metadata["dependencies"],
        *(r for extra in metadata.get("optional-dependencies", {}).values() for r in extra),
    ]
    declared = {canonicalize_name(Requirement(r).name) for r in requirements}
    ours = {"tlbench", "tlbench_peft", "__future__"}
    third_party = _imported_modules(REPO / package) - set(sys.stdlib_module_names) - ours
    providers = importlib.metadata.packages_distributions()
    undeclared = sorted(
        f"{module} ({', '.join(providers.get(module, ['not installed']))})"
        for module in third_party
        if not declared & {canonicalize_name(d) for d in providers.get(module, [])}
    )
    assert undeclared == [], f"{project} does not declare what {package} imports: {undeclared}"


def _build(hook: str, source: Path, out: Path) -> Path:
    """Run a PEP 517 hook (``build_sdist``/``build_wheel``) of setuptools on ``source``."""
    done = subprocess.run(
        [sys.executable, "-c", BUILD, hook, str(out)],
        cwd=source,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, f"{hook} of {source} failed:\n{done.stderr[-3000:]}"
    warnings = sorted(set(re.findall(r"\w+Warning\b.*", done.stderr)))
    assert warnings == [], f"{hook} of {source} warned:\n" + "\n".join(warnings)
    return out / done.stdout.strip().splitlines()[-1]


def _copy(source: Path, target: Path) -> Path:
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "dist")
    if source.is_dir():
        shutil.copytree(source, target, ignore=ignore)
    else:
        shutil.copy2(source, target)
    return target


def _borrow_dependencies(venv_python: Path, deps: Path) -> None:
    """Make this environment's packages, but not its editable tlbench, importable in the venv."""
    deps.mkdir()
    paths = sysconfig.get_paths()
    for site_packages in dict.fromkeys([paths["purelib"], paths["platlib"]]):
        for entry in Path(site_packages).iterdir():
            borrowed = deps / entry.name
            if (
                entry.name.startswith(EDITABLE_TRACES)
                or entry.suffix == ".pth"
                or borrowed.exists()
            ):
                continue
            borrowed.symlink_to(entry)
    purelib = subprocess.run(
        [venv_python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(purelib, "borrowed-dependencies.pth").write_text(f"{deps}\n")


@pytest.fixture(scope="module")
def fresh_install(tmp_path_factory) -> Path:
    """A fresh venv holding the tlbench wheel built from its sdist, and the tlbench-peft wheel."""
    root = tmp_path_factory.mktemp("packaging")
    source, dist = root / "source", root / "dist"
    source.mkdir()
    for name in SOURCES:
        _copy(REPO / name, source / name)
    sdist = _build("build_sdist", source, dist)
    with tarfile.open(sdist) as archive:
        # The "data" filter (Python >= 3.11.4) refuses links and paths outside the target.
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        archive.extractall(root / "unpacked", **safe)
    tlbench_wheel = _build("build_wheel", root / "unpacked" / sdist.name[: -len(".tar.gz")], dist)
    plugin = _copy(REPO / "plugins" / "tlbench-peft", root / "tlbench-peft")
    plugin_wheel = _build("build_wheel", plugin, dist)

    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    _borrow_dependencies(venv / "bin" / "python", root / "deps")
    install = [sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install"]
    subprocess.run(
        [*install, "--quiet", "--no-deps", "--no-index", tlbench_wheel, plugin_wheel],
        check=True,
        capture_output=True,
    )
    return venv


@pytest.fixture
def run_installed(fresh_install, tmp_path):
    """Run a command of the fresh venv from an empty directory outside the checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PATH=f"{fresh_install / 'bin'}{os.pathsep}{env['PATH']}", COLUMNS="200")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    def run(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(argv, cwd=elsewhere, env=env, capture_output=True, text=True)

    return run


def test_installed_wheel_is_this_version_with_its_license(fresh_install, run_installed):
    version = run_installed("tlbench", "--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"tlbench, version {tlbench.__version__}"

    where = run_installed(
        "python",
        "-c",
        "import importlib.metadata as m, tlbench, tlbench_peft; "
        "print(tlbench.__file__); print(tlbench_peft.__file__); "
        "print(m.version('tlbench')); print(m.metadata('tlbench')['License-Expression'])",
    )
    assert where.returncode == 0, where.stderr
    tlbench_file, plugin_file, installed_version, license_ = where.stdout.split()
    assert Path(tlbench_file).is_relative_to(fresh_install), "tlbench came from the checkout"
    assert Path(plugin_file).is_relative_to(fresh_install), "tlbench_peft came from the checkout"
    assert installed_version == tlbench.__version__
    assert license_ == "Apache-2.0"


def test_every_data_file_of_the_package_is_installed(fresh_install):
    site_packages = next((fresh_install / "lib").glob("python3*/site-packages"))
    data = [
        path.relative_to(REPO)
        for path in (REPO / "tlbench").rglob("*")
        if path.is_file() and path.suffix not in (".py", ".pyc")
    ]
    assert data, "tlbench has no data files at all?"
    missing = sorted(str(path) for path in data if not (site_packages / path).is_file())
    assert missing == [], (
        f"not in the wheel (add them to package-data in pyproject.toml): {missing}"
    )


def test_the_wheel_says_it_is_typed_and_where_the_project_lives(fresh_install):
    site_packages = next((fresh_install / "lib").glob("python3*/site-packages"))
    assert (site_packages / "tlbench" / "py.typed").is_file()
    metadata = next(site_packages.glob("tlbench-*.dist-info")) / "METADATA"
    text = metadata.read_text()
    assert "Classifier: Typing :: Typed" in text
    assert "Classifier: Programming Language :: Python :: 3.11" in text
    assert "Project-URL: Changelog, " in text and (REPO / "CHANGELOG.md").is_file()


def test_python_dash_m_tlbench_is_the_tlbench_command(run_installed):
    result = run_installed("python", "-m", "tlbench", "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: tlbench ")
    assert re.search(r"^\s+run\s", result.stdout, re.M)


def test_installed_tlbench_plans_the_quickstart_outside_a_checkout(fresh_install, run_installed):
    result = run_installed("tlbench", "run", "quickstart", "--dry-run")
    assert result.returncode == 0, result.stderr
    suite = re.search(r"suite quickstart \((.+?)\): (\d+) cells", result.stdout)
    assert suite, result.stdout
    assert Path(suite.group(1)).is_relative_to(fresh_install), "the suite is not the packaged one"
    # (2 sources x 2 datasets x 3 strategies + 2 baselines x 2 datasets) x 3 seeds
    assert int(suite.group(2)) == 48
    six = run_installed("tlbench", "run", "strategies", "--dry-run")
    assert six.returncode == 0, six.stderr
    assert "lora" in six.stdout, "tlbench-peft's strategy was not planned"


def test_repository_suites_folder_is_the_packaged_one():
    assert (REPO / "suites").resolve() == PACKAGED_SUITES
    assert (PACKAGED_SUITES / "quickstart.toml").is_file()


def test_a_suite_name_finds_the_packaged_suite_outside_a_checkout(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    expected = PACKAGED_SUITES / "quickstart.toml"
    for spelling in ("quickstart", "suites/quickstart", "suites/quickstart.toml"):
        assert find_suite(spelling) == expected, spelling


def test_a_local_suites_folder_shadows_the_packaged_suites(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "suites").mkdir()
    (tmp_path / "suites" / "quickstart.toml").write_text('name = "mine"\n')
    assert find_suite("quickstart").resolve() == tmp_path / "suites" / "quickstart.toml"


def test_a_missing_suite_names_every_place_looked_and_the_closest_suite(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as info:
        find_suite("quikstart")
    message = str(info.value)
    assert "\n" not in message
    assert "suites/quikstart.toml" in message
    assert str(PACKAGED_SUITES / "quikstart.toml") in message
    assert "Did you mean 'quickstart'?" in message
