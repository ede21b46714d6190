"""Training-step throughput: cached KD vs cross-entropy only vs online KD, and logit-reader speed.

    python benchmarks/bench_train.py [--steps 24] [--repeats 2] [--write-docs]

For each (teacher -> student) pair, on the real CIFAR-100 train images, the same student, batches
and seeds are trained for ``--steps`` optimiser steps in three modes:

* ``ce``     : cross-entropy only (no teacher signal at all; the floor);
* ``cached`` : KD from a cache (logits streamed from zarr, replay hashes checked);
* ``online`` : KD with the live teacher forward on every step.

Step times come from the training loop's own progress callback (evaluation excluded), skipping the
first 4 steps. Modes alternate within each repeat (their order rotating from one repeat to the
next) and the median is kept.

The caches used here hold the teacher's *shape* but not its knowledge: logits are random normal
numbers (the speed of streaming them does not depend on their values) and the input hashes are the
real ones, so replay verification runs as in production. Writing a real resnet32x4 cache of
CIFAR-100 would take about an hour of CPU; the real ResNet-56 cache is exercised in the tests.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks._docs import write_section  # noqa: E402
from kdcache.augment import create_recipe  # noqa: E402
from kdcache.cache import schema  # noqa: E402
from kdcache.cache.reader import open_cache  # noqa: E402
from kdcache.cache.writer import open_for_writing  # noqa: E402
from kdcache.data import load_dataset  # noqa: E402
from kdcache.models import build_model  # noqa: E402
from kdcache.stream.cached_teacher import CachedTeacher  # noqa: E402
from kdcache.stream.plan import plan_epoch  # noqa: E402
from kdcache.training.config import TrainConfig  # noqa: E402
from kdcache.training.loop import run_train  # noqa: E402
from kdcache.views import SeededViews  # noqa: E402

PAIRS = [("resnet56", "resnet20"), ("resnet32x4", "resnet8x4")]
WARMUP_STEPS = 4


def synthetic_cache(
    path: str, teacher: str, data_dir: Path, rows: int, views: int = 1, chunk_rows: int = 1024
) -> None:
    """A cache of the real CIFAR-100 train identity with random logits and real input hashes."""
    source = load_dataset("cifar100", data_dir, "train")
    recipe = create_recipe("cifar", source.spec)
    ident = schema.CacheIdentity(
        teacher=schema.TeacherInfo(teacher, None, 0),
        dataset=schema.DatasetInfo(
            "cifar100", "train", len(source), 100, source.fingerprint(), source.spec.to_dict()
        ),
        augmentation=schema.AugmentationInfo("cifar", recipe.params(), 0, views),
        storage=schema.StorageInfo("dense", "float16", chunk_rows),
    )
    writer = open_for_writing(path, schema.CacheMeta(identity=ident), source.labels, create=True)
    rng = np.random.default_rng(0)
    blocks = -(-rows // chunk_rows)
    for view in range(views):
        for block in range(blocks):
            r = writer.meta.block_rows(block)
            items = np.stack([np.full(r.stop - r.start, view), np.arange(r.start, r.stop)], 1)
            sv = SeededViews(source, recipe, 0, items)
            hashes = np.array([sv[k]["input_hash"] for k in range(len(items))], np.int64)
            logits = rng.normal(0, 3, (r.stop - r.start, 100)).astype(np.float32)
            writer.write_block(view, block, logits, hashes, 0, 0)


def timed_run(config: TrainConfig) -> float:
    """Images per second over the steps after the warm-up (test-set evaluation is skipped)."""
    stamps: list[float] = []
    sizes: list[int] = []

    def tick(n: int) -> None:
        stamps.append(time.perf_counter())
        sizes.append(n)

    run_train(config, progress=tick)
    return sum(sizes[WARMUP_STEPS + 1 :]) / (stamps[-1] - stamps[WARMUP_STEPS])


def step_throughput(
    data_dir: Path, steps: int, repeats: int, batch: int, workers: int, tmp: Path
) -> list[tuple[str, str, dict[str, float]]]:
    n = steps * batch
    results = []
    for teacher, student in PAIRS:
        cache = str(tmp / f"cache_{teacher}")
        synthetic_cache(cache, teacher, data_dir, n)
        weights = tmp / f"{teacher}.pth"
        torch.manual_seed(0)
        torch.save(build_model(teacher, 100).state_dict(), weights)
        common = dict(
            student=student,
            epochs=1,
            batch_size=batch,
            workers=workers,
            device="cpu",
            max_samples=n,
            seed=0,
            force=True,
            eval_every=0,  # test-set evaluation is not what we measure
        )
        modes = {
            "ce": dict(dataset="cifar100", data_dir=str(data_dir), loss="ce"),
            "ce_contiguous": dict(
                dataset="cifar100", data_dir=str(data_dir), loss="ce", channels_last=False
            ),
            "cached": dict(cache=cache, data_dir=str(data_dir), loss="kd"),
            "online": dict(
                dataset="cifar100",
                data_dir=str(data_dir),
                loss="kd",
                teacher=teacher,
                teacher_weights=str(weights),
            ),
        }
        ips: dict[str, list[float]] = {m: [] for m in modes}
        names = list(modes)
        for repeat in range(repeats):
            # Rotate the order each repeat so no mode always runs right after the heavy online one.
            for mode in names[repeat % len(names) :] + names[: repeat % len(names)]:
                extra = modes[mode]
                config = TrainConfig(out=str(tmp / f"run_{mode}"), **common, **extra)  # type: ignore[arg-type]
                ips[mode].append(timed_run(config))
        results.append((teacher, student, {m: statistics.median(v) for m, v in ips.items()}))
    return results


def reader_throughput(data_dir: Path, tmp: Path) -> float:
    """Rows/s the logit stream serves over a full CIFAR-100-sized epoch (N=50000, 2 views)."""
    cache = str(tmp / "reader_cache")
    synthetic_cache(cache, "synthetic", data_dir, rows=50_000, views=2)
    reader = open_cache(cache)
    n = reader.identity.dataset.num_samples
    plan = plan_epoch(seed=0, epoch=0, num_samples=n, block_rows=1024, window_blocks=4,
                      allowed_views=np.arange(2), batch_size=64)  # fmt: skip
    stream = CachedTeacher(reader, chunk_capacity=16)
    started = time.perf_counter()
    rows = sum(len(logits) for logits, _ in stream.batches(plan.items, plan.bounds))
    return rows / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        results = step_throughput(
            args.data_dir, args.steps, args.repeats, args.batch_size, args.workers, Path(tmp)
        )
        reader_rows = reader_throughput(args.data_dir, Path(tmp))
    lines = [
        f"Command: `python benchmarks/bench_train.py --write-docs` (CPU, torch threads 2, batch "
        f"{args.batch_size}, {args.workers} loader worker(s), {args.steps} steps per run of which "
        f"the first {WARMUP_STEPS} are skipped, median of {args.repeats} alternating repeats; "
        "channels_last; evaluation excluded).",
        "",
        "| teacher -> student | CE only img/s | cached KD img/s | online KD img/s | "
        "cached / CE | speed-up online -> cached | CE, contiguous img/s | channels_last gain |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for teacher, student, r in results:
        lines.append(
            f"| {teacher} -> {student} | {r['ce']:.0f} | {r['cached']:.0f} | "
            f"{r['online']:.0f} | {r['cached'] / r['ce']:.3f} | "
            f"{r['cached'] / r['online']:.2f}x | {r['ce_contiguous']:.0f} | "
            f"{r['ce'] / r['ce_contiguous']:.2f}x |"
        )
    fastest = max(r["cached"] for _, _, r in results)
    lines += [
        "",
        f"Logit reader (prefetch thread alone, N = 50,000, C = 100, float16, 2 views, window 4): "
        f"**{reader_rows:,.0f} rows/s**, {reader_rows / fastest:.0f}x what the fastest cached run "
        "above consumes.",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write_docs:
        write_section(REPO / "docs" / "benchmarks.md", "Training throughput (CPU)", text)


if __name__ == "__main__":
    main()
