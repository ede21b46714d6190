"""One place that turns every failure of a command into one line and an exit status.

Commands do not catch exceptions themselves: the group's ``invoke`` hands anything a command raises
to :func:`to_click_exception`, which knows the families a user can cause (kdcache's typed errors,
operating-system errors such as a full disk or a read-only mount, damaged archives, Ctrl-C) and
gives each one line that says what to do. Anything else is a bug in kdcache: by default it is still
one line (the exception's type and message, and how to report it); with ``-v`` the traceback is
shown instead, for the report.

The library's messages name settings as the Python API spells them, in backquotes (```data_dir```);
:func:`in_flags` is the one place that turns those names into the command's flags (``--data-dir``).
"""

from __future__ import annotations

import errno
import re
import zipfile

import click

from kdcache.errors import KdcacheError

EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for a Ctrl-C'd command


class Interrupted(click.ClickException):
    """Ctrl-C (SIGINT): one line and exit status 130 instead of click's "Aborted!" and 1."""

    exit_code = EXIT_INTERRUPTED

    def __init__(self) -> None:
        super().__init__(
            "interrupted; finished work is kept (a cache resumes when `extract` is re-run, a "
            "training run with `train --resume`)"
        )


_SETTING = re.compile(r"`([a-z][a-z0-9_]*)`")


def _flag(param: click.Parameter) -> str | None:
    if not isinstance(param, click.Option):
        return None
    long = [o for o in param.opts if o.startswith("--")]
    return max(long, key=len) if long else None


def in_flags(message: str, command: click.Command | None) -> str:
    """``message`` with each backquoted setting that ``command`` takes as an option written as
    its flag: ```topk``` becomes ``--topk``. Settings the command has no flag for stay as they
    are (the library's spelling, still backquoted)."""
    if command is None:
        return message
    flags = {p.name: flag for p in command.params if p.name and (flag := _flag(p)) is not None}
    return _SETTING.sub(lambda m: flags.get(m.group(1), m.group(0)), message)


def _where(exc: OSError) -> str:
    return f" ({exc.filename})" if exc.filename else ""


def os_error_message(exc: OSError) -> str | None:
    """One line for an operating-system error a user can fix; None for those that look like bugs."""
    where, code = _where(exc), exc.errno
    if code in (errno.ENOSPC, errno.EDQUOT):
        return (
            f"no space left on the device{where}: free some space (or choose another location) "
            "and re-run; kdcache writes files whole or not at all, so finished blocks and "
            "checkpoints are kept and nothing partial is trusted"
        )
    if code == errno.EROFS:
        return f"read-only file system{where}: choose a writable location"
    if isinstance(exc, PermissionError):
        return f"permission denied{where}: check the file's owner and mode, or choose another path"
    if isinstance(exc, FileExistsError):
        return f"already exists and is in the way{where}: choose another path"
    if isinstance(exc, IsADirectoryError):
        return f"expected a file but found a directory{where}"
    if isinstance(exc, NotADirectoryError):
        return f"expected a directory but found a file{where}"
    if isinstance(exc, FileNotFoundError):
        return f"no such file or directory{where}"
    if code in (errno.EIO, errno.ENAMETOOLONG, errno.EMFILE, errno.ENFILE, errno.ENOMEM):
        return f"{exc.strerror or exc}{where}"
    return None


def to_click_exception(
    exc: BaseException, *, debug: bool, command: click.Command | None = None
) -> click.ClickException | None:
    """The one-line error for ``exc``; None means re-raise it (click's own, or ``-v``'s bugs).
    ``command`` is the command that raised it, whose flags the library's setting names become."""
    if isinstance(exc, click.exceptions.ClickException | click.exceptions.Exit):
        return None
    if isinstance(exc, click.exceptions.Abort | KeyboardInterrupt):
        return Interrupted()
    if isinstance(exc, KdcacheError):
        return click.ClickException(in_flags(str(exc), command))
    if isinstance(exc, zipfile.BadZipFile | zipfile.LargeZipFile):
        return click.ClickException(
            f"a .zip cache archive is damaged or truncated ({exc}): fetch or `kdcache pack` it "
            "again"
        )
    if isinstance(exc, MemoryError):
        return click.ClickException(
            "out of memory: the requested sizes do not fit this machine (smaller --chunk-rows, "
            "--batch-size or --workers)"
        )
    if isinstance(exc, OSError):
        message = os_error_message(exc)
        if message is not None:
            return click.ClickException(message)
    if debug or not isinstance(exc, Exception):
        return None  # -v asked for the traceback; SystemExit and friends pass through
    return click.ClickException(
        f"unexpected {type(exc).__name__}: {exc}. This is a bug in kdcache: please report it with "
        "the command line and the traceback that `kdcache -v ...` prints"
    )
