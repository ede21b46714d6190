"""``kdcache pack`` and ``kdcache ls``: publish a cache as one file, see what a prefix holds."""

from __future__ import annotations

import json

import click

from kdcache.cli._common import (
    int_option,
    remote_cache_dir_option,
    storage_timeout_option,
    user_errors,
)


@click.command("pack")
@remote_cache_dir_option
@storage_timeout_option
@click.argument("cache")
@click.argument("out")
@click.option(
    "--allow-incomplete", is_flag=True, help="Pack a cache that is not complete (it cannot resume)."
)
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
def pack_command(
    cache: str, out: str, allow_incomplete: bool, force: bool, remote_cache_dir: str | None
) -> None:
    """Write CACHE (directory or URL) into the single file OUT.zip, which `info`, `verify` and
    `train` read like the directory. OUT is written to a temporary file and renamed when whole."""
    from kdcache.cache.listing import format_size
    from kdcache.cache.pack import pack_cache

    with user_errors():
        result = pack_cache(
            cache,
            out,
            allow_incomplete=allow_incomplete,
            force=force,
            cache_dir=remote_cache_dir,
        )
    state = "complete" if result.complete else "INCOMPLETE"
    click.echo(
        f"packed {cache} -> {result.out}: {result.members} objects, "
        f"{format_size(result.bytes)}, {state}, fingerprint {result.fingerprint[:16]}"
    )


@click.command("ls")
@storage_timeout_option
@click.argument("location")
@int_option("--depth", 0, 64, default=4, help="Directory levels to search below.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON on stdout.")
def ls_command(location: str, depth: int, as_json: bool) -> None:
    """List the caches at or under LOCATION (a directory or an s3://, gs://... prefix), one line
    each: location, teacher, dataset/split, views, storage, size, complete or not."""
    from kdcache.cache.listing import format_entries, list_caches

    with user_errors():
        entries = list_caches(location, max_depth=depth)
    if as_json:
        click.echo(json.dumps([e.to_dict() for e in entries], indent=2))
    elif entries:
        click.echo(format_entries(entries))
    else:
        click.echo(f"no kdcache caches under {location}", err=True)
