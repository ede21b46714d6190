"""``kdcache train`` and ``kdcache eval``: parse options (and a YAML file), call the library."""

from __future__ import annotations

from typing import Any

import click

from kdcache.cache import bounds
from kdcache.cli._common import remote_cache_dir_option, storage_timeout_option, user_errors


def _parse_views(value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        return tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError as exc:
        raise click.BadParameter(f"expected comma-separated view numbers, got {value!r}") from exc


def _parse_loss_params(pairs: tuple[str, ...]) -> dict[str, Any]:
    import yaml

    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"--loss-param takes NAME=VALUE, got {pair!r}")
        params[key.strip().replace("-", "_")] = yaml.safe_load(raw)  # 4 -> int, 0.5 -> float ...
    return params


def _preset(field: str) -> str:
    """A protocol preset's value of ``field`` for --help, e.g. ``cifar 240, imagenet 100``."""
    from kdcache.training.config import PROTOCOLS

    return ", ".join(f"{name} {getattr(p, field):g}" for name, p in PROTOCOLS.items())


# option name -> TrainConfig field, for the settings a YAML file may also give.
_FIELDS = {
    "cache": "cache",
    "teacher": "teacher",
    "teacher_weights": "teacher_weights",
    "teacher_ema": "teacher_ema",
    "teacher_topk": "teacher_topk",
    "teacher_preprocessing": "teacher_preprocessing",
    "student_preprocessing": "student_preprocessing",
    "dataset": "dataset",
    "split": "split",
    "recipe": "recipe",
    "aug_seed": "aug_seed",
    "num_views": "num_views",
    "data_dir": "data_dir",
    "student": "student",
    "loss": "loss",
    "epochs": "epochs",
    "batch_size": "batch_size",
    "lr": "lr",
    "momentum": "momentum",
    "weight_decay": "weight_decay",
    "warmup_epochs": "warmup_epochs",
    "opt": "opt",
    "sched": "sched",
    "lr_warmup_epochs": "lr_warmup_epochs",
    "min_lr": "min_lr",
    "label_smoothing": "label_smoothing",
    "model_ema": "model_ema",
    "model_ema_decay": "model_ema_decay",
    "ce_weight": "ce_weight",
    "distill_weight": "distill_weight",
    "seed": "seed",
    "workers": "workers",
    "device": "device",
    "protocol": "protocol",
    "out": "out",
    "verify_replay": "verify_replay",
    "sparse_approx": "sparse_approx",
    "max_samples": "max_samples",
    "remote_cache_dir": "remote_cache_dir",
    "window_blocks": "window_blocks",
    "amp": "amp",
    "compile": "compile",
    "block_rows": "block_rows",
    "channels_last": "channels_last",
    "eval_every": "eval_every",
    "tensorboard": "tensorboard",
    "checkpoint_every": "checkpoint_every",
}


