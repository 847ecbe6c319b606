"""Reading and writing tlbench's own files, with the machine's faults made plain.

Every ``OSError`` becomes one line naming the file and the cause (``fault``). A fault of the
machine (disk full, quota, read-only filesystem, no permission, I/O error) is a
``StorageError``, exit code 3: nothing about the inputs is wrong, the place is. Anything else
about a path (a directory where a file belongs, a symbolic link) is a ``UserError``, exit code 2.

Files inside a run directory are opened without following symbolic links (``open_nofollow``): a
link planted there is refused, never written through. Damaged inputs that a reader can skip are
reported as ``TlbenchWarning``; ``warnings_as_lines`` shows each one once, as one line.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

from tlbench.errors import TlbenchError, UserError, first_line

STORAGE_EXIT_CODE = 3
# Made and removed to prove a directory is writable (a run directory, the cache root).
PROBE = ".write-probe"
# Faults of the place, not of what the user asked for: another disk, more space, or other
# permissions fix them.
ENVIRONMENT_ERRNOS = frozenset(
    {
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EROFS,
        errno.EACCES,
        errno.EPERM,
        errno.EIO,
        errno.EMFILE,
        errno.ENFILE,
        errno.ENOMEM,
    }
)


class StorageError(TlbenchError):
    """The machine refused a read or a write: disk full, read-only, no permission. Exit code 3."""

    exit_code = STORAGE_EXIT_CODE


class TlbenchWarning(UserWarning):
    """Something was skipped or degraded (a torn record, a cache that cannot store); the
    message is one line naming the file."""


def fault(path: os.PathLike | str, exc: OSError, action: str) -> TlbenchError:
    """The one-line error for ``exc``, raised while trying to ``action`` (``"write"``, ...)."""
    message = f"{path}: cannot {action}: {describe(exc)}"
    if exc.errno in ENVIRONMENT_ERRNOS:
        return StorageError(message)
    return UserError(message)


def describe(exc: BaseException) -> str:
    """The cause of an I/O error in a few words, without the path the caller already names."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return first_line(exc)


def is_environment_fault(exc: BaseException) -> bool:
    return isinstance(exc, StorageError) or (
        isinstance(exc, OSError) and exc.errno in ENVIRONMENT_ERRNOS
    )


def link_refused(path: os.PathLike | str) -> UserError:
    return UserError(
        f"{path}: is a symbolic link; tlbench never follows links inside a run directory "
        "(remove it, or choose another --out)"
    )


def open_nofollow(
    path: os.PathLike | str, flags: int, mode: int = 0o644, action: str = "open"
) -> int:
    """``os.open`` a regular file without following a symbolic link at ``path`` itself.

    A FIFO or device planted under a tlbench name would block or swallow what is written, so
    only regular files are accepted; ``O_NONBLOCK`` keeps the open itself from blocking on one.
    """
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, mode)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK) and os.path.islink(path):
            raise link_refused(path) from None
        if exc.errno == errno.ENXIO:  # a FIFO without a reader
            raise UserError(f"{path}: is not a regular file") from None
        if exc.errno == errno.EISDIR:
            raise UserError(f"{path}: is a directory, expected a file") from None
        raise fault(path, exc, action) from None
    try:
        mode_bits = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode_bits):
            raise UserError(f"{path}: is a directory, expected a file")
        if not stat.S_ISREG(mode_bits):
            raise UserError(f"{path}: is not a regular file")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_bytes_nofollow(path: os.PathLike | str) -> bytes:
    """The whole file at ``path`` (``FileNotFoundError`` when absent), refusing links."""
    if not os.path.lexists(path):
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(path))
    fd = open_nofollow(path, os.O_RDONLY, action="read")
    try:
        with os.fdopen(fd, "rb", closefd=False) as fh:
            return fh.read()
    except OSError as exc:
        raise fault(path, exc, "read") from None
    finally:
        os.close(fd)


class TooLarge(UserError):
    """A file larger than its reader accepts (a hostile or damaged input)."""


