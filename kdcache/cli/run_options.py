"""The options of ``kdcache train`` that say how the run trains, runs and writes.

Named as their :class:`~kdcache.training.config.TrainConfig` fields, like every option of
:mod:`kdcache.cli.train_options`, which lists these groups in the command's --help order.
"""

from __future__ import annotations

import click

from kdcache.cli._common import (
    ListOf,
    Option,
    choice_option,
    int_option,
    loader_options,
    no_progress_option,
)


def _preset(field: str) -> str:
    """A protocol preset's value of ``field`` for --help, e.g. ``cifar 240, imagenet 100``."""
    from kdcache.training.config import PROTOCOLS

    return ", ".join(f"{name} {getattr(p, field):g}" for name, p in PROTOCOLS.items())


def float_option(flag: str, default: float | None, help: str) -> Option:
    return click.option(
        flag, type=float, default=default, show_default=default is not None, help=help
    )


OPTIMISER: list[Option] = [
    choice_option(
        "--protocol", ["cifar", "imagenet"], help="Training recipe preset (default: by dataset)."
    ),
    int_option(
        "--epochs",
        1,
        1_000_000,
        help=f"Training epochs [default: the protocol's: {_preset('epochs')}]; lr milestones and "
        "warm-up scale with it. With --resume, a larger value extends a finished run.",
    ),
    click.option(
        "--lr",
        type=ListOf(float),
        default=None,
        help=
        f"Initial learning rate [default (SGD): {_preset('lr')}; cifar MobileNet/ShuffleNet "
        "students 0.01]; --sched step: x0.1 at 62.5/75/87.5% of the run (cifar) or 30/60/90% "
        "(imagenet). Required with --opt adamw. A comma list trains a student array.",
    ),
    float_option("--momentum", 0.9, "SGD momentum (not AdamW's)."),
    float_option(
        "--weight-decay",
        None,
        f"Weight decay [default (SGD): {_preset('weight_decay')}]; required with --opt adamw "
        "(decoupled, not on biases and norm layers).",
    ),
    choice_option(
        "--opt",
        ["sgd", "adamw"],
        default="sgd",
        help="Optimiser (timm's create_optimizer_v2): sgd, the papers' (classical momentum, "
        "weight decay on all parameters), or adamw.",
    ),
    choice_option(
        "--sched",
        ["step", "cosine"],
        default="step",
        help="lr schedule (timm's MultiStepLRScheduler / CosineLRScheduler, set every update): "
        "step, the papers' (x0.1 at the protocol's milestones), or cosine to --min-lr.",
    ),
    float_option(
        "--lr-warmup-epochs",
        0.0,
        "Linear lr warm-up from 1e-5, in epochs (per update). Not --warmup-epochs, which warms "
        "up the distillation term.",
    ),
    float_option("--min-lr", 0.0, "--sched cosine: the final lr."),
    float_option("--label-smoothing", 0.0, "Label smoothing of the cross-entropy term."),
    click.option(
        "--model-ema",
        is_flag=True,
        help="Keep an EMA of the student's weights (timm's ModelEmaV3), evaluated beside it and "
        "saved as model_ema in the checkpoints. Not --teacher-ema (a live teacher's EMA weights).",
    ),
    float_option("--model-ema-decay", 0.9998, "Decay of --model-ema per update."),
]

RUNTIME: list[Option] = [
    *loader_options(None, f"Global batch size [default: {_preset('batch_size')}]."),
    click.option("--amp/--no-amp", default=True, show_default=True, help="bf16 autocast on CUDA."),
    click.option(
        "--compile",
        is_flag=True,
        help="torch.compile the whole step (forward, loss, backward); the first steps compile.",
    ),
    click.option(
        "--stream",
        type=click.Choice(["auto", "host", "device"]),
        default="auto",
        show_default=True,
        help="Where the views are made: device (the images and a dense cache's logits held on "
        "--device, views cut by batched tensor ops), host (--workers DataLoader processes, any "
        "recipe), auto (device where the data and recipe allow). Same batches either way.",
    ),
    click.option("--channels-last/--no-channels-last", default=True, show_default=True),
]

OUTPUT: list[Option] = [
    click.option("--out", default=None, help="Run directory."),
    click.option("--resume", is_flag=True, help="Continue the run in --out."),
    click.option("--force", is_flag=True, help="Replace the run in --out."),
    click.option(
        "--time-limit",
        type=click.FloatRange(min=0, min_open=True),
        default=None,
        metavar="SECONDS",
        help="Start no epoch that would end past this budget (estimated from the last one): the "
        "run stops cleanly, says it is unfinished, and --resume goes on.",
    ),
    click.option(
        "--eval-every",
        default=1,
        show_default=True,
        type=int,
        help="Evaluate every N epochs and after the last; 0: never (benchmarks).",
    ),
    int_option(
        "--checkpoint-every",
        0,
        None,
        default=0,
        help="Also write last.pt every N optimiser steps inside an epoch (long epochs: a crash "
        "loses minutes); --resume continues from the step. 0: at the end of each epoch only.",
    ),
    click.option(
        "--tensorboard",
        is_flag=True,
        help="Also log every step's loss and lr and every epoch's metrics to OUT/tensorboard "
        "(needs pip install 'kdcache[tensorboard]').",
    ),
    no_progress_option(
        "No progress bars or lines (the schedule and epoch summaries are still printed)."
    ),
]
