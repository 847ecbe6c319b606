"""The ``tlbench`` command. Each command delegates to a module; ``--help``, ``list``, ``show``
and ``plugins`` never import torch (the heavy modules load inside the commands that need them).

When stdout is not a terminal, ``list``, ``show``, ``plugins`` and ``cache info`` print plain
lines (one item per line, fields tab-separated) instead of boxed tables; ``--json`` prints JSON
(docs/cli.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
from pathlib import Path

import click

from tlbench import __version__
from tlbench.errors import TlbenchError, UserError
from tlbench.executors import executor_names

PLURALS = ("models", "datasets", "strategies", "estimators")  # the order `tlbench list` shows
EXIT_CODES = """Exit codes:

\b
  0    success (diverged cells are results, not errors)
  1    some cell failed (its record says why; the others ran); compare
       --fail-on-regression: a cell regressed
  2    a usage or input error: one line, nothing run
  3    the machine refused a read or write (disk full, read-only)
  130  interrupted by Ctrl-C (resume with --resume RUN_DIR)
  143  terminated by SIGTERM (resume with --resume RUN_DIR)

See docs/running.md (Exit codes) and docs/cli.md."""
DEVICE_FORMS = "auto, cpu, cuda, cuda:N or mps"  # as tlbench.engine.runtime.DEVICE_FORMS
LAZY_COMMANDS = {
    "report": "tlbench.report.commands:report_command",
    "compare": "tlbench.report.commands:compare_command",
    "publish": "tlbench.publish.command:publish_command",
}


def _stderr():
    from rich.console import Console

    return Console(stderr=True)


class TlbenchGroup(click.Group):
    """Turns tlbench's own errors into one line and an exit code, and loads heavy commands lazily."""

    def list_commands(self, ctx):
        own = set(super().list_commands(ctx)) | set(LAZY_COMMANDS)
        return sorted(own | set(self._plugin_commands(ctx)))

    def get_command(self, ctx, name):
        if name in LAZY_COMMANDS:
            import importlib

            module, _, attr = LAZY_COMMANDS[name].partition(":")
            return getattr(importlib.import_module(module), attr)
        command = super().get_command(ctx, name)
        if command is None:  # perhaps a plugin's (register_commands)
            command = self._plugin_commands(ctx).get(name)
        return command

    def _plugin_commands(self, ctx) -> dict:
        """Commands plugins add, loaded once per invocation, with the --plugin and
        --plugins-dir given before the command name."""
        root = ctx.find_root()
        if "tlbench.plugin_commands" not in root.meta:
            from tlbench.plugins import PluginConfig

            dirs = root.params.get("plugins_dir")
            config = PluginConfig(
                modules=tuple(root.params.get("plugin_modules") or ()),
                plugins_dir=str(dirs) if dirs else None,
            )
            reserved = set(super().list_commands(ctx)) | set(LAZY_COMMANDS)
            commands, problems = config.load().plugin_commands(reserved)
            for problem in problems:
                click.echo(f"warning: {problem}", err=True)
            root.meta["tlbench.plugin_commands"] = commands
        return root.meta["tlbench.plugin_commands"]

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except TlbenchError as exc:
            for line in str(exc).splitlines() or [type(exc).__name__]:
                click.echo(f"error: {line}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:  # not click's "Aborted!" and exit 1: the documented 130
            click.echo("interrupted", err=True)
            ctx.exit(130)


@click.group(
    cls=TlbenchGroup, context_settings={"help_option_names": ["-h", "--help"]}, epilog=EXIT_CODES
)
@click.version_option(__version__, prog_name="tlbench")
@click.option(
    "--plugin",
    "plugin_modules",
    multiple=True,
    metavar="MODULE",
    help="Load an extra plugin module (repeatable).",
)
@click.option(
    "--plugins-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Load every single-file plugin (*.py) in this directory.",
)
@click.pass_context
def cli(ctx, plugin_modules, plugins_dir):
    """tlbench: which pretrained source model, adapted with which strategy, transfers best to your data, and at what cost."""
    from tlbench import log
    from tlbench.plugins import PluginConfig

    log.configure()  # the library logs to the "tlbench" logger; the CLI shows it as lines on stderr
    ctx.obj = PluginConfig(
        modules=tuple(plugin_modules), plugins_dir=str(plugins_dir) if plugins_dir else None
    )


def _host(ctx, quiet: bool = False):
    host = ctx.obj.load()
    if not quiet:
        for error in host.errors:
            click.echo(f"warning: {error}", err=True)
    return host


def _plain_output() -> bool:
    """Plain lines rather than tables: stdout is a pipe or a file, read by a script."""
    return not sys.stdout.isatty()


def _echo_json(data) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def _line(*fields) -> str:
    from tlbench.describe import one_field

    return "\t".join(one_field(f) for f in fields)


@cli.command()
@click.argument("suite")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Run directory (default: results/<suite>/<run-id>). An existing one is resumed.",
)
@click.option(
    "--resume", metavar="RUN_DIR|latest", help="Resume a run: skip cells already recorded."
)
@click.option(
    "--retry-failed",
    is_flag=True,
    help="When resuming, rerun cells recorded as failed or diverged.",
)
@click.option(
    "--refresh",
    is_flag=True,
    help="Recompute the cached features of the suite's models (after changing model code).",
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N.")
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Feature/weights cache (default: $TLBENCH_CACHE or ~/.cache/tlbench).",
)
@click.option("--model", "models", multiple=True, help="Run only these model ids (repeatable).")
@click.option(
    "--dataset", "datasets", multiple=True, help="Run only these dataset ids (repeatable)."
)
@click.option(
    "--strategy", "strategies", multiple=True, help="Run only these strategy ids (repeatable)."
)
@click.option("--seed", "seeds", multiple=True, type=int, help="Run only these seeds (repeatable).")
@click.option(
    "--executor",
    default="local",
    show_default=True,
    type=click.Choice(executor_names()),
    help="Where cells run: this process, N worker processes, a Ray cluster, or Slurm jobs.",
)
@click.option(
    "--workers",
    type=int,
    help="Parallel cells (process: default one per GPU, else one per core; ray: what the cluster fits).",
)
@click.option(
    "--executor-opt",
    "executor_opts",
    multiple=True,
    metavar="KEY=VALUE",
    help="An option of the chosen executor (repeatable), e.g. gpus_per_cell=1 (ray), "
    "partition=gpu or time=120 (slurm); see docs/running.md.",
)
# Aliases of --executor-opt, kept working (docs/running.md lists them); hidden from --help so
# that run does not grow a flag per backend. Values stay text: the executor parses them.
@click.option("--ray-address", hidden=True)
@click.option("--cpus-per-cell", hidden=True)
@click.option("--gpus-per-cell", hidden=True)
@click.option("--slurm-partition", hidden=True)
@click.option("--slurm-time", hidden=True)
@click.option("--slurm-cpus-per-task", hidden=True)
@click.option("--slurm-gpus-per-task", hidden=True)
@click.option("--slurm-mem", hidden=True)
@click.option("--slurm-array-parallelism", hidden=True)
@click.option("--slurm", "slurm_extra", multiple=True, hidden=True)
@click.option("--slurm-local", is_flag=True, hidden=True)
@click.option(
    "--deterministic",
    is_flag=True,
    help="Deterministic GPU kernels (torch.use_deterministic_algorithms, cudnn.benchmark off); slower.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print the plan (cells, what is recorded, shared work) and run nothing.",
)
@click.option(
    "--quiet", "-q", is_flag=True, help="No progress or table; just the exit code (and --json)."
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the run's records (or, with --dry-run, the plan) as JSON on stdout.",
)
@click.option(
    "--track",
    multiple=True,
    type=click.Choice(["mlflow", "wandb", "tensorboard"]),
    help="Send each cell to this experiment tracker (repeatable; the tlbench-trackers plugin, docs/tracking.md).",
)
@click.pass_context
def run(
    ctx,
    suite,
    out_dir,
    resume,
    retry_failed,
    refresh,
    device,
    cache_dir,
    models,
    datasets,
    strategies,
    seeds,
    executor,
    workers,
    executor_opts,
    ray_address,
    cpus_per_cell,
    gpus_per_cell,
    slurm_partition,
    slurm_time,
    slurm_cpus_per_task,
    slurm_gpus_per_task,
    slurm_mem,
    slurm_array_parallelism,
    slurm_extra,
    slurm_local,
    deterministic,
    dry_run,
    quiet,
    as_json,
    track,
):
    """Run every cell of SUITE (a path, or a name under suites/).

    Ctrl-C or SIGTERM finishes the cells in flight and exits with code 130 (SIGTERM: 143); a
    second one stops at once. A full or read-only disk stops the run with exit code 3.
    Resume later with --resume RUN_DIR (or --resume latest). A cell whose plugin code fails is
    recorded as failed and the others run (exit code 1). With --json, stdout holds only JSON."""
    from tlbench.suite import find_suite

    _check_device_form(device)
    _choose_trackers(track)
    find_suite(suite)  # a missing suite is named before plugins, numpy, torch or the engine load

    from rich.console import Console

    from tlbench.planning import RunRequest, Selection
    from tlbench.progress import RunProgress
    from tlbench.runner import plan_run, run_suite

    executor_config = _executor_config(
        executor,
        workers,
        executor_opts,
        ray={
            "address": ray_address,
            "cpus_per_cell": cpus_per_cell,
            "gpus_per_cell": gpus_per_cell,
        },
        slurm={
            "partition": slurm_partition,
            "time": slurm_time,
            "cpus_per_task": slurm_cpus_per_task,
            "gpus_per_task": slurm_gpus_per_task,
            "mem": slurm_mem,
            "array_parallelism": slurm_array_parallelism,
            "local": "true" if slurm_local else None,
        },
        slurm_extra=slurm_extra,
    )
    executor_config.check(device)  # before anything loads: a bad option costs nothing
    if deterministic:  # read by every process of the run, workers and jobs included
        os.environ["TLBENCH_DETERMINISTIC"] = "1"
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if dry_run and device != "auto":  # a real run resolves it once the suite is validated
        from tlbench.engine.runtime import resolve_device

        resolve_device(device)
    host = _host(ctx, quiet)
    request = RunRequest(
        suite=suite,
        out_dir=out_dir,
        resume=resume,
        retry_failed=retry_failed,
        refresh=refresh,
        device=device,
        cache_dir=cache_dir,
        selection=Selection(tuple(models), tuple(datasets), tuple(strategies), tuple(seeds)),
        plugins=ctx.obj,
        argv=sys.argv,
        executor=executor_config,
    )
    if dry_run:
        _print_plan(plan_run(request, host), as_json)
        return
    if quiet:
        from tlbench import log

        log.configure(quiet=True)
    console = Console(stderr=True)
    progress = None if quiet else RunProgress(console)
    # tlbench itself logs to stderr; a plugin's own print() in this process is kept off a
    # --json stdout too.
    outcome = None
    try:
        with contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext():
            outcome = run_suite(request, host, progress)
            if outcome.interrupted:  # a further signal must not cut the summary short
                _ignore_signals()
            if not quiet and (outcome.records or not outcome.interrupted):
                _print_table(
                    outcome.run_dir,
                    console if as_json else Console(),
                    plain=not as_json and _plain_output(),
                )
                console.print(
                    f"results: {outcome.run_dir}  ({outcome.ran} cells run, {outcome.skipped} already recorded)"
                )
                for problem in host.observer_problems():
                    click.echo(f"warning: {problem}", err=True)
            for estimate in outcome.failed_estimates:  # exit code 1, like a failed cell
                message = (estimate.get("error") or {}).get("message", "failed")
                click.echo(f"estimate failed: {message}", err=True)
    except KeyboardInterrupt:  # Ctrl-C after the run loop ended, while the table is printed
        if outcome is None:
            raise
        outcome.interrupted, outcome.signal = True, outcome.signal or "SIGINT"
    if as_json:
        click.echo(json.dumps(outcome.records, indent=2, default=str))
    if outcome.interrupted:
        click.echo(
            f"interrupted: resume with: tlbench run {suite} --resume {outcome.run_dir}", err=True
        )
        # Every record is already fsync'ed. Leave now with the documented code (130, or 143 for
        # SIGTERM): after a second signal the interpreter's own exit path would otherwise end the
        # process by that signal (-2).
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(outcome.exit_code)
    ctx.exit(outcome.exit_code)


