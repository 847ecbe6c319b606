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


def first_line(exc: BaseException) -> str:
    """The first non-blank line of an exception's message, or its type's name when it has none:
    what one line of output or one record field says about it."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def typed_first_line(exc: BaseException) -> str:
    """``TypeName: first line`` (or the bare type name when the message is blank), for places
    where the type says as much as the message: a damaged file's ``KeyError: 'shape'``."""
    name = type(exc).__name__
    return f"{name}: {first_line(exc)}" if str(exc).strip() else name
