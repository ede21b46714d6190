"""Time to open an ImageNet-layout tree: kdcache's scan and fingerprint against torchvision's.

    python benchmarks/bench_imagefolder_scan.py [--files 100000] [--classes 1000] [--write-docs]

Writes ``--files`` small files (a few bytes each: the scan reads names and sizes, never pixels)
into ``--classes`` class folders under a temporary directory, then times, each on a cold process
cache but a warm OS page cache (the second opening of a tree, which is what repeats):

* ``load_dataset("imagefolder", ...)``: kdcache's scan (one ``stat`` per file);
* ``SourceDataset.fingerprint()``: sha256 of every relative path and size;
* torchvision's ``ImageFolder(root)`` construction, the reference every loader pays;
* the previous kdcache scan (``sorted(rglob("*"))`` + ``is_file`` + ``stat``, three calls per file).

Figures are per 100k files.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks._docs import write_section  # noqa: E402
from kdcache.data import load_dataset  # noqa: E402
from kdcache.data.imagefolder import IMG_EXTENSIONS  # noqa: E402


def build_tree(root: Path, files: int, classes: int) -> None:
    for c in range(classes):
        (root / "train" / f"n{c:08d}").mkdir(parents=True)
    for i in range(files):
        path = root / "train" / f"n{i % classes:08d}" / f"img_{i:08d}.JPEG"
        path.write_bytes(b"x" * (i % 7 + 1))


def rglob_scan(folder: Path) -> int:
    """The scan kdcache used before (kept here only as the baseline)."""
    n = 0
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if len(rel.parts) < 2 or not path.is_file() or path.suffix.lower() not in IMG_EXTENSIONS:
            continue
        path.stat()
        n += 1
    return n


def timed(fn, repeats: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    from torchvision.datasets import ImageFolder

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        build_tree(root, args.files, args.classes)
        print(f"wrote {args.files} files in {time.perf_counter() - start:.1f} s", flush=True)
        per = 100_000 / args.files
        results = {
            "kdcache scan (`load_dataset`)": timed(
                lambda: load_dataset("imagefolder", root, "train"), args.repeats
            ),
        }
        data = load_dataset("imagefolder", root, "train")
        assert len(data) == args.files

        def fingerprint() -> None:
            data._fingerprint = None
            data.fingerprint()

        results["kdcache fingerprint"] = timed(fingerprint, args.repeats)
        results["torchvision `ImageFolder(root)`"] = timed(
            lambda: ImageFolder(str(root / "train")), args.repeats
        )
        results["previous kdcache scan (rglob + 3 stats)"] = timed(
            lambda: rglob_scan(root / "train"), args.repeats
        )
    rows = [f"| {name} | {seconds * per:.2f} | {seconds * per * 12.8:.0f} |"
            for name, seconds in results.items()]  # fmt: skip
    body = "\n".join(
        [
            "`python benchmarks/bench_imagefolder_scan.py --files "
            f"{args.files} --classes {args.classes}` ({os.cpu_count()} CPUs, local disk, warm "
            f"page cache, median of {args.repeats}):",
            "",
            "| step | seconds per 100k files | extrapolated to 1.28M files (s) |",
            "| --- | ---: | ---: |",
            *rows,
        ]
    )
    print(body)
    if args.write_docs:
        write_section(REPO / "docs" / "benchmarks.md", "Opening an image-folder tree", body)


if __name__ == "__main__":
    main()
