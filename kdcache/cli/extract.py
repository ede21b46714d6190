"""``kdcache extract``: parse options, build an ExtractConfig, run it."""

from __future__ import annotations

from typing import Any

import click

from kdcache.cache import bounds
from kdcache.cli._common import (
    choice_option,
    data_dir_option,
    int_option,
    loader_options,
    no_progress_option,
    preprocessing_option,
    progress_bar,
    recipe_option,
    storage_timeout_option,
    teacher_weights_option,
    user_errors,
    with_options,
)


@click.command("extract")
@storage_timeout_option
@click.option(
    "--teacher",
    required=True,
    help="Teacher architecture (zoo name, timm name or file.py:factory).",
)
@teacher_weights_option(
    "--weights", "Teacher weights file (state dict, .safetensors, or a training checkpoint)."
)
@click.option(
    "--ema",
    is_flag=True,
    help="Load the checkpoint's EMA weights (timm state_dict_ema / model_ema), not its plain ones.",
)
@preprocessing_option(
    "--teacher-preprocessing", "How the teacher converts the uint8 views (recorded in the cache)"
)
@click.option("--dataset", required=True, help="cifar10, cifar100, imagefolder or digits.")
@data_dir_option()
@click.option("--split", default="train", show_default=True)
@recipe_option()
@click.option(
    "--exhaustive",
    is_flag=True,
    help="Enumerate the recipe's distinct views (cifar: 162) instead of sampling.",
)
@int_option(
    "--views",
    1,
    bounds.MAX_VIEWS,
    help="Augmented views per sample [default: 1; with --exhaustive, all distinct views].",
)
@int_option(
    "--seed",
    0,
    bounds.MAX_SEED,
    default=0,
    help="The cache's augmentation seed (recorded in the cache; a run's is `train --seed`).",
)
@click.option("--out", required=True, help="Cache location (directory).")
@choice_option(
    "--dtype",
    ["float16", "float32"],
    help="Dense logits' precision [default: float16]; not with --topk (sparse rows are always "
    "float32).",
)
@int_option(
    "--topk",
    1,
    None,
    help="Sparse mode: keep the top-K logits plus the exact normalisers at each stored "
    "temperature, the true-label logit and the row statistics (docs/cache-format.md).",
)
@click.option(
    "--sparse-temperature",
    "extra_temperatures",
    type=click.FloatRange(min=0, min_open=True, max=1e6),
    multiple=True,
    help="Sparse mode: also store the log-sum-exp at this temperature (repeatable); T = 1 and "
    "every registered loss's default temperature are always stored.",
)
@int_option("--chunk-rows", 1, bounds.MAX_CHUNK_ROWS, default=1024, help="Samples per chunk.")
@with_options(loader_options(256))
@click.option("--download", is_flag=True, help="Download the dataset if missing (needs internet).")
@no_progress_option()
def extract_command(exhaustive: bool, no_progress: bool, **options: Any) -> None:
    """Run TEACHER once over a dataset and write its logits into a zarr cache.

    Interrupted runs resume when re-run with the same settings; a cache of other settings at --out
    is never overwritten. Under torchrun each rank writes a disjoint set of chunks.
    """
    from kdcache.extract import ExtractConfig, run_extract

    # Every other option is named as its ExtractConfig field.
    with user_errors():
        config = ExtractConfig(**options, recipe_params={"exhaustive": True} if exhaustive else {})
        with progress_bar("extract", disable=no_progress) as bar:
            result = run_extract(config, progress=bar)
    if result.images:
        click.echo(
            f"wrote {result.blocks_written} blocks ({result.images} images) in "
            f"{result.seconds:.1f} s, {result.images_per_second:.0f} images/s"
        )
    else:
        click.echo("nothing to do: every block was already written")
    state = (
        "complete"
        if result.complete
        else "incomplete (other ranks still writing, or re-run to resume)"
    )
    click.echo(f"cache {result.location}: {state}, fingerprint {result.fingerprint[:16]}")
    if result.teacher_top1:
        top1 = ", ".join(f"{x:.2f}" for x in result.teacher_top1)
        click.echo(f"teacher top-1 per view (%, on the augmented {config.split} views): {top1}")
