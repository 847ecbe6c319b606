"""``tlbench publish RUN_DIR... -o SITE``: parses options and delegates to ``tlbench.publish``.

Importing this module costs click only; the site builder loads when the command runs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from tlbench.errors import TlbenchError


@click.command("publish")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The site folder to write (created, or replaced when it holds an earlier site).",
)
@click.option(
    "--strategy",
    help="Strategy id each suite's leaderboard opens on (default: the suite's first strategy).",
)
@click.option("--title", help="Site title (default: the suite's name, or 'tlbench leaderboards').")
@click.option(
    "--metric", default="top1", show_default=True, help="Which recorded metric the tables show."
)
def publish_command(
    run_dirs: tuple[Path, ...], out: Path, strategy: str | None, title: str | None, metric: str
) -> None:
    """A static website from run directories: leaderboards, cell pages, errors made.

    RUN_DIR may be a run directory or any folder holding run directories (searched
    recursively, e.g. results/). Open SITE/index.html in a browser, or copy SITE to any static
    host as it is.
    """
    from tlbench.publish.notes import Notes
    from tlbench.publish.site import build_site

    notes = Notes()
    try:
        summary = build_site(
            run_dirs, out, strategy=strategy, title=title, metric=metric, notes=notes
        )
    except TlbenchError as exc:  # UserError: 2; StorageError (disk full, read-only): 3
        _warn(notes)
        for line in str(exc).splitlines():
            click.echo(f"error: {line}", err=True)
        raise click.exceptions.Exit(exc.exit_code) from None
    _warn(notes)
    size = summary.bytes / 1e6
    click.echo(
        f"wrote {summary.out}: {summary.pages} pages, {summary.thumbnails} thumbnails, {size:.1f} MB "
        f"from {summary.runs} run{'s' if summary.runs != 1 else ''} ({', '.join(summary.suites)}); "
        f"open {summary.out / 'index.html'}"
    )


def _warn(notes) -> None:
    """Each note as ``tlbench report`` shows its warnings (``safeio.warnings_as_lines``): one
    ``warning: ...`` line on stderr."""
    import warnings

    from tlbench.safeio import TlbenchWarning, warnings_as_lines

    with warnings_as_lines(sys.stderr):
        for line in notes:
            warnings.warn(line, TlbenchWarning, stacklevel=2)
