"""Where tlbench's messages go. The library logs through ``logging.getLogger("tlbench...")`` and
prints nothing; the program that runs it chooses the handlers.

``configure`` is the command line's choice: one plain line per message on stderr (``warning:``
or ``error:`` before a warning or an error, an informational message as it is; a message may
name its own prefix, ``extra={"prefix": "note: "}``), only warnings and errors with ``--quiet``. A program embedding tlbench configures logging as it likes (Python's
own last-resort handler shows warnings and errors on stderr when nobody does). ``run.log`` is
written by its own logger, which does not propagate here.
"""

from __future__ import annotations

import logging
import sys

logger = logging.getLogger("tlbench")

_PREFIXES = {logging.WARNING: "warning: ", logging.ERROR: "error: ", logging.CRITICAL: "error: "}


class LineFormatter(logging.Formatter):
    """One line per message, prefixed by what it is: ``warning: ...``, ``error: ...``."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = getattr(record, "prefix", None)
        if prefix is None:
            prefix = _PREFIXES.get(record.levelno, "")
        return prefix + record.getMessage()


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a message arrives (a progress display or a
    test runner may have replaced it since the handler was made)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)
        self.setFormatter(LineFormatter())

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def log_status(message: str) -> None:
    """The default ``log`` of ``BuildContext`` and ``CellContext``: a component's one-line
    status, at INFO on the ``tlbench.cell`` logger (the CLI shows it next to the cell in flight
    instead)."""
    logging.getLogger("tlbench.cell").info(message)


def configure(quiet: bool = False) -> logging.Handler:
    """The CLI's handler on the ``tlbench`` logger: plain lines on stderr; with ``quiet`` only
    warnings and errors. Calling it again (a test invoking the CLI twice) replaces the handler it made."""
    for handler in [h for h in logger.handlers if isinstance(h, _StderrHandler)]:
        logger.removeHandler(handler)
    handler = _StderrHandler()
    handler.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return handler


def ensure_configured() -> None:
    """In a worker process tlbench started: lines as in the parent, unless the host program
    already gave the ``tlbench`` logger a handler."""
    if not logger.handlers:
        configure()
