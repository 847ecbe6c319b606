"""Errors that carry their own exit code, so the CLI can print one line instead of a traceback."""


class TlbenchError(Exception):
    """Base class. ``exit_code`` is what the CLI exits with."""

    exit_code = 1


class UserError(TlbenchError):
    """A mistake the user can fix: a bad suite, an unknown name, a missing file. Exit code 2."""

    exit_code = 2


class Diverged(TlbenchError):
    """Training produced a non-finite loss; the cell is recorded as ``diverged``."""

    def __init__(self, message: str, step: int | None = None):
        super().__init__(message)
        self.step = step
