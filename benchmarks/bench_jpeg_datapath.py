"""The JPEG data path alone: kdcache's seeded views against torchvision's ImageFolder loader.

    python benchmarks/bench_jpeg_datapath.py [--images 1024] [--size 400x300] [--workers 2]
        [--repeats 3] [--write-docs]

Writes ``--images`` JPEGs (real CIFAR-100 images from ../shared/data upscaled to ``--size``, the
typical ImageNet image being about 400 x 350) into 1000 class folders, then times, alternating and
keeping the median of each, a full pass of

* kdcache: ``SeededViews(imagefolder, imagenet recipe)``: PIL decode -> uint8 tensor -> seeded
  random-resized crop 224 + flip -> input hash;
* torchvision: ``ImageFolder(root, Compose([RandomResizedCrop(224), RandomHorizontalFlip(),
  PILToTensor()]))``: PIL decode -> crop/resize on the PIL image -> uint8 tensor;

through the same ``DataLoader`` (batch 64, ``--workers`` processes). The figure is the ratio of
images/s (>= 0.9 is the target of issue #11).
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

from benchmarks._docs import write_section  # noqa: E402
from benchmarks._jpeg import cifar_pixels, jpeg_tree  # noqa: E402
from kdcache.augment import create_recipe  # noqa: E402
from kdcache.data import load_dataset  # noqa: E402
from kdcache.views import SeededViews, view_items  # noqa: E402


def pass_seconds(dataset: torch.utils.data.Dataset, workers: int) -> float:
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=64, num_workers=workers, prefetch_factor=4 if workers else None
    )
    start = time.perf_counter()
    for _ in loader:
        pass
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--size", default="400x300")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    from torchvision import datasets, transforms

    w, h = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        jpeg_tree(root, cifar_pixels(args.data_dir, args.images, "train"), 1000, (w, h))
        source = load_dataset("imagefolder", root, "train")
        ours = SeededViews(
            source, create_recipe("imagenet", source.spec), 0, view_items([0], len(source))
        )
        theirs = datasets.ImageFolder(
            str(root / "train"),
            transforms.Compose(
                [
                    transforms.RandomResizedCrop(224),
                    transforms.RandomHorizontalFlip(),
                    transforms.PILToTensor(),
                ]
            ),
        )
        times: dict[str, list[float]] = {"kdcache": [], "torchvision": []}
        for _ in range(args.repeats):
            times["torchvision"].append(pass_seconds(theirs, args.workers))
            times["kdcache"].append(pass_seconds(ours, args.workers))
    rate = {k: args.images / statistics.median(v) for k, v in times.items()}
    body = "\n".join(
        [
            f"`python benchmarks/bench_jpeg_datapath.py --images {args.images} --size {args.size} "
            f"--workers {args.workers} --repeats {args.repeats}` (2 shared CPUs, median of "
            f"{args.repeats}, alternating):",
            "",
            "| loader | images/s |",
            "| --- | ---: |",
            f"| torchvision `ImageFolder` + `RandomResizedCrop(224)` + flip | "
            f"{rate['torchvision']:.0f} |",
            f"| kdcache seeded views (decode + `imagenet` recipe + input hash) | "
            f"{rate['kdcache']:.0f} |",
            f"| ratio kdcache / torchvision | {rate['kdcache'] / rate['torchvision']:.2f} |",
        ]
    )
    print(body)
    if args.write_docs:
        write_section(REPO / "docs" / "benchmarks.md", "JPEG data path", body)


if __name__ == "__main__":
    main()
