"""Helpers shared by the CLI commands."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import click

from kdcache.cache.remote import REMOTE_CACHE_ENV
from kdcache.cache.timeouts import (
    DEFAULT_STORAGE_TIMEOUT_S,
    MAX_STORAGE_TIMEOUT_S,
    STORAGE_TIMEOUT_ENV,
    parse_timeout,
)
from kdcache.cli.errors import in_flags
from kdcache.errors import ConfigError, KdcacheError

F = TypeVar("F", bound=Callable[..., Any])


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn library errors meant for the user into a clean ``Error: ...`` and exit status 1, the
    settings they name written as the running command's flags (:func:`~kdcache.cli.errors.
    in_flags`)."""
    try:
        yield
    except KdcacheError as exc:
        ctx = click.get_current_context(silent=True)
        command = ctx.command if ctx is not None else None
        raise click.ClickException(in_flags(str(exc), command)) from exc


@contextlib.contextmanager
def progress_bar(
    desc: str, *, disable: bool = False, unit: str = "img"
) -> Iterator[Callable[[int], None]]:
    """Yields the ``progress(n)`` callback for the library: a bar on stderr (plain lines when
    stderr is not a terminal), drawn from the first report on, never before arguments are checked.
    """
    from kdcache.cli.progress import CountProgress

    progress = CountProgress(desc, enabled=not disable, unit=unit)
    try:
        yield progress
    finally:
        progress.close()


def _set_for_this_command(ctx: click.Context, name: str, value: str) -> None:
    """Set ``os.environ[name]`` until the command ends, then restore what was there.

    Only for the storage timeout, which every fsspec filesystem made in any process (torchrun
    ranks, loader workers re-creating their clients after a fork) reads when it is built.
    Restoring it keeps a command run in-process (the Python API, tests) from leaking its option
    into the next one.
    """
    previous = os.environ.get(name)
    os.environ[name] = value

    def restore() -> None:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous

    ctx.call_on_close(restore)


def remote_cache_dir_option(command: F) -> F:
    """``--remote-cache-dir DIR``: where local copies of a remote cache's chunks are kept.

    The command gets it as its ``remote_cache_dir`` argument (None when not given) and passes it
    to the library as ``cache_dir``; the library falls back to $KDCACHE_REMOTE_CACHE_DIR, then the
    default (:func:`kdcache.cache.remote.local_cache_root`). Not read through click's ``envvar``:
    the library reads the variable itself, also for callers of the Python API.
    """
    return click.option(
        "--remote-cache-dir",
        metavar="DIR",
        default=None,
        help=f"Where local copies of remote (URL, s3://) cache chunks are kept; 'off' reads "
        f"remotely every time [env {REMOTE_CACHE_ENV}; default ~/.cache/kdcache/remote].",
    )(command)


def _set_storage_timeout(ctx: click.Context, param: click.Parameter, value: float | None) -> None:
    if value is not None:
        try:
            parse_timeout(value, source="--storage-timeout")  # FloatRange lets NaN through
        except ConfigError as exc:
            raise click.BadParameter(str(exc)) from exc
        _set_for_this_command(ctx, STORAGE_TIMEOUT_ENV, repr(value))


def storage_timeout_option(command: F) -> F:
    """``--storage-timeout SECONDS``: how long one object-store request may go unanswered."""
    return click.option(
        "--storage-timeout",
        metavar="SECONDS",
        type=click.FloatRange(min=0, max=MAX_STORAGE_TIMEOUT_S, min_open=True),
        expose_value=False,
        callback=_set_storage_timeout,
        help=f"Fail with a clear error when an object store (s3://, http(s)://) leaves a "
        f"request unanswered for SECONDS [env {STORAGE_TIMEOUT_ENV}; "
        f"default {DEFAULT_STORAGE_TIMEOUT_S:g}].",
    )(command)


# --- Option groups shared by extract, train, verify and eval -------------------------------------
# A group is a list of option decorators; ``with_options`` applies groups so that --help lists
# their options in the order written. Each shared option is declared once, here; a command that
# needs another default or a sentence of its own passes it, the rest of the help stays shared.

