"""Upper bounds on a cache's sizes, checked before anything is allocated, created or read.

A cache's layout (views x samples x classes, rows per chunk) decides what one process must hold at
once: one decoded chunk while writing or reading a block, the labels, the completeness record. A
typo such as ``--chunk-rows 1000000000000`` or ``--views 1000000000`` would otherwise try to
allocate terabytes, or create millions of objects and then exhaust memory listing them; a cache
whose self-description claims such sizes (damaged, or hand-edited) would do the same to ``info``.
These checks refuse both with one line, before any allocation.
"""

from __future__ import annotations

import os

from kdcache.errors import ConfigError

MAX_VIEWS = 1 << 16  # the exhaustive CIFAR recipe has 162 distinct views
MAX_BLOCKS = 1 << 22  # (view, block) marks, each its own object: ~4 M is already hours of listing
MAX_CHUNK_ROWS = 1 << 24
MAX_SAMPLES = 1 << 36
MAX_SEED = (1 << 63) - 1  # seeds are mixed as unsigned 64-bit numbers; int64 keeps them portable
_MAX_CHUNK_BYTES = 1 << 31  # one decoded chunk: beyond this, reads and writes stall or fail
LABEL_CHUNK_FLOOR = 65536  # the labels array's chunks hold at least this many rows (arrays.py)


def physical_memory() -> int | None:
    """Bytes of RAM of this machine, None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_layout(
    *,
    num_views: int,
    num_samples: int,
    num_classes: int,
    chunk_rows: int,
    itemsize: int = 4,
    where: str = "",
    error: type[Exception] = ConfigError,
) -> None:
    """Raise ``error`` unless a cache of this layout fits this machine; see the module docstring.

    ``itemsize``: bytes per stored logit as decoded in memory (float32 before the cast: 4).
    """
    prefix = f"{where}: " if where else ""
    if not 1 <= num_views <= MAX_VIEWS:
        raise error(f"{prefix}{num_views} views is out of range: at most {MAX_VIEWS} are supported")
    if not 1 <= chunk_rows <= MAX_CHUNK_ROWS:
        raise error(
            f"{prefix}{chunk_rows} rows per chunk is out of range: 1 to {MAX_CHUNK_ROWS} "
            "(the default 1024 suits most datasets)"
        )
    if not 0 <= num_samples <= MAX_SAMPLES or not 1 <= num_classes <= MAX_SAMPLES:
        raise error(f"{prefix}{num_samples} samples x {num_classes} classes is out of range")
    blocks = num_views * -(-num_samples // chunk_rows)
    if blocks > MAX_BLOCKS:
        raise error(
            f"{prefix}{num_views} views x {num_samples} samples in chunks of {chunk_rows} rows "
            f"makes {blocks} blocks, more than the {MAX_BLOCKS} supported: use fewer views or "
            "more rows per chunk"
        )
    memory = physical_memory()
    limit = min(_MAX_CHUNK_BYTES, memory // 8) if memory else _MAX_CHUNK_BYTES
    chunk = chunk_rows * num_classes * itemsize  # zarr allocates whole chunks, even past N
    if chunk > limit:
        raise error(
            f"{prefix}one chunk of {chunk_rows} rows x {num_classes} classes needs "
            f"{chunk / 2**20:.0f} MiB in memory, more than the {limit / 2**20:.0f} MiB allowed on "
            "this machine: use fewer --chunk-rows"
        )
    labels = max(num_samples, chunk_rows, LABEL_CHUNK_FLOOR) * 8
    if memory and labels > memory // 4:
        raise error(
            f"{prefix}the labels of {num_samples} samples need {labels / 2**30:.1f} GiB, more "
            f"than a quarter of this machine's {memory / 2**30:.1f} GiB"
        )
