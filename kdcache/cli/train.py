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


def train_config(ctx: click.Context, options: dict[str, Any]) -> TrainConfig:
    """The TrainConfig of one ``kdcache train`` command line (the one reading of its options)."""
    from kdcache.training.config import TrainConfig

    settings = train_settings(ctx, options)
    for required in REQUIRED:
        if not settings.get(required):
            raise click.UsageError(f"--{required} is required (on the command line or in --config)")
    return TrainConfig.from_dict(
        {**settings, "resume": options["resume"], "force": options["force"]}
    )


def _report(config: TrainConfig, result: TrainResult) -> None:
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


@click.command("train")
@with_options(*TRAIN_OPTIONS)
@click.pass_context
def train_command(ctx: click.Context, **options: Any) -> None:
    """Train a student from a cache (or a live teacher, or labels alone)."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    from kdcache.cli.progress import TrainProgress
    from kdcache.training.loop import run_train

    with user_errors():
        config = train_config(ctx, options)
        progress = TrainProgress(bars=not options["no_progress"])
        try:
            with logging_redirect_tqdm():  # -v log lines print above the bars, not into them
                result = run_train(config, progress=progress)
        finally:
            progress.close()
    _report(config, result)
