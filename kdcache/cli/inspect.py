"""``kdcache info`` and ``kdcache verify``: read-only views of a cache."""

from __future__ import annotations

import json
import sys

import click

from kdcache.cli._common import (
    data_dir_option,
    int_option,
    remote_cache_dir_option,
    storage_timeout_option,
    teacher_weights_option,
    user_errors,
)
from kdcache.cli.errors import in_flags


@click.command("info")
@remote_cache_dir_option
@storage_timeout_option
@click.argument("cache")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON on stdout.")
def info_command(cache: str, as_json: bool, remote_cache_dir: str | None) -> None:
    """Show what CACHE is: teacher, dataset, recipe, storage, state, teacher accuracy."""
    from kdcache.cache.reader import open_cache
    from kdcache.summary import format_summary, summarize

    with user_errors():
        summary = summarize(open_cache(cache, cache_dir=remote_cache_dir))
    click.echo(json.dumps(summary, indent=2) if as_json else format_summary(summary))


@click.command("verify")
@remote_cache_dir_option
@storage_timeout_option
@click.argument("cache")
@data_dir_option(", to check the data fingerprint and replay views")
@int_option(
    "--replay",
    0,
    None,
    default=64,
    help="Views to regenerate and compare with the recorded input hashes (0: skip).",
)
@teacher_weights_option(
    "--teacher-weights", "Also re-run the teacher on the replayed views and compare logits."
)
def verify_command(
    cache: str,
    data_dir: str | None,
    replay: int,
    teacher_weights: str | None,
    remote_cache_dir: str | None,
) -> None:
    """Prove CACHE is complete and intact and that its views replay here. Exit 1 if not."""
    from kdcache.verify import verify_cache

    # Unused: verify reads a remote cache at its origin, never through local copies. Accepted so
    # that one set of flags serves every command.
    del remote_cache_dir

    with user_errors():
        report = verify_cache(
            cache, data_dir=data_dir, replay=replay, teacher_weights=teacher_weights
        )
    command = click.get_current_context().command
    for check in report.checks:
        status = "skipped" if check.skipped else "ok" if check.ok else "FAIL"
        click.echo(f"[{status}] {check.name}: {in_flags(check.detail, command)}")
    if not report.ok:
        click.echo(f"verify: {cache} FAILED", err=True)
        sys.exit(1)
    skipped = f" ({', '.join(report.skipped)} skipped)" if report.skipped else ""
    click.echo(f"verify: {cache} OK{skipped}")
