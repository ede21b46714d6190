"""Helpers shared by the CLI commands."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import click

from kdcache.errors import KdcacheError


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn library errors meant for the user into a clean ``Error: ...`` and exit status 1."""
    try:
        yield
    except KdcacheError as exc:
        raise click.ClickException(str(exc)) from exc


@contextlib.contextmanager
def progress_bar(
    desc: str, *, disable: bool = False, unit: str = "img"
) -> Iterator[Callable[[int], None]]:
    """A tqdm bar on stderr with throughput; yields the ``progress(n)`` callback for the library."""
    from tqdm import tqdm

    with tqdm(
        desc=desc, unit=unit, unit_scale=True, disable=disable, dynamic_ncols=True, mininterval=0.5
    ) as bar:
        yield bar.update
