"""The data path alone, side by side: what a GPU would wait on, in images/s per loader core.

    python benchmarks/bench_loader.py [--images 12800] [--batch-size 128] [--workers 0]
                                      [--repeats 3] [--write-docs]

On the real CIFAR-100 train split, the same batch size, workers and torch threads (1) for every
mode:

* ``torchvision``     : ``datasets.CIFAR100`` + ``RandomCrop(32, 4)`` + ``RandomHorizontalFlip`` +
  ``ToTensor`` + ``Normalize`` in a shuffled ``DataLoader`` (the usual CIFAR training loader);
* ``seeded views``    : ``SeededViews`` (cifar recipe, uint8 + input hash) in a ``DataLoader``,
  normalised in the main process: the images alone, no cache;
* ``loader, replay X``: ``kdcache.open_cache(...).loader(...)``, the public stream ``kdcache
  train`` runs on: the seeded views plus the cache's logits decoded, prefetched and gathered, with
  replay checks ``off``, ``sample`` or ``all``.

Each measurement reads ``--images`` images after one warm-up batch; modes alternate within each
repeat (their order rotating) and the median is kept. One core per mode with ``--workers 0`` (the
main process; the loader's logit thread shares it); with W workers the per-core figure divides by
W + 1. The cache is a synthetic one of the real CIFAR-100 train identity: random float16 logits (the
speed of streaming them does not depend on their values) and the real input hashes, so the replay
checks compare real hashes.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import kdcache  # noqa: E402
from benchmarks._docs import write_section  # noqa: E402
from kdcache.augment import create_recipe  # noqa: E402
from kdcache.cache import schema  # noqa: E402
from kdcache.cache.writer import open_for_writing  # noqa: E402
from kdcache.data import load_dataset, normalize  # noqa: E402
from kdcache.views import SeededViews  # noqa: E402

TARGETS = (20_000, 50_000)  # images/s one modern GPU trains a CIFAR ResNet at


def synthetic_cache(path: str, data_dir: Path, chunk_rows: int = 1024) -> None:
    """One view of CIFAR-100 train: real identity and input hashes, random float16 logits."""
    source = load_dataset("cifar100", data_dir, "train")
    recipe = create_recipe("cifar", source.spec)
    ident = schema.CacheIdentity(
        teacher=schema.TeacherInfo("synthetic", None, 0),
        dataset=schema.DatasetInfo(
            "cifar100", "train", len(source), 100, source.fingerprint(), source.spec.to_dict()
        ),
        augmentation=schema.AugmentationInfo("cifar", recipe.params(), 0, 1),
        storage=schema.StorageInfo("dense", "float16", chunk_rows),
    )
    writer = open_for_writing(path, schema.CacheMeta(identity=ident), source.labels, create=True)
    rng = np.random.default_rng(0)
    for block in range(writer.meta.num_blocks):
        rows = writer.meta.block_rows(block)
        items = np.stack([np.zeros(rows.stop - rows.start), np.arange(rows.start, rows.stop)], 1)
        views = SeededViews(source, recipe, 0, items.astype(np.int64))
        hashes = np.array([views[k]["input_hash"] for k in range(len(items))], np.int64)
        logits = rng.normal(0, 3, (len(items), 100)).astype(np.float32)
        writer.write_block(0, block, logits, hashes, 0, 0)
    writer.finalize()


def rate(batches: Iterable, take: Callable[[object], torch.Tensor], images: int) -> float:
    """Images/s over ``images`` images after one warm-up batch (worker start-up excluded)."""
    it = iter(batches)
    next(it)
    seen, started = 0, time.perf_counter()
    for batch in it:
        seen += len(take(batch))
        if seen >= images:
            break
    return seen / (time.perf_counter() - started)


def torchvision_loader(data_dir: Path, batch: int, workers: int) -> Iterable:
    from torchvision import datasets, transforms

    spec = load_dataset("cifar100", data_dir, "train").spec
    transform = transforms.Compose([
        transforms.RandomCrop(32, padding=4),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(spec.mean, spec.std),
    ])  # fmt: skip
    data = datasets.CIFAR100(str(data_dir), train=True, transform=transform, download=False)
    return torch.utils.data.DataLoader(data, batch_size=batch, shuffle=True, num_workers=workers)


def seeded_views(data_dir: Path, batch: int, workers: int) -> Iterable:
    source = load_dataset("cifar100", data_dir, "train")
    order = np.random.default_rng(0).permutation(len(source))
    items = np.stack([np.zeros(len(source), np.int64), order], axis=1)
    views = SeededViews(source, create_recipe("cifar", source.spec), 0, items)
    loader = torch.utils.data.DataLoader(views, batch_size=batch, num_workers=workers)
    return ((normalize(b["image"], source.spec), b["label"]) for b in loader)


def measure(data_dir: Path, cache: str, args: argparse.Namespace) -> dict[str, float]:
    handle = kdcache.open_cache(cache)
    handle.loader(data_dir, batch_size=args.batch_size, seed=0, epoch=0)  # fingerprint once
    modes: dict[str, Callable[[], float]] = {
        "torchvision": lambda: rate(
            torchvision_loader(data_dir, args.batch_size, args.workers), lambda b: b[1], args.images
        ),
        "seeded views": lambda: rate(
            seeded_views(data_dir, args.batch_size, args.workers), lambda b: b[1], args.images
        ),
    }
    for replay in ("off", "sample", "all"):
        modes[f"loader, replay {replay}"] = lambda replay=replay: rate(  # type: ignore[misc]
            handle.loader(data_dir, batch_size=args.batch_size, seed=0, epoch=0,
                          workers=args.workers, verify_replay=replay),
            lambda b: b.labels,
            args.images,
        )  # fmt: skip
    results: dict[str, list[float]] = {m: [] for m in modes}
    names = list(modes)
    for repeat in range(args.repeats):
        for mode in names[repeat % len(names) :] + names[: repeat % len(names)]:
            results[mode].append(modes[mode]())
            print(f"  {mode}: {results[mode][-1]:,.0f} img/s", file=sys.stderr)
    return {m: statistics.median(v) for m, v in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--images", type=int, default=12_800)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cores = args.workers + 1 if args.workers else 1
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        cache = str(Path(tmp) / "cache")
        synthetic_cache(cache, args.data_dir)
        r = measure(args.data_dir, cache, args)
    base, views = r["torchvision"], r["seeded views"]
    lines = [
        f"Command: `python benchmarks/bench_loader.py {' '.join(sys.argv[1:])}` (CPU, CIFAR-100 "
        f"train, batch {args.batch_size}, {args.workers} loader workers, torch threads 1, "
        f"{args.images:,} images per measurement after one warm-up batch, median of "
        f"{args.repeats} alternating repeats; {cores} core(s) per mode; load average "
        f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after: the machine is shared, so "
        "absolute rates are low, the ratios side by side are the figures to read).",
        "",
        "| data path | images/s | per core | vs torchvision | vs seeded views | cores for "
        "20k img/s | cores for 50k img/s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for mode, value in r.items():
        per_core = value / cores
        need = " | ".join(str(math.ceil(t / per_core)) for t in TARGETS)
        lines.append(
            f"| {mode} | {value:,.0f} | {per_core:,.0f} | {value / base:.2f}x | "
            f"{value / views:.2f} | {need} |"
        )
    sample = r["loader, replay sample"]
    lines += [
        "",
        f'The public loader with `verify_replay="sample"` runs at {sample / views:.2f} of the '
        f"seeded views alone (goal: at least 0.9) and {sample / base:.2f}x the torchvision loader "
        "(goal: at least 2x). Cores are loader cores (DataLoader workers plus the main process's "
        "share); a student's step needs its own.",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write_docs:
        write_section(REPO / "docs" / "benchmarks.md", "Data path (CPU)", text)


if __name__ == "__main__":
    main()
