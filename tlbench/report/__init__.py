"""Reports on run directories: tables, plots, HTML pages and run-to-run comparisons.

Everything is importable from here, lazily, so that importing ``tlbench.report.commands``
(for ``tlbench --help``) does not pull in pandas, scipy or matplotlib.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "load_records": "records",
    "load_env": "records",
    "records_frame": "records",
    "summarize": "tables",
    "build_tables": "tables",
    "Table": "tables",
    "render_report": "document",
    "FORMATS": "document",
    "figures": "plots",
    "write_plots": "plots",
    "val_curves": "plots",
    "compare": "compare",
    "Comparison": "compare",
    "render_comparison": "compare",
    "render_terminal": "terminal",
    "render_comparison_terminal": "terminal",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'tlbench.report' has no attribute {name!r}")
    return getattr(importlib.import_module(f"tlbench.report.{_EXPORTS[name]}"), name)
