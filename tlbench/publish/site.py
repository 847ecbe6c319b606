"""Building the site folder: read and merge the runs, compute the leaderboards, write every page.

The site is written to a temporary folder next to ``out`` and moved into place at the end, so
a failed build never leaves half a site. An existing ``out`` is only replaced when it is empty or
was itself written by ``tlbench publish`` (it holds ``tlbench-site.json``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import tlbench
from tlbench.errors import UserError
from tlbench.publish.board_page import board_csv, board_page
from tlbench.publish.card_pages import dataset_page, model_page
from tlbench.publish.cell_page import cell_page
from tlbench.publish.discover import find_run_dirs
from tlbench.publish.gallery import GALLERY_SIZE, Thumbnails, evidence
from tlbench.publish.html import SiteInfo
from tlbench.publish.leaderboard import Leaderboard, build_leaderboard, from_scratch_references
from tlbench.publish.merge import merge_runs
from tlbench.publish.notes import Notes
from tlbench.publish.paths import (
    ASSETS,
    board_csv_path,
    board_path,
    cell_path,
    dataset_path,
    model_path,
    run_path,
)
from tlbench.publish.runs import Run, load_run
from tlbench.publish.site_pages import index_page, run_page
from tlbench.publish.targets import Targets, scrub
from tlbench.publish.variants import SuiteView, Variant, suite_views
from tlbench.report.html import SCRIPT, STYLESHEET, asset
from tlbench.results import git_revision, now_iso
from tlbench.safeio import StorageError, fault

MANIFEST = "tlbench-site.json"


@dataclass(frozen=True)
class SiteSummary:
    out: Path
    pages: int
    files: int
    bytes: int
    runs: int
    suites: tuple[str, ...]
    cells: int
    thumbnails: int
    notes: tuple[str, ...]


def build_site(
    paths: Iterable[str | os.PathLike],
    out: str | os.PathLike,
    *,
    strategy: str | None = None,
    title: str | None = None,
    metric: str = "top1",
    gallery_size: int = GALLERY_SIZE,
    notes: Notes | None = None,
    targets: Targets | None = None,
) -> SiteSummary:
    """Publish the runs found under ``paths`` into the folder ``out``.

    ``strategy`` is the strategy id each suite's front leaderboard shows (default: the suite's
    first strategy). Problems with the input are collected in ``notes`` (and on the front
    page); a ``UserError`` is raised only when nothing valid remains.
    """
    notes = notes if notes is not None else Notes()
    paths = list(paths)
    run_dirs = find_run_dirs(paths, notes)
    runs = [run for order, d in enumerate(run_dirs) if (run := load_run(d, notes, order))]
    if not runs:
        given = ", ".join(str(p) for p in paths) or "nothing"
        raise UserError(f"nothing to publish: no valid run directory in {given}")
    runs = _unique_labels(runs)
    entries = merge_runs(runs)
    _check_metric(entries, metric)
    views = suite_views(entries, runs)
    defaults = {view.name: _default_strategy(view, strategy, notes) for view in views}
    if strategy is not None and all(d.id != strategy for d in defaults.values()):
        known = sorted({s.id for view in views for s in view.strategies})
        raise UserError(f"--strategy {strategy!r} is in no suite; strategies: {', '.join(known)}")
    site = SiteInfo(
        title=title or _default_title(views),
        built_at=now_iso(),
        tlbench_version=tlbench.__version__,
        git_revision=git_revision() or "unknown",
        metric=metric,
    )
    target = _check_out(Path(out))
    try:
        building = Path(tempfile.mkdtemp(prefix=f".{target.name}.building-", dir=target.parent))
    except OSError as exc:
        raise fault(target.parent, exc, "write the site") from None
    try:
        writer = _Writer(building, notes)
        thumbs = Thumbnails(building)
        _write_site(
            writer, views, runs, defaults, site, notes, thumbs, targets or Targets(), gallery_size
        )
        _swap(building, target)
    except OSError as exc:  # the disk filled up or went read-only while writing
        shutil.rmtree(building, ignore_errors=True)
        raise fault(exc.filename or target, exc, "write the site") from None
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    return SiteSummary(
        out=target,
        pages=writer.pages,
        files=writer.files + len(thumbs.written),
        bytes=sum(p.stat().st_size for p in target.rglob("*") if p.is_file()),
        runs=len(runs),
        suites=tuple(view.name for view in views),
        cells=len(entries),
        thumbnails=len(thumbs.written),
        notes=tuple(notes),
    )


class _Writer:
    """Writes each page once: a second page under a name already written (two ids whose
    hashed names collide) is left out with a note, never written over the first."""

    def __init__(self, root: Path, notes: Notes | None = None):
        self.root = root
        self.pages = 0
        self.files = 0
        self.notes = notes if notes is not None else Notes()
        self.written: set[str] = set()

    def write(self, relative: str, text: str) -> None:
        if relative in self.written:
            self.notes.warn(f"{relative}: two pages map to this name; the second was left out")
            return
        self.written.add(relative)
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        self.files += 1
        self.pages += relative.endswith(".html")


def _write_site(writer, views, runs, defaults, site, notes, thumbs, targets, gallery_size) -> None:
    for name in (STYLESHEET, SCRIPT):  # shared with tlbench report, which inlines them
        writer.write(f"{ASSETS}/{name}", asset(name))
    for view in views:
        references = from_scratch_references(view, site.metric)
        boards = [build_leaderboard(view, s, site.metric, references) for s in view.strategies]
        scores = {
            row_score.group.id: row_score
            for b in boards
            for r in b.rows
            for row_score in r.scores.values()
        }
        default = defaults[view.name]
        for board in boards:
            page = board_path(view.name, board.strategy.key, board.strategy.key == default.key)
            writer.write(page, board_page(board, page, default, site))
            writer.write(board_csv_path(view.name, board.strategy.key), board_csv(board))
            _write_cells(writer, view, board, page, site, thumbs, targets, gallery_size, notes)
        for model_id in dict.fromkeys(m.id for m in view.models):
            page = model_path(view.name, model_id)
            writer.write(page, model_page(view, model_id, page, site, scores))
        for dataset_id in dict.fromkeys(d.id for d in view.datasets):
            page = dataset_path(view.name, dataset_id)
            writer.write(page, dataset_page(view, dataset_id, page, site, scores))
    for run in runs:
        writer.write(run_path(run.label), run_page(run, views, run_path(run.label), site))
    public = [_public(line, runs) for line in notes]  # stderr keeps the full paths
    writer.write("index.html", index_page(views, runs, public, site))
    writer.write(".nojekyll", "")  # GitHub Pages: serve the folder as it is
    writer.write(MANIFEST, _manifest(views, runs, site))


def _write_cells(
    writer, view, board: Leaderboard, page, site, thumbs, targets, gallery_size, notes
) -> None:
    for row in board.rows:
        for dataset_key, score in row.scores.items():
            group = score.group
            reference = board.references.get(dataset_key)
            ranked = sum(1 for r in board.rows if dataset_key in r.scores)
            found = {
                e.id: evidence(e, site.metric, targets, thumbs, gallery_size) for e in group.entries
            }
            for shown in found.values():
                if shown.refused:
                    notes.warn(shown.refused)
                if shown.no_gallery:  # once per reason: usually a dataset not installed here
                    notes.warn(f"no images for {group.dataset.label} cells: {shown.no_gallery}")
            target = cell_path(view.name, group.model.key, group.dataset.key, group.strategy.key)
            writer.write(
                target,
                cell_page(view, group, score, target, page, site, found, reference, ranked),
            )


def _public(line: str, runs: list[Run]) -> str:
    """A note as the front page shows it: a run directory given as an absolute path is named
    from its own folder on (``/home/me/results/acme/x`` -> ``acme/x``), and any other absolute
    path is cut to its last component, so the page never shows where the publisher keeps files."""
    for run in runs:
        if run.path.is_absolute():
            line = line.replace(str(run.path), run.path.name)
    return scrub(line)


def _unique_labels(runs: list[Run]) -> list[Run]:
    """Two directories with the same run id (copies, or ids chosen by hand) get distinct labels."""
    seen: dict[str, int] = {}
    unique = []
    for run in runs:
        count = seen.get(run.run_id, 0) + 1
        seen[run.run_id] = count
        unique.append(run if count == 1 else replace(run, label=f"{run.run_id}-{count}"))
    return unique


def _check_metric(entries, metric: str) -> None:
    if any(e.metric(metric) is not None for e in entries):
        return
    known = sorted({k for e in entries for k in (e.record.get("metrics") or {})})
    if any(e.status == "ok" for e in entries):
        raise UserError(
            f"metric {metric!r} is in no record; recorded metrics: {', '.join(known) or 'none'}"
        )


def _default_strategy(view: SuiteView, wanted: str | None, notes: Notes) -> Variant:
    if wanted is not None:
        found = next((s for s in view.strategies if s.id == wanted), None)
        if found is not None:
            return found
        notes.warn(
            f"suite {view.name!r} has no strategy {wanted!r}; its leaderboard opens on {view.strategies[0].id!r}"
        )
    return view.strategies[0]


def _default_title(views: list[SuiteView]) -> str:
    return f"{views[0].name} leaderboard" if len(views) == 1 else "tlbench leaderboards"


def _check_out(out: Path) -> Path:
    out = out.expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder; -o expects the site folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise UserError(
            f"{out}: not empty and not a site written by tlbench publish (no {MANIFEST}); choose a new or empty folder"
        )
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # read-only or full: exit code 3; a file in the way: 2
        raise fault(out.parent, exc, "create the folder") from None
    if not os.access(out.parent, os.W_OK):
        raise StorageError(f"{out.parent}: not writable")
    return out


def _swap(building: Path, target: Path) -> None:
    """Move the new site into place; the previous one is removed only once it is out of the way."""
    building.chmod(0o755)  # mkdtemp creates 0700; a static host serves the folder as it is
    old = None
    if target.exists():
        old = target.parent / f".{target.name}.old-{building.name.rsplit('-', 1)[-1]}"
        target.rename(old)
    building.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _manifest(views: list[SuiteView], runs: list[Run], site: SiteInfo) -> str:
    return json.dumps(
        {
            "generator": f"tlbench {site.tlbench_version}",
            "git_revision": site.git_revision,
            "built_at": site.built_at,
            "metric": site.metric,
            "suites": [view.name for view in views],
            "runs": [
                {
                    "label": run.label,
                    "run_id": run.run_id,
                    "directory": run.path.name,
                    "records": len(run.records),
                    "suite_sha256": run.suite_sha256,
                }
                for run in runs
            ],
        },
        indent=2,
    )
