"""``kdcache extract``: parse options, build an ExtractConfig, run it."""

from __future__ import annotations

import click

from kdcache.cache import bounds
from kdcache.cli._common import progress_bar, storage_timeout_option, user_errors


@click.command("extract")
@storage_timeout_option
@click.option(
    "--teacher",
    required=True,
    help="Teacher architecture (zoo name, timm name or file.py:factory).",
)
@click.option(
    "--weights",
    type=click.Path(dir_okay=False),
    default=None,
    help="Teacher weights file (state dict, .safetensors, or a training checkpoint).",
)
@click.option(
    "--ema",
    is_flag=True,
    help="Load the checkpoint's EMA weights (timm state_dict_ema / model_ema), not its plain ones.",
)
@click.option(
    "--teacher-preprocessing",
    default="auto",
    show_default=True,
    help="How the teacher converts the uint8 views (recorded in the cache): "
    + "auto (default: the model's timm pretrained_cfg, else the dataset's), dataset, "
    "and/or overrides, e.g. 'dataset,mean=0.5/0.5/0.5,std=0.5/0.5/0.5,size=224,"
    "interpolation=bicubic' (docs/training.md).",
)
@click.option("--dataset", required=True, help="cifar10, cifar100, imagefolder or digits.")
@click.option(
    "--data-dir",
    envvar="KDCACHE_DATA_DIR",
    default=None,
    help="Dataset root [env KDCACHE_DATA_DIR].",
)
@click.option("--split", default="train", show_default=True)
@click.option(
    "--recipe",
    default="cifar",
    show_default=True,
    help="Augmentation recipe (cifar, imagenet, randaugment, none), optionally mixed: "
    "+mixup, +cutmix or +mixup-cutmix (e.g. imagenet+mixup-cutmix).",
)
@click.option(
    "--exhaustive",
    is_flag=True,
    help="Enumerate the recipe's distinct views (cifar: 162) instead of sampling.",
)
@click.option(
    "--views",
    default=None,
    type=click.IntRange(1, bounds.MAX_VIEWS),
    help="Augmented views per sample [default: 1; with --exhaustive, all distinct views].",
)
@click.option(
    "--seed",
    default=0,
    show_default=True,
    type=click.IntRange(0, bounds.MAX_SEED),
    help="Cache seed.",
)
@click.option("--out", required=True, help="Cache location (directory).")
@click.option(
    "--dtype",
    type=click.Choice(["float16", "float32"]),
    default=None,
    help="Dense logits' precision [default: float16]; not with --topk (sparse rows are always "
    "float32).",
)
@click.option(
    "--topk",
    type=click.IntRange(min=1),
    default=None,
    help="Sparse mode: keep the top-K logits plus the exact normalisers at each stored "
    "temperature, the true-label logit and the row statistics (docs/cache-format.md).",
)
@click.option(
    "--sparse-temperature",
    "sparse_temperatures",
    type=click.FloatRange(min=0, min_open=True, max=1e6),
    multiple=True,
    help="Sparse mode: also store the log-sum-exp at this temperature (repeatable); T = 1 and "
    "every registered loss's default temperature are always stored.",
)
@click.option(
    "--chunk-rows",
    default=1024,
    show_default=True,
    type=click.IntRange(1, bounds.MAX_CHUNK_ROWS),
    help="Samples per chunk.",
)
@click.option("--batch-size", default=256, show_default=True, type=click.IntRange(1, 1 << 20))
@click.option(
    "--workers",
    default=2,
    show_default=True,
    type=click.IntRange(0, 1024),
    help="DataLoader worker processes.",
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--download", is_flag=True, help="Download the dataset if missing (needs internet).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def extract_command(
    teacher: str,
    weights: str | None,
    ema: bool,
    teacher_preprocessing: str,
    dataset: str,
    data_dir: str | None,
    split: str,
    recipe: str,
    exhaustive: bool,
    views: int | None,
    seed: int,
    out: str,
    dtype: str | None,
    topk: int | None,
    sparse_temperatures: tuple[float, ...],
    chunk_rows: int,
    batch_size: int,
    workers: int,
    device: str,
    download: bool,
    no_progress: bool,
) -> None:
    """Run TEACHER once over a dataset and write its logits into a zarr cache.

    Interrupted runs resume when re-run with the same settings; a cache of other settings at --out
    is never overwritten. Under torchrun each rank writes a disjoint set of chunks.
    """
    from kdcache.extract import ExtractConfig, run_extract

    with user_errors():
        config = ExtractConfig(
            teacher=teacher,
            weights=weights,
            ema=ema,
            teacher_preprocessing=teacher_preprocessing,
            dataset=dataset,
            data_dir=data_dir,
            split=split,
            recipe=recipe,
            recipe_params={"exhaustive": True} if exhaustive else {},
            views=views,
            seed=seed,
            out=out,
            dtype=dtype,  # type: ignore[arg-type]  # click.Choice guarantees the literal
            topk=topk,
            extra_temperatures=tuple(sparse_temperatures),
            chunk_rows=chunk_rows,
            batch_size=batch_size,
            workers=workers,
            device=device,
            download=download,
        )
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
        click.echo(f"teacher top-1 per view (%, on the augmented {split} views): {top1}")
