"""The ``tlbench`` command. Each command delegates to a module; ``--help``, ``list`` and
``plugins`` never import torch (the heavy modules load inside the commands that need them)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from tlbench import __version__
from tlbench.errors import TlbenchError

PLURALS = ("models", "datasets", "strategies", "estimators")  # the order `tlbench list` shows
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
        return sorted(set(super().list_commands(ctx)) | set(LAZY_COMMANDS))

    def get_command(self, ctx, name):
        if name in LAZY_COMMANDS:
            import importlib

            module, _, attr = LAZY_COMMANDS[name].partition(":")
            return getattr(importlib.import_module(module), attr)
        return super().get_command(ctx, name)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except TlbenchError as exc:
            for line in str(exc).splitlines() or [type(exc).__name__]:
                click.echo(f"error: {line}", err=True)
            ctx.exit(exc.exit_code)


@click.group(cls=TlbenchGroup, context_settings={"help_option_names": ["-h", "--help"]})
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
    from tlbench.plugins import PluginConfig

    ctx.obj = PluginConfig(
        modules=tuple(plugin_modules), plugins_dir=str(plugins_dir) if plugins_dir else None
    )


def _host(ctx, quiet: bool = False):
    host = ctx.obj.load()
    if not quiet:
        for error in host.errors:
            click.echo(f"warning: {error}", err=True)
    return host


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
    type=click.Choice(["local", "process", "ray", "slurm"]),
    help="Where cells run: this process, N worker processes, a Ray cluster, or Slurm jobs.",
)
@click.option(
    "--workers",
    type=int,
    help="Parallel cells (process: default one per core; ray: default what the cluster fits).",
)
@click.option(
    "--ray-address", metavar="ADDRESS", help="Ray cluster to join (default: start a local one)."
)
@click.option(
    "--cpus-per-cell",
    type=float,
    default=1.0,
    show_default=True,
    help="Ray: CPUs each cell reserves.",
)
@click.option(
    "--gpus-per-cell",
    type=float,
    default=0.0,
    show_default=True,
    help="Ray: GPUs each cell reserves.",
)
@click.option("--slurm-partition", metavar="NAME", help="Slurm: partition of the jobs.")
@click.option(
    "--slurm-time",
    type=int,
    metavar="MINUTES",
    help="Slurm: time limit of each job (default 60); a job out of time is requeued with its cells not done.",
)
@click.option(
    "--slurm-cpus-per-task", type=int, metavar="N", help="Slurm: CPUs per job (default 1)."
)
@click.option(
    "--slurm-gpus-per-task", type=int, metavar="N", help="Slurm: GPUs per job (default 0)."
)
@click.option("--slurm-mem", metavar="SIZE", help="Slurm: memory per job, e.g. 16G.")
@click.option(
    "--slurm-array-parallelism",
    type=int,
    metavar="N",
    help="Slurm: jobs of the array running at once (--slurm-local: default one per core).",
)
@click.option(
    "--slurm",
    "slurm_extra",
    multiple=True,
    metavar="KEY=VALUE",
    help="Slurm: any other sbatch option, e.g. account=my-lab, qos=low, constraint=a100 (repeatable).",
)
@click.option(
    "--slurm-local",
    is_flag=True,
    help="Slurm: run the jobs on this machine through submitit's local executor (no cluster needed).",
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
@click.pass_context
def run(
    ctx,
    suite,
    out_dir,
    resume,
    retry_failed,
    device,
    cache_dir,
    models,
    datasets,
    strategies,
    seeds,
    executor,
    workers,
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
    dry_run,
    quiet,
    as_json,
):
    """Run every cell of SUITE (a path, or a name under suites/).

    Ctrl-C or SIGTERM finishes the cells in flight and exits with code 130 (SIGTERM: 143); a
    second one stops at once. A full or read-only disk stops the run with exit code 3.
    Resume later with --resume RUN_DIR (or --resume latest)."""
    from rich.console import Console

    from tlbench.executors import ExecutorConfig
    from tlbench.planning import RunRequest, Selection
    from tlbench.progress import RunProgress
    from tlbench.runner import plan_run, run_suite
    from tlbench.slurm import slurm_options

    host = _host(ctx, quiet)
    slurm = slurm_options(
        slurm_extra,
        slurm_local,
        partition=slurm_partition,
        time_min=slurm_time,
        cpus_per_task=slurm_cpus_per_task,
        gpus_per_task=slurm_gpus_per_task,
        mem=slurm_mem,
        array_parallelism=slurm_array_parallelism,
    )
    request = RunRequest(
        suite=suite,
        out_dir=out_dir,
        resume=resume,
        retry_failed=retry_failed,
        device=device,
        cache_dir=cache_dir,
        selection=Selection(tuple(models), tuple(datasets), tuple(strategies), tuple(seeds)),
        plugins=ctx.obj,
        argv=sys.argv,
        executor=ExecutorConfig(
            executor, workers, ray_address, cpus_per_cell, gpus_per_cell, slurm
        ),
    )
    if dry_run:
        _print_plan(plan_run(request, host), as_json)
        return
    console = Console(stderr=True)
    progress = None if quiet else RunProgress(console)
    outcome = run_suite(request, host, progress)
    if as_json:
        click.echo(json.dumps(outcome.records, indent=2, default=str))
    if not quiet:
        _print_table(outcome.run_dir, Console())
        console.print(
            f"results: {outcome.run_dir}  ({outcome.ran} cells run, {outcome.skipped} already recorded)"
        )
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


def _print_plan(plan, as_json: bool) -> None:
    from rich.console import Console

    from tlbench.planning import render_plan

    if as_json:
        click.echo(json.dumps(plan.to_json(), indent=2, default=str))
    else:
        render_plan(plan, Console())


def _print_table(run_dir: Path, console) -> None:
    from tlbench.report import load_records, render_terminal

    render_terminal(load_records([run_dir]), console)


@cli.command("list")
@click.argument("kind", required=False, type=click.Choice(sorted(PLURALS)))
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
@click.pass_context
def list_components(ctx, kind, timm_pattern, pretrained):
    """List registered components, the plugin each came from, and whether it runs offline now."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if timm_pattern:
        import timm

        names = timm.list_pretrained(timm_pattern) if pretrained else timm.list_models(timm_pattern)
        for name in names:
            console.print(name, highlight=False)
        return
    host = _host(ctx)
    from tlbench.specs import KINDS

    singular = {plural: kind for kind, plural in KINDS.items()}
    kinds = [kind] if kind else list(PLURALS)
    for plural in kinds:
        table = Table(title=plural, title_justify="left", expand=False)
        show_card = plural in ("models", "datasets")
        columns = (
            ("name", "plugin", "description")
            + (("card",) if show_card else ())
            + ("options", "offline")
        )
        for column in columns:
            table.add_column(column, overflow="fold")
        for item in host.registry.items(singular[plural]):
            spec = item.spec
            name = (
                f"{spec.name}:<{spec.argument_help or 'arg'}>" if spec.takes_argument else spec.name
            )
            options = ", ".join(o.name for o in spec.options)
            available = spec.availability()
            offline = "yes" if available is True else f"no: {available}"
            card = (
                ("\n".join(f"{k}: {v}" for k, v in spec.card.items() if k != "source"),)
                if show_card
                else ()
            )
            table.add_row(name, item.plugin, spec.description, *card, options, offline)
        console.print(table)


