"""``kdcache train``: read flags (and a YAML file) into a TrainConfig, run it, print the result.

The options are declared in groups in :mod:`kdcache.cli.train_options`, each named as its
TrainConfig field; :func:`train_config` is the one place that turns them into a config.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from kdcache.cli._common import user_errors, with_options
from kdcache.cli.train_options import COMMAND_ONLY, TRAIN_OPTIONS

if TYPE_CHECKING:
    from kdcache.training.array import ArrayResult, StudentArray
    from kdcache.training.config import TrainConfig
    from kdcache.training.loop import TrainResult

REQUIRED = ("student", "out")


def _parse_loss_params(pairs: tuple[str, ...]) -> dict[str, Any]:
    import yaml

    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"--loss-param takes NAME=VALUE, got {pair!r}")
        params[key.strip().replace("-", "_")] = yaml.safe_load(raw)  # 4 -> int, 0.5 -> float ...
    return params


def _given(ctx: click.Context, name: str) -> bool:
    """Whether the user set ``name`` (flag or environment), not click's default."""
    from click.core import ParameterSource

    source = ctx.get_parameter_source(name)
    return source in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)


def train_settings(ctx: click.Context, options: dict[str, Any]) -> dict[str, Any]:
    """The run's settings: the --config file's, overridden by the flags the user gave; the
    defaults of the flags fill what neither gives. Keys are TrainConfig fields."""
    from kdcache.errors import ConfigError
    from kdcache.training.config import load_yaml_settings

    config_file = options["config_file"]
    settings: dict[str, Any] = load_yaml_settings(config_file) if config_file else {}
    for name, value in options.items():
        if name not in COMMAND_ONLY and (_given(ctx, name) or name not in settings):
            settings[name] = value
    yaml_params = settings.pop("loss_params", None) or {}
    if not isinstance(yaml_params, dict):
        raise ConfigError(f"loss_params in {config_file} must be a mapping of name: value")
    settings["loss_params"] = {**yaml_params, **_parse_loss_params(options["loss_params"])}
    return settings


def _sweep(path: str | None) -> list[dict[str, Any]]:
    """The --sweep file's entries (per-student overrides, option names as in --config)."""
    from kdcache.errors import ConfigError
    from kdcache.training.config import load_yaml_list

    if path is None:
        return []
    entries = load_yaml_list(path)
    if not entries:
        raise ConfigError(f"--sweep {path} lists no student")
    return entries


def train_config(ctx: click.Context, options: dict[str, Any]) -> TrainConfig | StudentArray:
    """The TrainConfig of one ``kdcache train`` command line (the one reading of its options),
    or the student array its lists (``--loss ce,kd``) and ``--sweep`` describe."""
    from kdcache.training.array import LIST_FIELDS, expand_array
    from kdcache.training.config import TrainConfig

    settings = train_settings(ctx, options)
    for required in REQUIRED:
        if not settings.get(required):
            raise click.UsageError(f"--{required} is required (on the command line or in --config)")
    settings |= {"resume": options["resume"], "force": options["force"]}
    sweep = _sweep(options["sweep"])
    if sweep or any(isinstance(settings.get(k), list | tuple) for k in LIST_FIELDS):
        return expand_array(settings, sweep)
    return TrainConfig.from_dict(settings)


def _report(config: TrainConfig, result: TrainResult) -> None:
    if not result.finished:
        click.echo(f"stopped by --time-limit after epoch {result.epochs_done} of {result.epochs}: "
                   "unfinished (--resume goes on)")  # fmt: skip
    epochs = f"{result.epochs} epoch{'s' if result.epochs != 1 else ''}"
    if result.final_top1 is None or result.best_top1 is None or result.final_top5 is None:
        click.echo(f"trained {config.student} for {epochs} (not evaluated)")
    else:
        click.echo(
            f"trained {config.student} for {epochs}: test top-1 {result.final_top1:.2f}% "
            f"(best {result.best_top1:.2f}%), top-5 {result.final_top5:.2f}%"
        )
    if result.cache_fingerprint:
        click.echo(f"cache fingerprint {result.cache_fingerprint[:16]}")
    click.echo(f"outputs in {result.out}")


def _report_array(result: ArrayResult) -> None:
    """Each student's top-1 and status, then each setting's mean +- std over its seeds."""
    from kdcache.training.array import write_array_table

    path = write_array_table(result)
    click.echo(f"\n{'student':<40} {'top-1':>7} {'best':>7}  status")
    for m in result.members:
        r = m.result
        status = "FAILED" if m.error else "finished"
        if r is not None and not r.finished:
            status = f"unfinished ({r.epochs_done} epochs)"
        top1 = f"{r.final_top1:.2f}" if r and r.final_top1 is not None else "-"
        best = f"{r.best_top1:.2f}" if r and r.best_top1 is not None else "-"
        click.echo(f"{m.name:<40} {top1:>7} {best:>7}  {status}")
    if any(row["evaluated"] > 1 for row in result.table):
        click.echo(f"\n{'setting':<40} {'seeds':>5} {'top-1 mean +- std':>18} {'best':>16}")
        for row in result.table:
            final = f"{row['final_top1_mean']:.2f} +- {row['final_top1_std']:.2f}"
            best = f"{row['best_top1_mean']:.2f} +- {row['best_top1_std']:.2f}"
            click.echo(f"{row['setting']:<40} {row['evaluated']:>5} {final:>18} {best:>16}")
    click.echo(f"array of {len(result.members)} students in {result.seconds:.1f} s: {path}")
    for m in result.failed:
        click.echo(f"Error: student {m.name} failed: {m.error}", err=True)
    if result.failed:
        raise SystemExit(1)


@click.command("train")
@with_options(*TRAIN_OPTIONS)
@click.pass_context
def train_command(ctx: click.Context, **options: Any) -> None:
    """Train a student from a cache (or a live teacher, or labels alone)."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    from kdcache.cli.progress import TrainProgress
    from kdcache.training.array import StudentArray, run_array
    from kdcache.training.loop import run_train

    with user_errors():
        config = train_config(ctx, options)
        progress = TrainProgress(bars=not options["no_progress"])
        try:
            with logging_redirect_tqdm():  # -v log lines print above the bars, not into them
                if isinstance(config, StudentArray):
                    array = run_array(config, progress=progress)
                else:
                    result = run_train(config, progress=progress)
        finally:
            progress.close()
    if isinstance(config, StudentArray):
        _report_array(array)
    else:
        _report(config, result)