def read_inside(directory: os.PathLike | str, relative: str, limit: int) -> bytes:
    """The file at ``directory/relative``, at most ``limit`` bytes, never leaving ``directory``.

    No component of ``relative`` may be a symbolic link, ``..`` or absolute, and the file must
    be a regular one (not ``/dev/zero``, not a FIFO): a submitted run directory cannot point a
    reader at the publisher's files. Absent: ``FileNotFoundError``; too large: ``TooLarge``
    (read up to ``limit`` only, so the size check allocates nothing the file chose). Messages
    name the file by ``relative`` alone: the caller knows, and says, whose directory it is.
    """
    parts = Path(relative).parts
    if not parts or Path(relative).is_absolute() or ".." in parts:
        raise UserError(f"{relative}: names a path outside its run directory")
    shown = Path(relative)
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for depth, part in enumerate(parts[:-1], start=1):
            try:
                inner = os.open(
                    part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd
                )
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR) and os.path.islink(
                    Path(directory, *parts[:depth])
                ):
                    raise _read_link_refused(Path(*parts[:depth])) from None
                raise
            os.close(dir_fd)
            dir_fd = inner
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        try:
            fd = os.open(parts[-1], flags, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.EMLINK):
                raise _read_link_refused(shown) from None
            if exc.errno == errno.ENXIO:
                raise UserError(f"{shown}: is not a regular file") from None
            raise
    finally:
        os.close(dir_fd)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
            raise UserError(f"{shown}: is {kind}")
        if info.st_size > limit:
            raise TooLarge(f"{shown}: is {info.st_size} bytes, more than the {limit} accepted")
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=False) as fh:
            data = fh.read(limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:  # grew while being read
        raise TooLarge(f"{shown}: is more than the {limit} bytes accepted")
    return data


def _read_link_refused(path: Path) -> UserError:
    return UserError(f"{path}: is a symbolic link; a link in a run directory is never followed")


def refuse_links(directory: Path, names: Iterable[str]) -> None:
    """Refuse a run directory in which any of ``names`` is a symbolic link."""
    for name in names:
        if os.path.islink(directory / name):
            raise link_refused(directory / name)


def probe_writable(directory: Path, what: str, hint: str = "", probe_name: str = PROBE) -> None:
    """Create ``directory`` if needed and prove that a file can be created, written, synced and
    removed in it, before any work depends on it."""
    probe = directory / probe_name
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _unwritable(directory, what, exc, hint) from None
    if os.path.islink(probe):
        raise link_refused(probe)
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise _unwritable(directory, what, exc, hint) from None
    try:
        os.write(fd, b"ok")
        os.fsync(fd)
    except OSError as exc:
        raise _unwritable(directory, what, exc, hint) from None
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(probe)


def _unwritable(directory: Path, what: str, exc: OSError, hint: str) -> TlbenchError:
    cls = StorageError if exc.errno in ENVIRONMENT_ERRNOS else UserError
    return cls(f"{what} {str(directory)!r} is not writable: {describe(exc)}{hint}")


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same directory, fsync, then rename over ``path``: a
    reader sees the old file or the new one, never half of it, and a link planted at ``path``
    is replaced, never written through."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# -------------------------------------------------------------------------------- CSV


def csv_cell(value: object) -> object:
    """``value`` safe to open in a spreadsheet: text that starts like a formula (``=``, ``+``,
    ``-``, ``@``, a tab or carriage return) gets a leading ``'``, so a model id such as
    ``=HYPERLINK(...)`` is shown, never evaluated. Numbers, negative ones included, pass."""
    if not isinstance(value, str) or not value.startswith(FORMULA_STARTS):
        return value
    try:
        float(value)
        return value  # "-0.5": a number written as text
    except ValueError:
        return "'" + value


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_frame(frame):
    """A copy of the ``pandas.DataFrame`` ``frame`` with every text cell passed through
    ``csv_cell``, ready for ``to_csv``."""
    text = frame.select_dtypes(include=["object", "string"]).columns
    if not len(text):
        return frame
    frame = frame.copy()
    for column in text:
        frame[column] = frame[column].map(csv_cell)
    return frame


# -------------------------------------------------------------------------------- warnings

_WARNED: set[str] = set()


def warn_once(message: str, stacklevel: int = 2) -> None:
    """Warn about one problem once per process, however often its file is read."""
    if message in _WARNED:
        return
    _WARNED.add(message)
    warnings.warn(message, TlbenchWarning, stacklevel=stacklevel + 1)


@contextlib.contextmanager
def warnings_as_lines(stream=None) -> Iterator[None]:
    """Log each ``TlbenchWarning`` raised inside once, as a warning of the ``tlbench.warnings``
    logger (the CLI shows it as one ``warning: ...`` line on stderr), or print it as that line
    on ``stream``; other warnings keep Python's own display."""
    with warnings.catch_warnings():
        _show_as_lines(stream)
        yield


def show_warnings_as_lines(stream=None) -> None:
    """For the rest of this process (a worker tlbench started): ``TlbenchWarning`` as lines,
    shown as the parent shows them."""
    from tlbench.log import ensure_configured

    ensure_configured()
    _show_as_lines(stream)


def _show_as_lines(stream=None) -> None:
    shown: set[str] = set()
    original = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if not issubclass(category, TlbenchWarning):
            return original(message, category, filename, lineno, file, line)
        text = str(message)
        if text not in shown:
            shown.add(text)
            if stream is None:
                logging.getLogger("tlbench.warnings").warning(text)
            else:
                print(f"warning: {text}", file=stream, flush=True)

    warnings.simplefilter("always", TlbenchWarning)
    warnings.showwarning = show
