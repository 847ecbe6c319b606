"""``tlbench publish``: a static, self-contained website from any number of run directories.

Leaderboards per suite (one page per strategy), a page per cell with its configuration, chosen
hyperparameters, cost, environment, confusion matrix and the test images it got wrong, pages per
model, dataset and run, and provenance on every page. Opens from disk (``file://``) or any static
host; nothing is fetched from the network.

    from tlbench.publish import build_site
    build_site(["results/"], "site/")

Modules, one job each: ``discover`` (which folders are runs), ``runs`` (reading them), ``merge``
(one entry per cell), ``variants`` (which entries may be averaged), ``leaderboard`` (statistics,
ranks, gains), ``targets`` and ``gallery`` (per-example predictions and images), ``html`` and the
``*_page`` modules (rendering, through the Jinja2 templates of ``tlbench/templates/html``, whose
stylesheet and script ``tlbench report`` shares), ``site`` (writing the folder), ``command`` (the
CLI).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from tlbench.publish.site import SiteSummary


def build_site(paths, out, **options) -> SiteSummary:
    """Build the site from run directories (or folders holding them) into ``out``; see
    ``tlbench.publish.site.build_site`` for the options."""
    from tlbench.publish.site import build_site as build

    return build(paths, out, **options)


__all__ = ["build_site"]