def _ignore_signals() -> None:
    import signal

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)


def _check_device_form(device: str) -> None:
    """The spelling of ``--device``, checked without torch; whether this machine has that
    device is ``resolve_device``'s question, asked once the suite is known to be valid."""
    if not re.fullmatch(r"auto|(cpu|cuda|mps)(:\d+)?", device):
        raise UserError(f"--device {device!r}: expected one of {DEVICE_FORMS}")


def _choose_trackers(track: tuple[str, ...]) -> None:
    """--track, checked before anything heavy loads; the tlbench-trackers plugin reads the
    choice from TLBENCH_TRACK (which a user may also set instead)."""
    if not track:
        return
    import importlib.util

    if importlib.util.find_spec("tlbench_trackers") is None:
        raise UserError(
            "--track needs the tlbench-trackers plugin: pip install -e plugins/tlbench-trackers"
        )
    for name in dict.fromkeys(track):
        if importlib.util.find_spec(name) is None:
            raise UserError(
                f"--track {name}: the {name} library is not installed: pip install 'tlbench-trackers[{name}]'"
            )
    os.environ["TLBENCH_TRACK"] = ",".join(dict.fromkeys(track))


def _print_plan(plan, as_json: bool) -> None:
    from rich.console import Console

    from tlbench.planning import render_plan

    if as_json:
        click.echo(json.dumps(plan.to_json(), indent=2, default=str))
    else:
        render_plan(plan, Console())