Option = Callable[[Any], Any]


def with_options(*groups: list[Option]) -> Callable[[F], F]:
    """Apply option groups to a command, first group's first option listed first in --help."""

    def apply(command: F) -> F:
        for group in reversed(groups):
            for option in reversed(group):
                command = option(command)
        return command

    return apply


def int_option(
    flag: str, low: int, high: int | None, *names: str, default: int | None = None, **extra: Any
) -> Option:
    """An integer option in ``low..high`` (``high`` None: unbounded); the default shown if any."""
    return click.option(
        flag,
        *names,
        type=click.IntRange(low, high),
        default=default,
        show_default=default is not None,
        **extra,
    )


def choice_option(
    flag: str, choices: list[str], *, default: str | None = None, help: str | None = None
) -> Option:
    """One of ``choices``; the default shown if any."""
    return click.option(
        flag,
        type=click.Choice(choices),
        default=default,
        show_default=default is not None,
        help=help,
    )


PREPROCESSING_HELP = (
    "auto (default: the model's timm pretrained_cfg, else the dataset's), dataset, and/or "
    "overrides, e.g. 'dataset,mean=0.5/0.5/0.5,std=0.5/0.5/0.5,size=224,interpolation=bicubic' "
    "(docs/training.md)."
)
RECIPE_HELP = (
    "Augmentation recipe (cifar, imagenet, randaugment, none), optionally mixed: +mixup, +cutmix "
    "or +mixup-cutmix (e.g. imagenet+mixup-cutmix)."
)


def preprocessing_option(flag: str, what: str) -> Option:
    """``--teacher-preprocessing`` / ``--student-preprocessing``: how a model converts the views."""
    return click.option(
        flag, default="auto", show_default=True, help=f"{what}: {PREPROCESSING_HELP}"
    )


def recipe_option(prefix: str = "") -> Option:
    return click.option("--recipe", default="cifar", show_default=True, help=prefix + RECIPE_HELP)


def data_dir_option(purpose: str = "", default_note: str = "") -> Option:
    """``--data-dir``: the dataset root, also read from $KDCACHE_DATA_DIR."""
    return click.option(
        "--data-dir",
        envvar="KDCACHE_DATA_DIR",
        default=None,
        help=f"Dataset root{purpose} [env KDCACHE_DATA_DIR{default_note}].",
    )


def batch_size_option(default: int | None = 256, help: str | None = None) -> Option:
    return int_option("--batch-size", 1, 1 << 20, default=default, help=help)


WORKERS_OPTION = int_option("--workers", 0, 1024, default=2, help="Data loader worker processes.")
DEVICE_OPTION = click.option(
    "--device",
    default="auto",
    show_default=True,
    help="auto (CUDA when present), cpu, cuda or cuda:N.",
)


def loader_options(batch_size: int | None = 256, batch_help: str | None = None) -> list[Option]:
    """--batch-size, --workers, --device: how a command feeds a model."""
    return [batch_size_option(batch_size, batch_help), WORKERS_OPTION, DEVICE_OPTION]


def no_progress_option(help: str = "No progress bar.") -> Option:
    return click.option("--no-progress", is_flag=True, help=help)


def teacher_weights_option(flag: str, help: str) -> Option:
    return click.option(flag, type=click.Path(dir_okay=False), default=None, help=help)


class ListOf(click.ParamType):
    """One value, or a comma list of them: a list makes a student array (``--loss ce,kd``)."""

    def __init__(self, inner: Any) -> None:
        self.inner = click.types.convert_type(inner)
        self.name = f"{self.inner.name}[,...]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value
        parts = [part.strip() for part in value.split(",")]
        if not all(parts):
            self.fail(f"{value!r} has an empty item: give NAME or NAME1,NAME2,...", param, ctx)
        values = tuple(self.inner.convert(part, param, ctx) for part in parts)
        if len(set(values)) != len(values):
            self.fail(f"{value!r} lists a value twice", param, ctx)
        return values[0] if len(values) == 1 else values
