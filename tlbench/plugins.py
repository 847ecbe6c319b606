"""The plugin host: builds a pluggy manager and the registry from built-in, installed and
user-named plugins.

Discovery order: built-ins (``DEFAULT_PLUGINS``), then installed distributions' entry points in
the ``tlbench`` group (unless ``TLBENCH_DISABLE_AUTOLOAD`` is set or ``TLBENCH_PLUGINS`` limits
them), then plugin objects passed as ``extra``, modules named with ``--plugin`` and single files
in ``--plugins-dir``. A plugin that fails to import or to validate is recorded by name in
``PluginHost.errors``; the others keep working. A plugin object found twice (``--plugin X`` while
X is installed) is loaded once. ``TLBENCH_TRACE_HOOKS=1`` traces hook calls to stderr.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import importlib.util
import os
import sys
import traceback
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pluggy

from tlbench import hookspecs
from tlbench.registry import RegistrationError, Registry

ENTRY_POINT_GROUP = "tlbench"
DEFAULT_PLUGINS = (
    "tlbench.builtin.models",
    "tlbench.builtin.datasets",
    "tlbench.builtin.strategies",
    "tlbench.builtin.estimators",
    "tlbench.builtin.layer_strategies",
    "tlbench.builtin.feature_strategies",
)
REGISTRATION_HOOKS = {
    "model": "register_models",
    "dataset": "register_datasets",
    "strategy": "register_strategies",
    "estimator": "register_estimators",
}
HOOK_NAMES = tuple(
    name for name in dir(hookspecs) if getattr(getattr(hookspecs, name), "tlbench_spec", None)
)


class PluginManager(pluggy.PluginManager):
    """pluggy's manager, remembering where each plugin came from.

    ``sources[name]`` is one of ``"builtin"``, ``"entry point"``, ``"object"``, ``"module"``,
    ``"file <path>"``; ``dists[name]`` is the distribution behind an entry-point plugin.
    """

    def __init__(self):
        super().__init__("tlbench")
        self.sources: dict[str, str] = {}
        self.dists: dict[str, importlib.metadata.Distribution] = {}


@dataclass(frozen=True)
class ObserverFailure:
    """An observer hook (``on_cell_finished``) that raised: which plugin, on which record."""

    plugin: str
    hook: str
    config_hash: str
    error: str  # "RuntimeError: boom", one line
    traceback: str


@dataclass
class PluginHost:
    manager: pluggy.PluginManager
    registry: Registry
    errors: list[str] = field(default_factory=list)
    observer_failures: list[ObserverFailure] = field(default_factory=list)

    def hook_callers(self, hook_name: str) -> Iterator[tuple[str, pluggy.HookCaller]]:
        """(plugin name, a caller of that plugin's implementations only) for every plugin
        implementing ``hook_name``, in pluggy's call order. Calling them one by one keeps one
        plugin's exception from hiding the others (pluggy stops a call at the first)."""
        hook = getattr(self.manager.hook, hook_name)
        plugins = list(dict.fromkeys(impl.plugin for impl in reversed(hook.get_hookimpls())))
        for plugin in plugins:
            others = [p for p in plugins if p is not plugin]
            yield self.manager.get_name(plugin), self.manager.subset_hook_caller(hook_name, others)

    def observer_failed(
        self, plugin: str, record: dict, exc: Exception, hook: str = "on_cell_finished"
    ) -> None:
        first = next((line for line in str(exc).splitlines() if line.strip()), "")
        self.observer_failures.append(
            ObserverFailure(
                plugin,
                hook,
                str(record.get("config_hash", "")),
                f"{type(exc).__name__}: {first}" if first else type(exc).__name__,
                "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
            )
        )

    def observer_problems(self) -> list[str]:
        """One line per (plugin, error): what to show at the end of a run."""
        counts: dict[tuple[str, str, str], int] = {}
        for failure in self.observer_failures:
            key = (failure.plugin, failure.hook, failure.error)
            counts[key] = counts.get(key, 0) + 1
        return [
            f"plugin {plugin!r}: observer {hook} failed on {n} record{'s' if n > 1 else ''}: {error}"
            for (plugin, hook, error), n in counts.items()
        ]

    def plugin_version(self, name: str) -> str:
        """The version of the plugin registered as ``name`` ("-" when it has none)."""
        return _plugin_version(self.manager, name, self.manager.get_plugin(name))

    def plugin_commands(self, reserved: Iterable[str] = ()) -> tuple[dict, list[str]]:
        """The subcommands plugins add through ``register_commands``: ({name: click command},
        warnings). A name in ``reserved`` (tlbench's own commands) or already taken by an
        earlier plugin is ignored with a warning naming both; a plugin whose hook raises is
        reported and skipped."""
        import click

        commands: dict = {}
        owners: dict[str, str] = {}
        problems: list[str] = []
        # In registration order, as components are: the first registration keeps a name.
        for plugin, caller in reversed(list(self.hook_callers("register_commands"))):
            group = click.Group()
            try:
                caller(cli=group)
            except Exception as exc:
                problems.append(f"plugin {plugin!r}: register_commands failed: {exc}")
                continue
            for name, command in group.commands.items():
                if name in reserved:
                    problems.append(
                        f"plugin {plugin!r}: command {name!r} is one of tlbench's own; ignored"
                    )
                elif name in commands:
                    problems.append(
                        f"plugin {plugin!r}: command {name!r} is already registered by plugin "
                        f"{owners[name]!r}; the first registration wins"
                    )
                else:
                    commands[name], owners[name] = command, plugin
        return commands, problems

    def plugin_rows(self) -> list[dict]:
        """One row per loaded plugin: name, version, source, hooks implemented."""
        rows = []
        for name, plugin in sorted(self.manager.list_name_plugin(), key=lambda item: item[0]):
            if plugin is None:  # blocked names stay listed by pluggy with no object
                continue
            hooks = sorted(h.name for h in self.manager.get_hookcallers(plugin) or [])
            rows.append(
                {
                    "name": name,
                    "version": _plugin_version(self.manager, name, plugin),
                    "source": getattr(self.manager, "sources", {}).get(name, "-"),
                    "hooks": hooks,
                }
            )
        return rows


def get_plugin_manager(
    extra_modules: Sequence[str] = (),
    plugins_dir: os.PathLike | None = None,
    load_entrypoints: bool | None = None,
    builtins: Iterable[str] = DEFAULT_PLUGINS,
    extra: Sequence[object] = (),
) -> tuple[pluggy.PluginManager, list[str]]:
    """A fresh manager (never a module global, so tests can build their own).

    ``extra`` holds plugin objects (modules, classes, instances) or ``(name, object)`` pairs,
    registered after the entry points; tests and embedding code use it.
    Returns the manager and the list of one-line load errors.
    """
    pm = PluginManager()
    pm.add_hookspecs(hookspecs)
    if os.environ.get("TLBENCH_TRACE_HOOKS"):
        pm.trace.root.setwriter(sys.stderr.write)
        pm.enable_tracing()
    errors: list[str] = []
    for module_name in builtins:
        _register_module(pm, module_name, module_name, errors, source="builtin")
    if load_entrypoints is None:
        load_entrypoints = not os.environ.get("TLBENCH_DISABLE_AUTOLOAD")
    if load_entrypoints:
        _load_entrypoints(pm, errors)
    for item in extra:
        name, plugin = item if isinstance(item, tuple) else (_object_name(item), item)
        _register(pm, plugin, name, errors, source="object")
    for module_name in extra_modules:
        _register_module(pm, module_name, module_name, errors, source="module")
    if plugins_dir is not None:
        _load_plugins_dir(pm, Path(plugins_dir), errors)
    return pm, errors


def _object_name(plugin: object) -> str:
    return getattr(plugin, "__name__", None) or type(plugin).__name__


def _allowed_entrypoints() -> set[str] | None:
    only = os.environ.get("TLBENCH_PLUGINS")
    return None if only is None else {n.strip() for n in only.split(",") if n.strip()}


def _load_entrypoints(pm: pluggy.PluginManager, errors: list[str]) -> None:
    allowed = _allowed_entrypoints()
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if allowed is not None and ep.name not in allowed:
            continue
        if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
            continue
        try:
            plugin = ep.load()
        except Exception as exc:
            errors.append(
                f"plugin {ep.name!r} (entry point {ep.value}) failed to import: {type(exc).__name__}: {exc}"
            )
            continue
        if _register(pm, plugin, ep.name, errors, source="entry point") and ep.dist is not None:
            pm.dists[ep.name] = ep.dist


def _register_module(
    pm: pluggy.PluginManager, module_name: str, plugin_name: str, errors: list[str], source: str
) -> None:
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        errors.append(f"plugin {plugin_name!r} failed to import: {type(exc).__name__}: {exc}")
        return
    _register(pm, module, plugin_name, errors, source=source)


def _load_plugins_dir(pm: pluggy.PluginManager, directory: Path, errors: list[str]) -> None:
    if not directory.is_dir():
        errors.append(f"plugins directory {str(directory)!r} does not exist")
        return
    for path in sorted(directory.glob("*.py")):
        _register_file(pm, path, errors)


def _register_file(pm: pluggy.PluginManager, path: Path, errors: list[str]) -> None:
    # A stable module name lets the plugin's objects be pickled (worker processes re-import it).
    name = f"tlbench_local_{path.stem}"
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        errors.append(f"plugin file {str(path)!r} failed to import: {type(exc).__name__}: {exc}")
        return
    _register(pm, module, path.stem, errors, source=f"file {path}")


def _register(pm, plugin, name: str, errors: list[str], source: str) -> bool:
    """Register and validate one plugin; on failure leave the manager as it was."""
    if pm.is_registered(plugin):  # e.g. --plugin X while X is installed: it is loaded already
        return False
    taken = pm.get_plugin(name)
    if taken is not None:
        where = getattr(pm, "sources", {}).get(name, "another source")
        errors.append(
            f"plugin {name!r} ({source}) was not loaded: a plugin of that name is already loaded ({where})"
        )
        return False
    try:
        pm.register(plugin, name=name)
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        errors.append(f"plugin {name!r} was rejected: {_validation_message(pm, plugin, exc)}")
        if pm.is_registered(plugin):
            pm.unregister(plugin)
        return False
    except ValueError as exc:  # blocked names, or a race with another registration
        first_line = str(exc).splitlines()[0].split("=<")[0]
        errors.append(f"plugin {name!r} ({source}) was not loaded: {first_line}")
        return False
    if hasattr(pm, "sources"):
        pm.sources[name] = source
    return True


def _validation_message(pm, plugin, exc: pluggy.PluginValidationError) -> str:
    unknown = [
        caller.name
        for caller in pm.get_hookcallers(plugin) or []
        if not caller.has_spec()
        and any(not impl.optionalhook for impl in caller.get_hookimpls() if impl.plugin is plugin)
    ]
    if not unknown:
        return "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    hook = unknown[0]
    close = difflib.get_close_matches(hook, HOOK_NAMES, n=1, cutoff=0.6)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"it implements unknown hook {hook!r}.{hint} Known hooks: {', '.join(HOOK_NAMES)}."


def _plugin_version(pm, name: str, plugin) -> str:
    dist = getattr(pm, "dists", {}).get(name)
    if dist is not None:
        return dist.version
    module = getattr(plugin, "__name__", "")
    if module.startswith("tlbench."):
        from tlbench import __version__

        return __version__
    return str(getattr(plugin, "__version__", "-"))


def build_registry(pm: pluggy.PluginManager, errors: list[str]) -> Registry:
    """Call every registration hook, one plugin at a time, so a malformed registration names its
    plugin and cannot stop the others."""
    registry = Registry()
    trace = pm.trace.root.get("hook")
    for kind, hook_name in REGISTRATION_HOOKS.items():
        hook = getattr(pm.hook, hook_name)
        # Oldest first, so built-ins keep their names and a later plugin is the one reported.
        for impl in hook.get_hookimpls():
            plugin_name = pm.get_name(impl.plugin)

            def register(spec, _kind=kind, _plugin=plugin_name):
                registry.add(_kind, spec, _plugin)
                trace(f"  {_plugin} registered {_kind} {getattr(spec, 'name', spec)!r}")

            trace(f"{hook_name} [{plugin_name}]")
            try:
                # pluggy passes an implementation only the arguments it names; so do we.
                impl.function(**{arg: register for arg in impl.argnames})
            except RegistrationError as exc:
                errors.append(str(exc))
            except Exception as exc:
                errors.append(
                    f"plugin {plugin_name!r} failed in {hook_name}: {type(exc).__name__}: {exc}"
                )
    return registry


def load_plugins(
    extra_modules: Sequence[str] = (),
    plugins_dir: os.PathLike | None = None,
    load_entrypoints: bool | None = None,
    builtins: Iterable[str] = DEFAULT_PLUGINS,
    extra: Sequence[object] = (),
) -> PluginHost:
    pm, errors = get_plugin_manager(extra_modules, plugins_dir, load_entrypoints, builtins, extra)
    registry = build_registry(pm, errors)
    return PluginHost(pm, registry, errors)


@dataclass(frozen=True)
class PluginConfig:
    """How to rebuild the same plugin host in another process (a worker of a parallel executor):
    the ``--plugin`` modules and the ``--plugins-dir`` given on the command line."""

    modules: tuple[str, ...] = ()
    plugins_dir: str | None = None

    def load(self) -> PluginHost:
        return load_plugins(self.modules, self.plugins_dir)


def requirements_lines(host: PluginHost) -> list[str]:
    """Pinned requirements that reproduce this plugin setup (``tlbench plugins --requirements``).

    ``tlbench==X`` and ``name==version`` for every installed distribution providing a
    ``tlbench`` entry point, then a comment for each loaded plugin no installer can reproduce
    (a ``--plugin`` module or a ``--plugins-dir`` file).
    """
    pins = {"tlbench": _installed_version("tlbench")}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.dist is not None:
            pins.setdefault(ep.dist.metadata["Name"], ep.dist.version)
    lines = [f"{name}=={version}" for name, version in sorted(pins.items())]
    sources = getattr(host.manager, "sources", {})
    for name in sorted(sources):
        if sources[name] not in ("builtin", "entry point"):
            lines.append(f"# plugin {name!r} ({sources[name]}) is not an installed distribution")
    return lines


def _installed_version(dist_name: str) -> str:
    try:
        return importlib.metadata.version(dist_name)
    except importlib.metadata.PackageNotFoundError:
        from tlbench import __version__

        return __version__


def check_requirements(requires: Sequence[str]) -> list[str]:
    """One message per requirement the environment does not meet (missing or wrong version).

    ``requires`` holds PEP 508 strings such as ``"tlbench-peft>=0.1"``; requirements whose
    environment marker does not apply are skipped. An empty list means all are met.
    """
    from packaging.requirements import InvalidRequirement, Requirement

    problems = []
    for text in requires:
        try:
            req = Requirement(text)
        except InvalidRequirement as exc:
            problems.append(f"invalid requirement {text!r}: {str(exc).splitlines()[0]}")
            continue
        if req.marker is not None and not req.marker.evaluate():
            continue
        try:
            version = importlib.metadata.version(req.name)
        except importlib.metadata.PackageNotFoundError:
            problems.append(f"requires {text!r}, which is not installed (pip install '{text}')")
            continue
        if req.specifier and not req.specifier.contains(version, prereleases=True):
            problems.append(
                f"requires {text!r}, but {req.name} {version} is installed (pip install '{text}')"
            )
    return problems