def _print_table(run_dir: Path, console, plain: bool = False) -> None:
    """The run's summary: a table for a terminal; ``plain`` (stdout is a pipe or a file) the
    report's CSV lines, as ``tlbench report`` prints them there."""
    from tlbench.report import load_records, render_terminal

    records = load_records([run_dir])
    if plain:
        from tlbench.report.document import render_report

        click.echo(render_report(records, "csv"), nl=False)
        # The csv counts failures; their messages, whole, go where errors go.
        failed = records[~records["status"].isin(["ok", "skipped"])]
        for _, row in failed.iterrows():
            message = row.get("error.message") or row["status"]
            click.echo(
                f"{row['status']}: {row['model']} x {row['dataset']} x {row['strategy']} "
                f"(seed {row['seed']}): {message}",
                err=True,
            )
        return
    render_terminal(records, console)


@cli.command("list")
@click.argument("kind", required=False, metavar="[KIND]")
@click.argument("name", required=False)
@click.option(
    "--all-timm",
    "timm_pattern",
    metavar="PATTERN",
    help="List timm architectures matching PATTERN (e.g. 'resnet*'); --pretrained for tags.",
)
@click.option(
    "--pretrained",
    is_flag=True,
    help="With --all-timm: list pretrained tags (arch.tag) usable as timm:<arch>.<tag>.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the components as JSON.")