@click.command("train")
@remote_cache_dir_option
@storage_timeout_option
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="YAML file of option: value; flags given on the command line override it.",
)
@click.option("--cache", default=None, help="Teacher-logit cache (directory, .zip or URL).")
@click.option(
    "--teacher", default=None, help="Online KD: live teacher architecture instead of a cache."
)
@click.option(
    "--teacher-weights",
    type=click.Path(dir_okay=False),
    default=None,
    help="Online KD: the live teacher's weights (a state dict or a teacher checkpoint).",
)
@click.option(
    "--teacher-ema", is_flag=True, help="Online: load the teacher checkpoint's EMA weights."
)
@click.option(
    "--teacher-topk",
    type=click.IntRange(min=1),
    default=None,
    metavar="K",
    help="Online: keep only the live teacher's top K logits per row, exactly as a top-K cache "
    "(`kdcache extract --topk K`) stores them: the online twin of training from that cache.",
)
@click.option(
    "--teacher-preprocessing",
    default="auto",
    show_default=True,
    help="Online: how the live teacher converts the views (a cache records its own): "
    + "auto (default: the model's timm pretrained_cfg, else the dataset's), dataset, "
    "and/or overrides, e.g. 'dataset,mean=0.5/0.5/0.5,std=0.5/0.5/0.5,size=224,"
    "interpolation=bicubic' (docs/training.md).",
)
@click.option(
    "--student-preprocessing",
    default="auto",
    show_default=True,
    help="How the student converts the views: "
    + "auto (default: the model's timm pretrained_cfg, else the dataset's), dataset, "
    "and/or overrides, e.g. 'dataset,mean=0.5/0.5/0.5,std=0.5/0.5/0.5,size=224,"
    "interpolation=bicubic' (docs/training.md).",
)
@click.option("--dataset", default=None, help="Without --cache: the dataset to train on.")
@click.option("--split", default=None, help="Without --cache: training split (default train).")
@click.option(
    "--recipe",
    default="cifar",
    show_default=True,
    help="Without --cache: augmentation recipe (as for extract, e.g. cifar+mixup).",
)
@click.option(
    "--aug-seed",
    default=0,
    show_default=True,
    type=click.IntRange(0, bounds.MAX_SEED),
    help="Without --cache: view seed.",
)
@click.option(
    "--num-views",
    default=1,
    show_default=True,
    type=click.IntRange(1, bounds.MAX_VIEWS),
    help="Without --cache: views per sample.",
)
@click.option(
    "--data-dir",
    envvar="KDCACHE_DATA_DIR",
    default=None,
    help="Dataset root [env KDCACHE_DATA_DIR].",
)
@click.option(
    "--student",
    default=None,
    help="Student architecture: a zoo name (kdcache models), timm:NAME, or file.py:factory.",
)
@click.option(
    "--loss",
    default="ce",
    show_default=True,
    help="ce (labels only), kd, dkd, rld or ldrld (kdcache losses).",
)
@click.option(
    "--loss-param",
    "loss_params",
    multiple=True,
    metavar="NAME=VALUE",
    help="Loss hyper-parameter, repeatable (e.g. temperature=4, k=7, alpha=10.5).",
)
@click.option(
    "--sparse-approx",
    is_flag=True,
    default=False,
    help="From a sparse (top-K) cache, train dkd, rld or ldrld through their named approximation "
    "(docs/losses.md); kd is exact from sparse caches without it.",
)
@click.option("--views", default=None, help="Train on a subset of the cache's views, e.g. 0,1.")
@click.option(
    "--max-samples",
    type=click.IntRange(1, bounds.MAX_SAMPLES),
    default=None,
    help="Train on the first N samples only.",
)
@click.option(
    "--protocol",
    type=click.Choice(["cifar", "imagenet"]),
    default=None,
    help="Training recipe preset (default: by dataset).",
)
@click.option(
    "--epochs",
    type=click.IntRange(1, 1_000_000),
    default=None,
    help=f"Training epochs [default: the protocol's: {_preset('epochs')}]; lr milestones and "
    "warm-up scale with it. With --resume, a larger value extends a finished run.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1, 1 << 20),
    default=None,
    help=f"Global batch size [default: {_preset('batch_size')}].",
)
@click.option(
    "--lr",
    type=float,
    default=None,
    help=f"Initial learning rate [default (SGD): {_preset('lr')}; cifar MobileNet/ShuffleNet "
    "students 0.01]; --sched step: x0.1 at 62.5/75/87.5% of the run (cifar) or 30/60/90% "
    "(imagenet). Required with --opt adamw.",
)
@click.option(
    "--momentum", type=float, default=0.9, show_default=True, help="SGD momentum (not AdamW's)."
)
@click.option(
    "--weight-decay",
    type=float,
    default=None,
    help=f"Weight decay [default (SGD): {_preset('weight_decay')}]; required with --opt adamw "
    "(decoupled, not on biases and norm layers).",
)
@click.option(
    "--opt",
    type=click.Choice(["sgd", "adamw"]),
    default="sgd",
    show_default=True,
    help="Optimiser (timm's create_optimizer_v2): sgd, the papers' (classical momentum, weight "
    "decay on all parameters), or adamw.",
)
@click.option(
    "--sched",
    type=click.Choice(["step", "cosine"]),
    default="step",
    show_default=True,
    help="lr schedule (timm's MultiStepLRScheduler / CosineLRScheduler, set every update): "
    "step, the papers' (x0.1 at the protocol's milestones), or cosine to --min-lr.",
)
@click.option(
    "--lr-warmup-epochs",
    type=float,
    default=0.0,
    show_default=True,
    help="Linear lr warm-up from 1e-5, in epochs (per update). Not --warmup-epochs, which warms "
    "up the distillation term.",
)
@click.option(
    "--min-lr", type=float, default=0.0, show_default=True, help="--sched cosine: the final lr."
)
@click.option(
    "--label-smoothing",
    type=float,
    default=0.0,
    show_default=True,
    help="Label smoothing of the cross-entropy term.",
)
@click.option(
    "--model-ema",
    is_flag=True,
    help="Keep an EMA of the student's weights (timm's ModelEmaV3), evaluated beside it and "
    "saved as model_ema in the checkpoints. Not --teacher-ema (a live teacher's EMA weights).",
)
@click.option(
    "--model-ema-decay",
    type=float,
    default=0.9998,
    show_default=True,
    help="Decay of --model-ema per update.",
)
@click.option(
    "--warmup-epochs",
    type=float,
    default=None,
    help="Linear warm-up of the distillation term, in epochs [default: DKD/RLD 20 of 240 "
    "(cifar) or 1 of 100 (imagenet), scaled with --epochs; KD/LDRLD 0].",
)
@click.option(
    "--ce-weight",
    type=float,
    default=None,
    help="Weight of the cross-entropy term [default: the loss's: KD 0.1, others 1].",
)
@click.option(
    "--distill-weight",
    type=float,
    default=None,
    help="Outer weight of the distillation term [default: the loss's: KD 0.9, others 1].",
)
@click.option(
    "--seed",
    default=0,
    show_default=True,
    type=click.IntRange(0, bounds.MAX_SEED),
    help="Student seed (init, view choice, order).",
)
@click.option(
    "--workers",
    default=2,
    show_default=True,
    type=click.IntRange(0, 1024),
    help="Data loader worker processes.",
)
@click.option(
    "--device",
    default="auto",
    show_default=True,
    help="auto (CUDA when present), cpu, cuda or cuda:N.",
)
@click.option("--amp/--no-amp", default=True, show_default=True, help="bf16 autocast on CUDA.")
@click.option("--compile", is_flag=True, help="torch.compile the student.")
@click.option("--channels-last/--no-channels-last", default=True, show_default=True)
@click.option(
    "--verify-replay",
    type=click.Choice(["all", "sample", "off"]),
    default="sample",
    show_default=True,
    help="Check regenerated images against the cache's input hashes.",
)
@click.option(
    "--window-blocks",
    default=4,
    show_default=True,
    type=click.IntRange(1, 4096),
    help="Cache blocks shuffled together.",
)
@click.option(
    "--block-rows",
    type=click.IntRange(1, bounds.MAX_CHUNK_ROWS),
    default=None,
    help="Without --cache: samples per shuffling block (match a cache's chunk rows to "
    "reproduce its order).",
)
@click.option(
    "--eval-every",
    default=1,
    show_default=True,
    type=int,
    help="Evaluate every N epochs and after the last; 0: never (benchmarks).",
)
@click.option(
    "--tensorboard",
    is_flag=True,
    help="Also log every step's loss and lr and every epoch's metrics to OUT/tensorboard "
    "(needs pip install 'kdcache[tensorboard]').",
)
@click.option(
    "--checkpoint-every",
    default=0,
    show_default=True,
    type=click.IntRange(0, None),
    help="Also write last.pt every N optimiser steps inside an epoch (long epochs: a crash loses "
    "minutes); --resume continues from the step. 0: at the end of each epoch only.",
)
@click.option("--out", default=None, help="Run directory.")
@click.option("--resume", is_flag=True, help="Continue the run in --out.")
@click.option("--force", is_flag=True, help="Replace the run in --out.")
@click.option(
    "--no-progress",
    is_flag=True,
    help="No progress bars or lines (the schedule and epoch summaries are still printed).",
)
@click.pass_context
def train_command(
    ctx: click.Context,
    config_file: str | None,
    loss_params: tuple[str, ...],
    views: str | None,
    resume: bool,
    force: bool,
    no_progress: bool,
    **options: Any,
) -> None:
    """Train a student from a cache (or a live teacher, or labels alone)."""
    from click.core import ParameterSource
    from tqdm.contrib.logging import logging_redirect_tqdm

    from kdcache.cli.progress import TrainProgress
    from kdcache.errors import ConfigError
    from kdcache.training.config import TrainConfig, load_yaml_settings
    from kdcache.training.loop import run_train

    with user_errors():
        settings: dict[str, Any] = load_yaml_settings(config_file) if config_file else {}
        for name, value in options.items():
            given = ctx.get_parameter_source(name) in (
                ParameterSource.COMMANDLINE,
                ParameterSource.ENVIRONMENT,
            )
            if given or name not in settings:
                settings[_FIELDS[name]] = value
        yaml_params = settings.pop("loss_params", None) or {}
        if not isinstance(yaml_params, dict):
            raise ConfigError(f"loss_params in {config_file} must be a mapping of name: value")
        settings["loss_params"] = {**yaml_params, **_parse_loss_params(loss_params)}
        yaml_views = settings.pop("views", None)
        settings["views"] = _parse_views(views) if views is not None else yaml_views
        for required in ("student", "out"):
            if not settings.get(required):
                raise click.UsageError(
                    f"--{required} is required (on the command line or in --config)"
                )
        config = TrainConfig.from_dict({**settings, "resume": resume, "force": force})
        progress = TrainProgress(bars=not no_progress)
        try:
            with logging_redirect_tqdm():  # -v log lines print above the bars, not into them
                result = run_train(config, progress=progress)
        finally:
            progress.close()
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
@click.option(
    "--data-dir",
    envvar="KDCACHE_DATA_DIR",
    default=None,
    help="Dataset root [env KDCACHE_DATA_DIR; default: the run's data folder].",
)
@click.option("--split", default=None, help="Default: the dataset's evaluation split.")
@click.option("--batch-size", default=256, show_default=True, type=click.IntRange(1, 1 << 20))
@click.option("--workers", default=2, show_default=True, type=click.IntRange(0, 1024))
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
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
