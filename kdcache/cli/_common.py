"""Helpers shared by the CLI commands."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import click

from kdcache.errors import KdcacheError


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn library errors meant for the user into a clean ``Error: ...`` and exit status 1."""
    try:
        yield
    except KdcacheError as exc:
        raise click.ClickException(str(exc)) from exc