@click.pass_context
def list_components(ctx, kind, name, timm_pattern, pretrained, as_json):
    """List registered components, the plugin each came from, and whether it runs offline now.

    KIND is models, datasets, strategies or estimators; with a NAME too, show that component
    (as `tlbench show NAME`). Options marked (sweep) take a list of candidates. When stdout is
    not a terminal, each component is one line of tab-separated fields: name, kind, plugin,
    offline, options, description."""
    if timm_pattern:
        import timm

        names = timm.list_pretrained(timm_pattern) if pretrained else timm.list_models(timm_pattern)
        if as_json:
            _echo_json(list(names))
            return
        for timm_name in names:
            click.echo(timm_name)
        return
    host = _host(ctx)
    plural = _plural_kind(kind) if kind else None
    if kind and plural is None:  # `tlbench list linear-probe`: a component's name
        if name:
            raise click.UsageError(f"unknown kind {kind!r}; expected one of {', '.join(PLURALS)}")
        _show(host, kind, None, as_json)
        return
    if name:
        _show(host, name, _singular(plural), as_json)
        return
    infos = [info for p in ([plural] if plural else PLURALS) for info in _infos(host, p)]
    if as_json:
        _echo_json(infos)
    elif _plain_output():
        from tlbench.describe import list_line

        for info in infos:
            click.echo(list_line(info))
    else:
        _list_tables(infos, [plural] if plural else list(PLURALS))


def _plural_kind(word: str) -> str | None:
    """``models`` or ``model`` -> ``models``; anything else -> None."""
    from tlbench.specs import KINDS

    return word if word in PLURALS else KINDS.get(word)


def _singular(plural: str) -> str:
    from tlbench.specs import KINDS

    return {p: k for k, p in KINDS.items()}[plural]


def _infos(host, plural: str) -> list[dict]:
    from tlbench.describe import component_info

    versions = {row["name"]: row["version"] for row in host.plugin_rows()}
    kind = _singular(plural)
    return [component_info(kind, item, versions) for item in host.registry.items(kind)]


