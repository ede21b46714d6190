"""``kdcache eval``: top-1 / top-5 of a checkpoint or of plain weights."""

from __future__ import annotations

import click

from kdcache.cli._common import data_dir_option, loader_options, user_errors, with_options


@click.command("eval")
@click.argument("weights", type=click.Path(dir_okay=False))
@click.option(
    "--model",
    "model_name",
    default=None,
    help="Architecture of plain weights (a state dict or a teacher's checkpoint); a kdcache "
    "checkpoint names its own.",
)
@click.option(
    "--dataset",
    default=None,
    help="Dataset of plain weights (default: the run.json beside WEIGHTS); a kdcache checkpoint "
    "names its own.",
)
@data_dir_option(default_note="; default: the run's data folder")
@click.option("--split", default=None, help="Default: the dataset's evaluation split.")
@with_options(loader_options(256))
def eval_command(
    weights: str,
    model_name: str | None,
    dataset: str | None,
    data_dir: str | None,
    split: str | None,
    batch_size: int,
    workers: int,
    device: str,
) -> None:
    """Top-1 / top-5 of WEIGHTS (a kdcache checkpoint, or plain weights with --model)."""
    from kdcache.training.evaluation import evaluate_checkpoint

    with user_errors():
        top1, top5, n = evaluate_checkpoint(
            weights,
            data_dir,
            split,
            batch_size,
            workers,
            device,
            model_name=model_name,
            dataset=dataset,
        )
    click.echo(f"{weights}: top-1 {top1:.2f}%  top-5 {top5:.2f}%  ({n} images)")
