"""What the position-bound block digests cost a reader, side by side in one run.

    python benchmarks/bench_digest.py [--samples 50000] [--classes 100] [--chunk-rows 1024]
                                      [--repeats 5] [--write-docs]

A dense float16 cache of ``--samples`` x ``--classes`` random logits (one view; the speed of
reading does not depend on the values) is written once with kdcache's writer. Then, alternating
within each repeat, every block is read:

* ``checked``: ``CacheReader.read_dense`` as ``train``'s stream, ``verify`` and the public loader
  read it: decode, then the chunk's sha256 digest compared with the record for its position;
* ``zarr only``: the same chunks straight from zarr (decode only, no check);
* ``digests only``: the digest computation alone over the decoded blocks (``block_digest``);
* ``digest records read``: the view's digest records alone (one small zarr chunk per block,
  so that ranks writing blocks concurrently never share a chunk; read in one call per view);
* ``opening the reader``: ``open_cache`` alone (metadata and completeness record).

The median of ``--repeats`` is kept; the ratio ``checked / zarr only`` is the price of the check.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import zarr

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks._docs import write_section  # noqa: E402
from kdcache.cache import schema  # noqa: E402
from kdcache.cache.digest import block_digest  # noqa: E402
from kdcache.cache.reader import open_cache  # noqa: E402
from kdcache.cache.writer import open_for_writing  # noqa: E402


def write_cache(path: Path, samples: int, classes: int, chunk_rows: int) -> schema.CacheMeta:
    ident = schema.CacheIdentity(
        teacher=schema.TeacherInfo("resnet8", "ab" * 32, 123),
        dataset=schema.DatasetInfo("synthetic", "train", samples, classes, "f" * 64, {}),
        augmentation=schema.AugmentationInfo("none", {}, 0, 1),
        storage=schema.StorageInfo("dense", "float16", chunk_rows),
    )
    meta = schema.CacheMeta(identity=ident, versions={}, created="bench")
    rng = np.random.default_rng(0)
    writer = open_for_writing(str(path), meta, np.arange(samples) % classes, create=True)
    for b in range(meta.num_blocks):
        rows = meta.block_rows(b)
        logits = rng.normal(size=(rows.stop - rows.start, classes)).astype(np.float32)
        writer.write_block(0, b, logits, np.arange(rows.start, rows.stop), 0, 0)
    writer.finalize()
    return meta


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=50_000)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--chunk-rows", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cache.zarr"
        meta = write_cache(path, args.samples, args.classes, args.chunk_rows)
        blocks = range(meta.num_blocks)
        logits = zarr.open_group(str(path), mode="r")[schema.LOGITS]
        decoded = [np.asarray(logits[0, meta.block_rows(b)]) for b in blocks]

        def checked() -> None:
            reader = open_cache(str(path))  # a fresh reader: digest records are read, not kept
            for b in blocks:
                reader.read_dense(0, b)

        records = zarr.open_group(str(path), mode="r")[schema.BLOCK_DIGEST]

        def records_only() -> None:
            np.asarray(records[0])  # every block's record of view 0, one call (as the reader)

        def open_only() -> None:
            open_cache(str(path))

        def zarr_only() -> None:
            for b in blocks:
                np.asarray(logits[0, meta.block_rows(b)])

        def digests_only() -> None:
            for b, values in zip(blocks, decoded, strict=True):
                block_digest(schema.LOGITS, 0, b, meta.block_rows(b), values)

        modes = {"checked": checked, "zarr only": zarr_only, "digests only": digests_only,
                 "digest records read": records_only, "opening the reader": open_only}  # fmt: skip
        times: dict[str, list[float]] = {name: [] for name in modes}
        for r in range(args.repeats):
            names = list(modes)[r % len(modes) :] + list(modes)[: r % len(modes)]
            for name in names:
                times[name].append(timed(modes[name]))
    medians = {name: statistics.median(t) for name, t in times.items()}
    ratio = medians["checked"] / medians["zarr only"]
    command = (
        f"python benchmarks/bench_digest.py --samples {args.samples} --classes {args.classes} "
        f"--chunk-rows {args.chunk_rows} --repeats {args.repeats}"
    )
    lines = [
        f"`{command}` (median of {args.repeats}, modes alternating; 2 shared CPU cores):",
        "",
        f"| read every block of a {args.samples:,} x {args.classes} float16 cache | seconds |",
        "| --- | ---: |",
        *(f"| {name} | {medians[name]:.3f} |" for name in modes),
        "",
        f"checked / zarr only = {ratio:.2f}. Of the difference "
        f"({medians['checked'] - medians['zarr only']:.3f} s), the sha256 of the decoded values "
        f"is {medians['digests only']:.3f} s, reading the digest records "
        f"{medians['digest records read']:.3f} s (once per view and epoch: {meta.num_blocks} small "
        f"chunks) and opening the reader {medians['opening the reader']:.3f} s.",
    ]
    print("\n".join(lines))
    if args.write_docs:
        write_section(REPO / "docs" / "benchmarks.md", "Block digests", "\n".join(lines))
    return {**medians, "ratio": ratio}


if __name__ == "__main__":
    main()