def _list_tables(infos: list[dict], plurals: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    from tlbench.describe import card_lines, offline_text, option_names

    console = Console()
    for plural in plurals:
        kind = _singular(plural)
        table = Table(title=plural, title_justify="left", expand=False)
        show_card = plural in ("models", "datasets")
        columns = (
            ("name", "plugin", "description")
            + (("card",) if show_card else ())
            + ("options", "offline")
        )
        for column in columns:
            table.add_column(column, overflow="fold")
        for info in (i for i in infos if i["kind"] == kind):
            card = ("\n".join(card_lines(info)),) if show_card else ()
            row = (info["ref"], info["plugin"], info["description"], *card)
            table.add_row(*row, option_names(info), offline_text(info))
        console.print(table)
    console.print(
        "(sweep): give a list to choose among on the validation split. "
        "`tlbench show NAME` shows every option with its type, default and help.",
        style="dim",
    )


@cli.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the description as JSON.")
@click.pass_context
def show(ctx, name, as_json):
    """Describe a component: NAME is a model, dataset, strategy or estimator (or a family's
    `name:argument`). Shows its description, plugin and versions, card, whether it runs offline,
    and every option with its type, default, accepted values, help and whether it can be
    swept."""
    _show(_host(ctx), name, None, as_json)


def _show(host, ref: str, kind: str | None, as_json: bool) -> None:
    from tlbench.describe import component_info, show_lines

    if kind is None:
        found = host.registry.find(ref)
    else:
        registered, argument = host.registry.lookup(kind, ref)
        found = [(kind, registered, argument)]
    versions = {row["name"]: row["version"] for row in host.plugin_rows()}
    infos = [component_info(k, item, versions, argument) for k, item, argument in found]
    if as_json:
        _echo_json(infos[0] if len(infos) == 1 else infos)
        return
    if _plain_output():
        click.echo("\n\n".join("\n".join(show_lines(info)) for info in infos))
        return
    for info in infos:
        _show_rich(info)


def _show_rich(info: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    from tlbench.describe import default_text, header_lines

    console = Console()
    header = header_lines(info)
    console.print(header[0], style="bold", highlight=False)
    for line in header[1:]:
        console.print(line, highlight=False)
    if not info["options"]:
        console.print("options: none")
        return
    table = Table(title="options", title_justify="left")
    for column in ("option", "type", "default", "accepts", "sweep", "help"):
        table.add_column(column, overflow="fold")
    for option in info["options"]:
        default = "required" if option["required"] else default_text(option)
        name = option["name"] + (" (core)" if option["provided_by"] == "core" else "")
        sweep = "yes" if option["sweep"] else ""
        table.add_row(name, option["type"], default, option["expected"], sweep, option["help"])
    console.print(table)


@cli.command()
@click.option(
    "--requirements",
    is_flag=True,
    help="Print pinned requirements of tlbench and installed plugins.",
)
@click.option("--json", "as_json", is_flag=True, help="Print plugins, clashes and errors as JSON.")
@click.pass_context
def plugins(ctx, requirements, as_json):
    """List loaded plugins, their versions, where each came from and the hooks it implements,
    and any component name two plugins both registered (the first one is kept).

    When stdout is not a terminal, each plugin is one line of tab-separated fields: name,
    version, source, hooks, clashes."""
    host = _host(ctx, quiet=as_json)
    if requirements:
        from tlbench.plugins import requirements_lines

        for line in requirements_lines(host):
            click.echo(line)
        return
    rows = host.plugin_rows()
    clashes = host.registry.clashes
    for row in rows:
        row["clashes"] = [c.describe() for c in clashes if row["name"] in (c.kept, c.ignored)]
    if as_json:
        _echo_json(
            {
                "plugins": rows,
                "clashes": [vars(c) for c in clashes],
                "errors": host.errors,
            }
        )
    elif _plain_output():
        for row in rows:
            fields = (row["name"], row["version"], row["source"], ", ".join(row["hooks"]))
            click.echo(_line(*fields, "; ".join(row["clashes"])))
    else:
        _plugins_table(rows, clashes)


def _plugins_table(rows: list[dict], clashes) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table()
    for column in ("plugin", "version", "source", "hooks"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["name"], row["version"], row["source"], ", ".join(row["hooks"]))
    console = Console()
    console.print(table)
    if clashes:
        clash_table = Table(title="name clashes (the first plugin's component is kept)")
        for column in ("kind", "name", "kept", "ignored"):
            clash_table.add_column(column)
        for clash in clashes:
            clash_table.add_row(clash.kind, clash.name, clash.kept, clash.ignored)
        console.print(clash_table)


def _executor_config(kind, workers, options, *, ray, slurm, slurm_extra):
    """``ExecutorConfig`` from ``--executor-opt`` and the older per-backend flags, which are
    aliases of it: ``--slurm-time 90`` is ``--executor-opt time=90`` (given with another
    executor, they are refused in one line, as before)."""
    from tlbench.errors import UserError
    from tlbench.executors import ExecutorConfig, parse_option

    config = ExecutorConfig.from_cli(kind, workers, options)
    for backend, given, extra, flags_named in (
        ("ray", ray, (), "--ray-address, --cpus-per-cell and --gpus-per-cell"),
        ("slurm", slurm, slurm_extra, "--slurm options"),
    ):
        flags = {k: v for k, v in given.items() if v is not None}
        if not flags and not extra:
            continue
        if kind != backend:
            raise UserError(f"{flags_named} need --executor {backend}")
        pairs = list(flags.items()) + [parse_option(text, "--slurm") for text in extra]
        config = config.with_options(pairs)
    return config


@cli.group()
def cache():
    """Inspect or clear the on-disk cache (features, converted weights, pretrained sources)."""


@cache.command("info")
@click.option("--cache-dir", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the root and namespaces as JSON.")
def cache_info(cache_dir, as_json):
    """Entries and size per namespace. When stdout is not a terminal, each namespace is one
    line of tab-separated fields: namespace, entries, bytes."""
    from rich.console import Console
    from rich.table import Table

    from tlbench.cache import Cache

    store = Cache(cache_dir)
    rows = store.info()  # a root that is not a directory: one line, exit code 2
    if as_json:
        _echo_json({"root": str(store.root), "namespaces": rows})
        return
    if _plain_output():
        for row in rows:
            click.echo(_line(row["namespace"], row["entries"], row["bytes"]))
        return
    table = Table(title=f"cache: {store.root}", title_justify="left")
    for column in ("namespace", "entries", "size"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["namespace"], str(row["entries"]), f"{row['bytes'] / 1e6:.1f} MB")
    Console().print(table)


@cache.command("clear")
@click.argument("namespace", required=False)
@click.option("--cache-dir", type=click.Path(path_type=Path))
@click.option(
    "--component",
    metavar="MODEL",
    help="Delete only the entries computed from this model (its name as the suite writes it).",
)
@click.confirmation_option(prompt="Delete cached entries?")
def cache_clear(namespace, cache_dir, component):
    """Delete every entry (or one NAMESPACE, e.g. features: a name inside the cache, never a
    path; or, with --component, every entry computed from one model)."""
    from tlbench.cache import Cache

    store = Cache(cache_dir)
    if component:
        from tlbench.cell import model_marker

        removed = store.clear_matching(model_marker(component))
        click.echo(f"cleared {removed} entries computed from model {component!r}")
        return
    target = store.namespace_dir(namespace) if namespace else store.root
    store.clear(namespace)
    click.echo(f"cleared {target}")


@cache.command("prune")
@click.option(
    "--max-size",
    metavar="SIZE",
    help="Remove the least recently used entries until the cache holds at most SIZE "
    "(500M, 50G, 1.5T; default $TLBENCH_CACHE_MAX_SIZE, else only stale files go).",
)
@click.option("--cache-dir", type=click.Path(path_type=Path))
def cache_prune(max_size, cache_dir):
    """Remove lock and temporary files left by killed processes and, with a size cap, the
    least recently used entries."""
    from tlbench.cache import Cache, parse_size

    store = Cache(cache_dir, max_bytes=parse_size(max_size) if max_size else None)
    store.check_root()
    done = store.prune(store.max_bytes)
    click.echo(
        f"pruned {store.root}: {done['evicted']} entries evicted, {done['stale_removed']} stale "
        f"lock or temporary files removed, {done['bytes_after'] / 1e6:.1f} MB left"
    )


@cli.command("new-plugin")
@click.argument("name")
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
)
def new_plugin(name, directory):
    """Scaffold a plugin package tlbench-NAME with a model, a dataset, a strategy and tests."""
    from tlbench.scaffold import create_plugin

    path = create_plugin(name, directory)
    click.echo(f"created {path}\nnext: pip install -e {path} && tlbench plugins")


def main() -> None:
    try:
        cli(prog_name="tlbench")
    except KeyboardInterrupt:
        # A Ctrl-C that lands outside the run loop's own handling still exits the documented way.
        click.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
