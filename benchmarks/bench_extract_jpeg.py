"""Extraction at ImageNet size on CPU: images/s against the bare forward, and peak memory in N.

    python benchmarks/bench_extract_jpeg.py [--images 384] [--workers 2] [--batch-size 64]
        [--repeats 3] [--memory-n 2000,20000] [--memory-teacher timm:test_resnet] [--write-docs]

Both parts read JPEG trees written here from real CIFAR-100 train images (../shared/data),
upscaled to 256 x 256, in 1000 class folders (C = 1000), through the ``imagenet`` recipe (224 x 224
views). Teachers are timm models with seeded random weights (nothing is downloaded).

1. Throughput, timm ``resnet18`` at 224: three loops over the same ``--images`` views, alternating,
   median of ``--repeats`` each:

   * bare forward: the teacher forward alone (``teacher_forward``, the code extract runs) on the
     views already decoded, augmented and held in memory;
   * loader + forward: the same ``DataLoader`` over the seeded views as extract (``--workers``
     processes), then the forward; no cache (what a hand-written inference loop costs);
   * ``run_extract``: the whole of extraction (its ``seconds``: the streaming loop, not model
     building or cache creation).

2. Memory: ``run_extract`` in a fresh subprocess per N (``--memory-n``), with ``--workers`` loader
   processes, dense float16 logits, 1024-row chunks. Peak RSS of the extracting process
   (``ru_maxrss`` of ``RUSAGE_SELF``) and of its largest loader worker (``RUSAGE_CHILDREN``). The
   teacher here is ``--memory-teacher`` (default timm ``test_resnet``, fed 160 x 160 resizes of
   the 224 views): memory is about the pipeline, and a 20,000-image resnet18 pass on 2 shared
   cores would take most of an hour. The N-image tree links to the first N files of one tree.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks._docs import write_section  # noqa: E402
from benchmarks._jpeg import cifar_pixels, jpeg_tree  # noqa: E402
from kdcache.augment import create_recipe  # noqa: E402
from kdcache.data import load_dataset  # noqa: E402
from kdcache.extract import ExtractConfig, run_extract  # noqa: E402
from kdcache.models import build_model  # noqa: E402
from kdcache.models.inference import prepare_teacher, teacher_forward, teacher_inference  # noqa: E402
from kdcache.models.preprocess import resolve_preprocessing  # noqa: E402
from kdcache.views import SeededViews, view_items  # noqa: E402

CLASSES = 1000

# Run in a fresh interpreter per N so each peak RSS is that extraction's alone.
_MEMORY_RUNNER = """
import json, resource, sys
sys.path.insert(0, {repo!r})
from kdcache.extract import ExtractConfig, run_extract
result = run_extract(ExtractConfig(**json.loads(sys.argv[1])))
print(json.dumps({{
    "images": result.images,
    "seconds": result.seconds,
    "self_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    "workers_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
}}))
"""


def seeded_weights(name: str, classes: int, path: Path) -> str:
    torch.manual_seed(0)
    torch.save(build_model(name, classes).state_dict(), path)
    return str(path)


def extract_fields(root: Path, weights: str, teacher: str, out: Path, args: Any) -> dict[str, Any]:
    return dict(
        teacher=teacher,
        weights=weights,
        dataset="imagefolder",
        data_dir=str(root),
        split="train",
        recipe="imagenet",
        views=1,
        out=str(out),
        batch_size=args.batch_size,
        workers=args.workers,
        device="cpu",
    )  # JSON-safe: also handed to the memory runner's subprocess


def throughput(root: Path, weights: str, classes: int, args: Any) -> dict[str, float]:
    source = load_dataset("imagefolder", root, "train")
    spec = source.spec
    n = len(source)
    views = SeededViews(source, create_recipe("imagenet", spec), 0, view_items([0], n))
    model = build_model("timm:resnet18", classes, weights=weights)
    pre = resolve_preprocessing(model, spec, "auto")
    model = prepare_teacher(model, torch.device("cpu"))
    images = torch.stack([views[k]["image"] for k in range(n)])  # uint8 [n, 3, 224, 224]
    b = args.batch_size

    def bare() -> float:
        start = time.perf_counter()
        with teacher_inference(torch.device("cpu")):
            for k in range(0, n, b):
                teacher_forward(model, pre(images[k : k + b]))
        return time.perf_counter() - start

    def loader_forward() -> float:
        loader = torch.utils.data.DataLoader(
            views, batch_size=b, num_workers=args.workers, prefetch_factor=4
        )
        start = time.perf_counter()
        with teacher_inference(torch.device("cpu")):
            for batch in loader:
                teacher_forward(model, pre(batch["image"]))
        return time.perf_counter() - start

    def extract() -> float:
        with tempfile.TemporaryDirectory() as tmp:
            fields = extract_fields(root, weights, "timm:resnet18", Path(tmp) / "c", args)
            return run_extract(ExtractConfig(**fields)).seconds

    times: dict[str, list[float]] = {"bare": [], "loader": [], "extract": []}
    for _ in range(args.repeats):
        times["bare"].append(bare())
        times["loader"].append(loader_forward())
        times["extract"].append(extract())
    rates = {k: n / statistics.median(v) for k, v in times.items()}
    return {"images": n, "classes": classes, **rates}


def link_tree(root: Path, files: list[Path], n: int, dest: Path) -> Path:
    """A tree of symlinks to the first ``n`` files of ``root`` (same class folders)."""
    for path in files[:n]:
        link = dest / path.relative_to(root)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(path)
    return dest


def peak_memory(root: Path, weights: str, n: int, work: Path, args: Any) -> dict[str, float]:
    fields = extract_fields(root, weights, args.memory_teacher, work / f"cache{n}", args)
    proc = subprocess.run(
        [sys.executable, "-c", _MEMORY_RUNNER.format(repo=str(REPO)), json.dumps(fields)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    if proc.returncode != 0:
        raise SystemExit(f"the N = {n} extraction failed:\n{proc.stderr[-3000:]}")
    return {"n": n, **json.loads(proc.stdout.strip().splitlines()[-1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=384)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory-n", default="2000,20000")
    parser.add_argument("--memory-teacher", default="timm:test_resnet")
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(2)
    sizes = [int(v) for v in args.memory_n.split(",") if v]
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        t = None
        if not args.skip_throughput:
            classes = min(CLASSES, args.images)  # an image folder has no empty classes
            small = jpeg_tree(
                work / "small", cifar_pixels(args.data_dir, args.images, "train"), classes,
                (256, 256),
            )  # fmt: skip
            weights = seeded_weights("timm:resnet18", classes, work / "resnet18.pth")
            t = throughput(small, weights, classes, args)
        memory = []
        if sizes:
            big = jpeg_tree(
                work / "big", cifar_pixels(args.data_dir, max(sizes), "train"), CLASSES,
                (256, 256),
            )  # fmt: skip
            files = sorted((big / "train").rglob("*.jpg"), key=lambda p: p.name)
            weights = seeded_weights(args.memory_teacher, CLASSES, work / "memory_teacher.pth")
            for n in sizes:
                root = big if n == max(sizes) else link_tree(big, files, n, work / f"tree{n}")
                memory.append(peak_memory(root, weights, n, work, args))
    load_after = os.getloadavg()
    lines = [
        f"`python benchmarks/bench_extract_jpeg.py --images {args.images} --workers "
        f"{args.workers} --batch-size {args.batch_size} --repeats {args.repeats} --memory-n "
        f"{args.memory_n} --memory-teacher {args.memory_teacher}` (CPU, torch threads 2, "
        f"{os.cpu_count()} cores shared with other jobs: load average {load_before[0]:.1f} before, "
        f"{load_after[0]:.1f} after). JPEG trees from CIFAR-100 train images upscaled to 256 x 256 "
        "in 1000 class folders, `imagenet` recipe (224 x 224 views), timm teachers with seeded "
        "random weights, C = 1000, dense float16.",
    ]
    if t is not None:
        lines += [
            "",
            f"Throughput, timm `resnet18` at 224 ({t['images']:.0f} images in "
            f"{t['classes']:.0f} classes, median of "
            f"{args.repeats} alternating runs):",
            "",
            "| loop | images/s | extract / this |",
            "| --- | ---: | ---: |",
            f"| bare forward (views decoded and in memory) | {t['bare']:.1f} | "
            f"{t['extract'] / t['bare']:.3f} |",
            f"| loader ({args.workers} workers) + forward, no cache | {t['loader']:.1f} | "
            f"{t['extract'] / t['loader']:.3f} |",
            f"| `run_extract` (loader + forward + hash + blocks written) | {t['extract']:.1f} | "
            "1.000 |",
        ]
    if memory:
        lines += [
            "",
            f"Peak memory of `run_extract`, teacher `{args.memory_teacher}`, {args.workers} loader "
            "workers, each N in a fresh process:",
            "",
            "| N | seconds | images/s | extracting process peak RSS (MiB) | largest worker (MiB) |",
            "| ---: | ---: | ---: | ---: | ---: |",
            *[
                f"| {m['n']:,} | {m['seconds']:.0f} | {m['images'] / m['seconds']:.0f} | "
                f"{m['self_kib'] / 1024:.0f} | {m['workers_kib'] / 1024:.0f} |"
                for m in memory
            ],
        ]
        if len(memory) > 1:
            lo, hi = memory[0], memory[-1]
            lines += [
                "",
                f"Peak RSS at N = {hi['n']:,} over N = {lo['n']:,}: extracting process "
                f"{hi['self_kib'] / lo['self_kib']:.3f}, largest worker "
                f"{hi['workers_kib'] / lo['workers_kib']:.3f}.",
            ]
    text = "\n".join(lines)
    print(text)
    if args.write_docs:
        write_section(REPO / "docs" / "benchmarks.md", "Extraction at ImageNet size (CPU)", text)


if __name__ == "__main__":
    main()
