"""What mixing costs: extraction and the cache loader, with and without mixing, side by side.

    python benchmarks/bench_mix.py [--split test] [--teacher resnet56] [--repeats 2]
                                   [--batch-size 128] [--write-docs]

On real CIFAR-100 (``../shared/data``) with the real ResNet-56 teacher, for the recipes ``cifar``
and ``cifar+mixup-cutmix`` (every view mixed: ``mix_prob`` 1):

* ``extract``: ``run_extract`` of one view of the split (float16, workers 0: the views are made
  in the extracting process, so their cost is not hidden behind worker processes), images/s;
* ``loader``: one epoch of ``kdcache.open_cache(...).loader(...)`` over that cache (workers 0,
  replay ``sample``, CPU), images/s: the regenerated views (for a mixed recipe the partner's
  view too, plus the blend) and the cached logits.

Modes alternate within each repeat and the median is kept; torch uses one thread, so the figures
are per core. A mixed view regenerates two base views, draws the mix and blends them; how much of
the whole that is depends on what else runs (the teacher's forward in extraction, the logit reads
in the loader).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import kdcache  # noqa: E402
from benchmarks._docs import write_section  # noqa: E402
from kdcache.extract import ExtractConfig, run_extract  # noqa: E402

DATA = REPO.parent / "shared" / "data"
WEIGHTS = DATA / "teachers" / "resnet56_cifar100_020118.pth"
RECIPES = ("cifar", "cifar+mixup-cutmix")


def extract_rate(recipe: str, out: Path, args: argparse.Namespace) -> float:
    config = ExtractConfig(teacher=args.teacher, weights=str(WEIGHTS), out=str(out),
                           dataset="cifar100", data_dir=str(DATA), split=args.split,
                           recipe=recipe, views=1, dtype="float16", chunk_rows=1024,
                           batch_size=args.batch_size, workers=0, device="cpu")  # fmt: skip
    result = run_extract(config)
    return result.images_per_second


def loader_rate(cache: Path, args: argparse.Namespace) -> float:
    loader = kdcache.open_cache(cache).loader(DATA, batch_size=args.batch_size, seed=0, epoch=0)
    start, images = time.perf_counter(), 0
    for batch in loader:
        images += len(batch.labels)
    return images / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", default="test", help="CIFAR-100 split (test: 10,000 images)")
    parser.add_argument("--teacher", default="resnet56")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    if not WEIGHTS.is_file():
        sys.exit(f"needs {WEIGHTS} and CIFAR-100 in {DATA}")
    torch.set_num_threads(1)
    rates: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            order = RECIPES if repeat % 2 == 0 else RECIPES[::-1]
            for recipe in order:
                out = Path(tmp) / f"{recipe}-{repeat}"
                rates.setdefault(("extract", recipe), []).append(extract_rate(recipe, out, args))
                rates.setdefault(("loader", recipe), []).append(loader_rate(out, args))
    median = {key: statistics.median(values) for key, values in rates.items()}
    rows = [
        "| stage | `cifar` images/s | `cifar+mixup-cutmix` images/s | mixed / plain |",
        "| --- | --- | --- | --- |",
    ]
    for stage in ("extract", "loader"):
        plain, mixed = median[(stage, RECIPES[0])], median[(stage, RECIPES[1])]
        rows.append(f"| {stage} | {plain:,.0f} | {mixed:,.0f} | {mixed / plain:.2f} |")
    text = (
        "`python benchmarks/bench_mix.py "
        f"--split {args.split} --teacher {args.teacher} --batch-size {args.batch_size} "
        f"--repeats {args.repeats}`: real CIFAR-100 {args.split} split, one view, the real "
        f"{args.teacher} teacher on the CPU, one torch thread, workers 0 (per core), median of "
        f"{args.repeats} alternating repeats.\n\n" + "\n".join(rows) + "\n\n"
        "A mixed view regenerates the partner's view too, draws the mix (a reseeded NumPy "
        "generator) and blends the two (cutmix: a box copy; mixup: a float32 blend). In "
        "extraction the teacher's forward dominates, so the ratio there is small next to this "
        "shared machine's run-to-run noise; the loader, which only makes views and gathers "
        "cached logits, pays the extra view-making in full. With DataLoader workers "
        "(`--workers`) the views are made in parallel with the step in both cases."
    )
    print(text)
    if args.write_docs:
        write_section(REPO / "docs" / "benchmarks.md", "Mixed views: what mixing costs", text)


if __name__ == "__main__":
    main()