@cli.command()
@click.option(
    "--requirements",
    is_flag=True,
    help="Print pinned requirements of tlbench and installed plugins.",
)
@click.pass_context
def plugins(ctx, requirements):
    """List loaded plugins, their versions and the hooks each implements."""
    from rich.console import Console
    from rich.table import Table

    host = _host(ctx)
    if requirements:
        from tlbench.plugins import requirements_lines

        for line in requirements_lines(host):
            click.echo(line)
        return
    table = Table()
    for column in ("plugin", "version", "hooks"):
        table.add_column(column)
    for row in host.plugin_rows():
        table.add_row(row["name"], row["version"], ", ".join(row["hooks"]))
    Console().print(table)


@cli.group()
def cache():
    """Inspect or clear the on-disk cache (features, converted weights, pretrained sources)."""


@cache.command("info")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path))
def cache_info(cache_dir):
    """Entries and size per namespace."""
    from rich.console import Console
    from rich.table import Table

    from tlbench.cache import Cache

    store = Cache(cache_dir)
    table = Table(title=f"cache: {store.root}", title_justify="left")
    for column in ("namespace", "entries", "size"):
        table.add_column(column)
    for row in store.info():
        table.add_row(row["namespace"], str(row["entries"]), f"{row['bytes'] / 1e6:.1f} MB")
    Console().print(table)


@cache.command("clear")
@click.argument("namespace", required=False)
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path))
@click.confirmation_option(prompt="Delete cached entries?")
def cache_clear(namespace, cache_dir):
    """Delete every entry (or one NAMESPACE, e.g. features)."""
    from tlbench.cache import Cache

    store = Cache(cache_dir)
    store.clear(namespace)
    click.echo(f"cleared {store.root / namespace if namespace else store.root}")


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
