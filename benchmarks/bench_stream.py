"""The views of one epoch on CPU: today's host stream (SeededViews in a DataLoader) against the
device-resident views (``kdcache.stream.DeviceViews`` on the CPU device), in images/s.

    python benchmarks/bench_stream.py [--images 12800] [--batch-sizes 64 512] [--repeats 3]
                                      [--threads 1] [--tiny] [--write-docs]

On the CIFAR-100 train split (the real one under ``--data-dir`` when present, else 50,000 random
images of its shape), recipe ``cifar`` (seeded, padding 4), view 0 of every sample in a shuffled
order, the same batch boundaries for every mode:

* ``seeded views, W workers``: ``SeededViews`` through a ``DataLoader`` with W = 0 or 2 workers,
  as ``kdcache train`` streams today: each item is cropped, flipped and hashed (``input_hash``);
* ``device views, first epoch``: a fresh ``DeviceViews``: each row's geometry drawn on the host
  (once per (view, sample), then kept), the crops cut by one gather per batch;
* ``device views, later epochs``: the same after the geometry table is filled: gathers only;
  ``+ sample hashes`` also hashes the rows the ``sample`` replay check reads (index % 16 == 0 and
  each batch's first), ``+ all hashes`` every row (replay ``all``, what SeededViews always does).

Before timing, the first batch of the device views is checked bit for bit (and hash for hash)
against SeededViews'. Each measurement reads ``--images`` images after one warm-up batch (worker
start-up excluded); modes alternate within each repeat and the median is kept. A second table gives
the per-row host costs (geometry draw, input hash, SeededViews item, device gather), the fastest
of the repeats.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks._docs import write_section  # noqa: E402
from kdcache.augment import PadCropFlip, create_recipe  # noqa: E402
from kdcache.data import ArrayDataset, SourceDataset, load_dataset  # noqa: E402
from kdcache.data.datasets import CIFAR100  # noqa: E402
from kdcache.seeding import input_hash, input_hashes, sample_seed  # noqa: E402
from kdcache.stream.device_views import DeviceViews  # noqa: E402
from kdcache.views import SeededViews  # noqa: E402

CPU = torch.device("cpu")
SAMPLE_EVERY = 16  # the `sample` replay check's rows: index % 16 == 0, and each batch's first


def cifar100_train(data_dir: Path, samples: int | None) -> tuple[SourceDataset, str]:
    """Real CIFAR-100 train when present (first ``samples`` if given), else random images."""
    if (data_dir / "cifar-100-python" / "train").is_file() and samples is None:
        return load_dataset("cifar100", data_dir, "train"), "real CIFAR-100 train"
    n = samples or 50_000
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 100, n)
    names = tuple(str(c) for c in range(100))
    return ArrayDataset(CIFAR100, "train", pixels, labels, names), f"{n:,} random 3x32x32 images"


def bounds_of(rows: int, batch: int) -> list[tuple[int, int]]:
    return [(s, min(s + batch, rows)) for s in range(0, rows, batch)]


class BoundsSampler:
    def __init__(self, bounds: list[tuple[int, int]]) -> None:
        self.bounds = bounds

    def __len__(self) -> int:
        return len(self.bounds)

    def __iter__(self) -> Iterator[list[int]]:
        for start, stop in self.bounds:
            yield list(range(start, stop))


def rate(batches: Iterable[Any], images: int) -> float:
    """Images/s over ``images`` images after one warm-up batch."""
    it = iter(batches)
    next(it)
    seen, started = 0, time.perf_counter()
    for batch in it:
        seen += len(batch)
        if seen >= images:
            break
    return seen / (time.perf_counter() - started)


def host_stream(views: SeededViews, bounds: list[tuple[int, int]], workers: int) -> Iterator[Any]:
    loader = torch.utils.data.DataLoader(
        views,
        batch_sampler=BoundsSampler(bounds),
        num_workers=workers,
        prefetch_factor=4 if workers else None,
    )
    return (b["input_hash"] for b in loader)  # images cut and hashed in the loader


def device_stream(
    views: DeviceViews, items: np.ndarray, bounds: list[tuple[int, int]], hashes: str
) -> Iterator[Any]:
    for start, stop in bounds:
        batch = items[start:stop]
        images = views.views(batch)
        views.labels(batch)
        if hashes == "all":
            input_hashes(images)
        elif hashes == "sample":
            rows = np.flatnonzero(batch[:, 1] % SAMPLE_EVERY == 0)
            input_hashes(images[torch.from_numpy(np.union1d(rows, [0]))])
        yield images


def check_identity(source: SourceDataset, views: DeviceViews, items: np.ndarray) -> None:
    seeded = SeededViews(source, views.recipe, views.cache_seed, items)
    expected = torch.stack([seeded[k]["image"] for k in range(len(items))])
    got = views.views(items)
    if not torch.equal(got, expected):
        raise AssertionError("the device views differ from SeededViews: a bug to fix first")
    if input_hashes(got).tolist() != [seeded[k]["input_hash"] for k in range(len(items))]:
        raise AssertionError("the device views' hashes differ from SeededViews'")


def per_row_costs(source: SourceDataset, recipe: PadCropFlip, rows: int) -> dict[str, float]:
    """Microseconds per row of each host step, over ``rows`` rows."""
    index = np.random.default_rng(1).permutation(len(source))[:rows].tolist()
    image = source.image(0)

    def per_row(fn: Callable[[int], object]) -> float:
        started = time.perf_counter()
        for i in index:
            fn(i)
        return (time.perf_counter() - started) / rows * 1e6

    items = np.stack([np.zeros(rows, np.int64), np.asarray(index)], axis=1)
    seeded = SeededViews(source, recipe, 0, items)
    warm = DeviceViews(source, recipe, 0, CPU)
    warm.geometry(items)
    started = time.perf_counter()
    for start, stop in bounds_of(rows, 512):
        warm.views(items[start:stop])
    gather = (time.perf_counter() - started) / rows * 1e6
    batches = [warm.views(items[start:stop]) for start, stop in bounds_of(rows, 512)]
    started = time.perf_counter()
    for batch in batches:
        input_hashes(batch)
    hashes = (time.perf_counter() - started) / rows * 1e6
    return {
        "sample_seed (sha256)": per_row(lambda i: sample_seed(0, 0, i)),
        "geometry draw (sample_seed + recipe.geometry)": per_row(
            lambda i: recipe.geometry(sample_seed=sample_seed(0, 0, i), view=0)
        ),
        "input_hash of one 3x32x32 view": per_row(lambda i: input_hash(image)),
        "input_hashes of a batch of 512 views, per view": hashes,
        "SeededViews item (image, crop, flip, hash)": per_row(lambda k: seeded[k % rows]),
        "DeviceViews gather, batch 512, table filled": gather,
    }


def measure(args: argparse.Namespace) -> dict[str, Any]:
    source, data = cifar100_train(args.data_dir, 1024 if args.tiny else None)
    recipe = create_recipe("cifar", source.spec)
    assert isinstance(recipe, PadCropFlip)
    order = np.random.default_rng(0).permutation(len(source))
    items = np.stack([np.zeros(len(source), np.int64), order], axis=1)
    seeded = SeededViews(source, recipe, 0, items)
    check_identity(source, DeviceViews(source, recipe, 0, CPU), items[:64])
    started = time.perf_counter()
    warm = DeviceViews(source, recipe, 0, CPU)
    setup = time.perf_counter() - started
    warm.geometry(items)  # every row's geometry: "later epochs" only look it up
    images = min(args.images, len(items) - max(args.batch_sizes))
    results: dict[int, dict[str, float]] = {}
    for batch in args.batch_sizes:
        bounds = bounds_of(len(items), batch)
        modes: dict[str, Callable[[], float]] = {
            f"seeded views, {w} workers": lambda w=w, b=bounds: rate(  # type: ignore[misc]
                host_stream(seeded, b, w), images
            )
            for w in (0, 2)
        }
        modes["device views, first epoch + sample hashes"] = lambda b=bounds: rate(  # type: ignore[misc]
            device_stream(DeviceViews(source, recipe, 0, CPU), items, b, "sample"), images
        )
        for hashes in ("none", "sample", "all"):
            name = "device views, later epochs" + (
                "" if hashes == "none" else f" + {hashes} hashes"
            )
            modes[name] = lambda h=hashes, b=bounds: rate(  # type: ignore[misc]
                device_stream(warm, items, b, h), images
            )
        runs: dict[str, list[float]] = {m: [] for m in modes}
        names = list(modes)
        for repeat in range(args.repeats):
            for mode in names[repeat % len(names) :] + names[: repeat % len(names)]:
                runs[mode].append(modes[mode]())
                print(f"  batch {batch}, {mode}: {runs[mode][-1]:,.0f} img/s", file=sys.stderr)
        results[batch] = {m: statistics.median(v) for m, v in runs.items()}
    # The fastest of the repeats: a per-row cost is a floor, and load only adds to it.
    runs = [per_row_costs(source, recipe, 256 if args.tiny else 4096) for _ in range(args.repeats)]
    costs = {name: min(run[name] for run in runs) for name in runs[0]}
    return {"data": data, "images": images, "setup_s": setup, "rates": results, "costs": costs}


def markdown(report: dict[str, Any], args: argparse.Namespace, load: tuple[float, float]) -> str:
    batches = list(report["rates"])
    lines = [
        f"Command: `python benchmarks/bench_stream.py {' '.join(args.argv)}` (CPU, "
        f"{report['data']}, recipe `cifar` seeded, torch threads {args.threads}, "
        f"{report['images']:,} images per measurement after one warm-up batch, median of "
        f"{args.repeats} alternating repeats; load average {load[0]:.1f} before, {load[1]:.1f} "
        "after: the machine is shared, read the ratios side by side). Making the device views "
        f"(the padded copy of every image) took {report['setup_s']:.2f} s.",
        "",
        "| images/s | " + " | ".join(f"batch {b}" for b in batches) + " | "
        + " | ".join(f"vs 2 workers, batch {b}" for b in batches) + " |",
        "| --- |" + " ---: |" * (2 * len(batches)),
    ]  # fmt: skip
    base = {b: report["rates"][b]["seeded views, 2 workers"] for b in batches}
    for mode in report["rates"][batches[0]]:
        values = [report["rates"][b][mode] for b in batches]
        ratios = [v / base[b] for v, b in zip(values, batches, strict=True)]
        lines.append(
            f"| {mode} | " + " | ".join(f"{v:,.0f}" for v in values) + " | "
            + " | ".join(f"{r:.2f}x" for r in ratios) + " |"
        )  # fmt: skip
    lines += ["", "| host cost per row (fastest of the repeats) | microseconds |", "| --- | ---: |"]
    lines += [f"| {name} | {value:.1f} |" for name, value in report["costs"].items()]
    lines += [
        "",
        "Workers share the machine's 2 cores with the main process: with a student's step on "
        "those cores, the host stream's workers compete with it, the device views do not.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--images", type=int, default=12_800)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 512])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--tiny", action="store_true", help="1,024 random images (smoke run)")
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    if args.tiny:
        args.images, args.repeats = min(args.images, 256), 1
    torch.set_num_threads(args.threads)
    before = os.getloadavg()[0]
    report = measure(args)
    text = markdown(report, args, (before, os.getloadavg()[0]))
    print(text)
    if args.write_docs:
        write_section(REPO / "docs" / "benchmarks.md", "Device-resident views (CPU)", text)
    return report


if __name__ == "__main__":
    main()
