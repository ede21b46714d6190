"""The options of ``kdcache train``, declared in groups.

Every option whose value reaches the run is named as its :class:`~kdcache.training.config.
TrainConfig` field (``--batch-size`` is ``batch_size``), so the command reads flags and a YAML
file into the config in one loop (:func:`kdcache.cli.train.train_settings`) and a new setting is
one option here plus its field. The few options that are the command's own (not settings a YAML
file may give) are listed in :data:`COMMAND_ONLY`. Where the teacher, the data, the student and
the loss come from is declared here; how the run trains, runs and writes, in
:mod:`kdcache.cli.run_options`.
"""

from __future__ import annotations

import click

from kdcache.cache import bounds
from kdcache.cli._common import (
    ListOf,
    Option,
    choice_option,
    data_dir_option,
    int_option,
    preprocessing_option,
    recipe_option,
    remote_cache_dir_option,
    storage_timeout_option,
    teacher_weights_option,
)
from kdcache.cli.run_options import OPTIMISER, OUTPUT, RUNTIME, float_option

# Options read by the command itself, not TrainConfig fields a YAML file may set.
COMMAND_ONLY = frozenset(
    {"config_file", "sweep", "loss_params", "resume", "force", "no_progress"}
)
ARRAY_HELP = " A comma list (and --sweep) trains a student array: one run per combination."


CONFIG: list[Option] = [
    click.option(
        "--config",
        "config_file",
        type=click.Path(dir_okay=False),
        default=None,
        help="YAML file of option: value; flags given on the command line override it.",
    ),
    click.option(
        "--sweep",
        type=click.Path(dir_okay=False),
        default=None,
        help="YAML list of per-student overrides (option: value, optional name:): a student "
        "array over one stream, one run folder each under --out (docs/training.md).",
    ),
]

TEACHER: list[Option] = [
    click.option("--cache", default=None, help="Teacher-logit cache (directory, .zip or URL)."),
    remote_cache_dir_option,
    storage_timeout_option,
    click.option(
        "--teacher", default=None, help="Online KD: live teacher architecture instead of a cache."
    ),
    teacher_weights_option(
        "--teacher-weights",
        "Online KD: the live teacher's weights (a state dict or a teacher checkpoint).",
    ),
    click.option(
        "--teacher-ema", is_flag=True, help="Online: load the teacher checkpoint's EMA weights."
    ),
    int_option(
        "--teacher-topk",
        1,
        None,
        metavar="K",
        help="Online: keep only the live teacher's top K logits per row, exactly as a top-K "
        "cache (`kdcache extract --topk K`) stores them: the online twin of training from it.",
    ),
    preprocessing_option(
        "--teacher-preprocessing",
        "Online: how the live teacher converts the views (a cache records its own)",
    ),
]

DATA: list[Option] = [
    click.option("--dataset", default=None, help="Without --cache: the dataset to train on."),
    click.option("--split", default=None, help="Without --cache: training split (default train)."),
    data_dir_option(),
    recipe_option("Without --cache: "),
    int_option(
        "--aug-seed",
        0,
        bounds.MAX_SEED,
        default=0,
        help="Without --cache: the augmentation seed of the views (a cache records its own).",
    ),
    int_option(
        "--num-views", 1, bounds.MAX_VIEWS, default=1, help="Without --cache: views per sample."
    ),
    click.option("--views", default=None, help="Train on a subset of the cache's views, e.g. 0,1."),
    int_option("--max-samples", 1, bounds.MAX_SAMPLES, help="Train on the first N samples only."),
    choice_option(
        "--verify-replay",
        ["all", "sample", "off"],
        default="sample",
        help="Check regenerated images against the cache's input hashes.",
    ),
    int_option("--window-blocks", 1, 4096, default=4, help="Cache blocks shuffled together."),
    int_option(
        "--block-rows",
        1,
        bounds.MAX_CHUNK_ROWS,
        help="Without --cache: samples per shuffling block (match a cache's chunk rows to "
        "reproduce its order).",
    ),
]

STUDENT: list[Option] = [
    click.option(
        "--student",
        default=None,
        type=ListOf(str),
        help="Student architecture: a zoo name (kdcache models), timm:NAME, or file.py:factory."
        + ARRAY_HELP,
    ),
    preprocessing_option("--student-preprocessing", "How the student converts the views"),
    click.option(
        "--seed",
        default=0,
        show_default=True,
        type=ListOf(click.IntRange(0, bounds.MAX_SEED)),
        help="The run's seed (student init, view choice, order); not the cache's --aug-seed."
        + ARRAY_HELP,
    ),
]

LOSS: list[Option] = [
    click.option(
        "--loss",
        default="ce",
        show_default=True,
        type=ListOf(str),
        help="ce (labels only), kd, dkd, rld or ldrld (kdcache losses)." + ARRAY_HELP,
    ),
    click.option(
        "--loss-param",
        "loss_params",
        multiple=True,
        metavar="NAME=VALUE",
        help="Loss hyper-parameter, repeatable (e.g. temperature=4, k=7, alpha=10.5).",
    ),
    click.option(
        "--sparse-approx",
        is_flag=True,
        default=False,
        help="From a sparse (top-K) cache, train dkd, rld or ldrld through their named "
        "approximation (docs/losses.md); kd is exact from sparse caches without it.",
    ),
    float_option(
        "--warmup-epochs",
        None,
        "Linear warm-up of the distillation term, in epochs [default: DKD/RLD 20 of 240 "
        "(cifar) or 1 of 100 (imagenet), scaled with --epochs; KD/LDRLD 0].",
    ),
    float_option(
        "--ce-weight",
        None,
        "Weight of the cross-entropy term [default: the loss's: KD 0.1, others 1].",
    ),
    float_option(
        "--distill-weight",
        None,
        "Outer weight of the distillation term [default: the loss's: KD 0.9, others 1].",
    ),
]

# In --help order.
TRAIN_OPTIONS: tuple[list[Option], ...] = (
    CONFIG,
    TEACHER,
    DATA,
    STUDENT,
    LOSS,
    OPTIMISER,
    RUNTIME,
    OUTPUT,
)
