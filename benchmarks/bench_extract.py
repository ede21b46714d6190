"""Extraction throughput against the bare teacher forward loop, and bytes per cached view.

    python benchmarks/bench_extract.py [--data-dir ../shared/data] [--repeats 2] [--write-docs]

1. Throughput: ``run_extract`` (augment + hash + forward + zarr writes) against a bare loop
   that only runs the teacher forward on the *same* augmented images, already in memory, with the
   same batch size, device, memory format and thread count. Runs alternate (bare, extract,
   bare, extract...) and the median of each is kept; the figure is the ratio of images/s
   (>= 0.9 is the target).
2. Storage: the same teacher logits written through the cache store in each storage mode; bytes on
   disk per sample per view against the raw float32 size (C * 4 bytes).

Needs the real CIFAR-100 test split and ResNet-56 teacher from ../shared/data.
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
from kdcache.data import load_dataset, normalize  # noqa: E402
from kdcache.extract import ExtractConfig, run_extract  # noqa: E402
from kdcache.losses.registry import sparse_temperatures  # noqa: E402
from kdcache.models import build_model  # noqa: E402
from kdcache.views import SeededViews  # noqa: E402

WEIGHTS = "teachers/resnet56_cifar100_020118.pth"


def bare_forward(model: torch.nn.Module, images: torch.Tensor, spec, batch: int) -> float:  # type: ignore[no-untyped-def]
    """Seconds for the teacher forward alone over in-memory uint8 images."""
    started = time.perf_counter()
    with torch.inference_mode():
        for k in range(0, len(images), batch):
            x = normalize(images[k : k + batch], spec).contiguous(memory_format=torch.channels_last)
            model(x)
    return time.perf_counter() - started


def throughput(data_dir: Path, repeats: int, batch: int, workers: int) -> dict[str, float]:
    source = load_dataset("cifar100", data_dir, "test")
    recipe = create_recipe("cifar", source.spec)
    n = len(source)
    items = np.stack([np.zeros(n, np.int64), np.arange(n)], axis=1)
    views = SeededViews(source, recipe, 0, items)
    images = torch.stack([views[k]["image"] for k in range(n)])  # uint8 [N, 3, 32, 32]
    model = build_model("resnet56", 100, weights=str(data_dir / WEIGHTS)).eval()
    model = model.to(memory_format=torch.channels_last)
    bare, full = [], []
    for _ in range(repeats):
        bare.append(bare_forward(model, images, source.spec, batch))
        with tempfile.TemporaryDirectory() as tmp:
            result = run_extract(
                ExtractConfig(
                    teacher="resnet56",
                    weights=str(data_dir / WEIGHTS),
                    dataset="cifar100",
                    data_dir=str(data_dir),
                    split="test",
                    recipe="cifar",
                    views=1,
                    seed=0,
                    out=f"{tmp}/c",
                    batch_size=batch,
                    workers=workers,
                    device="cpu",
                )
            )
            full.append(result.seconds)
    b, f = statistics.median(bare), statistics.median(full)
    return {"images": n, "bare_ips": n / b, "extract_ips": n / f, "ratio": b / f}


def storage(data_dir: Path) -> list[tuple[str, float]]:
    """Bytes per sample per view of each storage mode, from one set of real teacher logits."""
    source = load_dataset("cifar100", data_dir, "test")
    model = build_model("resnet56", 100, weights=str(data_dir / WEIGHTS)).eval()
    recipe = create_recipe("none", source.spec)
    n = 4096
    items = np.stack([np.zeros(n, np.int64), np.arange(n)], axis=1)
    views = SeededViews(source, recipe, 0, items)
    images = torch.stack([views[k]["image"] for k in range(n)])
    with torch.inference_mode():
        logits = torch.cat(
            [model(normalize(images[k : k + 512], source.spec)) for k in range(0, n, 512)]
        ).numpy()
    labels = source.labels[:n]
    rows = []
    for label, mode, dtype, topk in [
        ("dense float32", "dense", "float32", None),
        ("dense float16", "dense", "float16", None),
        # Sparse caches are float32 (float16 is refused) with one log-sum-exp per temperature.
        ("sparse top-20 float32", "sparse", "float32", 20),
        ("sparse top-5 float32", "sparse", "float32", 5),
    ]:
        ident = schema.CacheIdentity(
            teacher=schema.TeacherInfo("resnet56", None, 0),
            dataset=schema.DatasetInfo("cifar100", "test", n, 100, "bench", {}),
            augmentation=schema.AugmentationInfo("none", {}, 0, 1),
            storage=schema.StorageInfo(
                mode,  # type: ignore[arg-type]
                dtype,  # type: ignore[arg-type]
                1024,
                topk,
                sparse_temperatures() if mode == "sparse" else None,
            ),
        )
        with tempfile.TemporaryDirectory() as tmp:
            writer = open_for_writing(
                f"{tmp}/c", schema.CacheMeta(identity=ident), labels, create=True
            )
            for block in range(writer.meta.num_blocks):
                rows_ = writer.meta.block_rows(block)
                writer.write_block(
                    0,
                    block,
                    logits[rows_],
                    np.arange(rows_.stop - rows_.start),
                    0,
                    0,
                    labels=labels[rows_],
                )
            reader = open_cache(f"{tmp}/c")
            # Only the per-sample arrays: labels and bookkeeping are per cache or per block.
            names = [*schema.data_arrays(ident.storage), schema.INPUT_HASH]
            size = sum(
                p.stat().st_size
                for name in names
                for p in (Path(tmp) / "c" / name).rglob("*")
                if p.is_file()
            )
            del reader
        rows.append((label, size / n))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(2)
    t = throughput(args.data_dir, args.repeats, args.batch_size, args.workers)
    s = storage(args.data_dir)
    raw = 100 * 4
    lines = [
        "Command: `python benchmarks/bench_extract.py --write-docs` (CPU, torch threads 2, "
        f"batch {args.batch_size}, {args.workers} loader worker(s), median of {args.repeats} "
        "alternating runs).",
        "",
        f"ResNet-56 teacher on the CIFAR-100 test split ({t['images']} images, `cifar` recipe):",
        "",
        "| loop | images/s |",
        "| --- | ---: |",
        f"| bare teacher forward (pre-augmented images in memory) | {t['bare_ips']:.0f} |",
        f"| `kdcache extract` (augment + hash + forward + write) | {t['extract_ips']:.0f} |",
        f"| **ratio extract / bare** | **{t['ratio']:.3f}** |",
        "",
        "Bytes per sample per view (CIFAR-100, C = 100; raw float32 = 400 B; includes the 8-byte "
        "input hash; zstd-3 + crc32c):",
        "",
        "| storage mode | bytes | vs raw float32 |",
        "| --- | ---: | ---: |",
        *[f"| {label} | {b:.1f} | {b / raw:.3f} |" for label, b in s],
    ]
    text = "\n".join(lines)
    print(text)
    if args.write_docs:
        write_section(REPO / "docs" / "benchmarks.md", "Extraction", text)


if __name__ == "__main__":
    main()
