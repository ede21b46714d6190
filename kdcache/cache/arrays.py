"""The table of a cache's arrays (docs/cache-format.md §2) as data: shape, chunks, dtype, fill.

The writer creates a new cache's arrays from this table, and the reader (and a resuming writer)
compares every array's stored zarr metadata with it on open, so that an edited ``zarr.json``
(another dtype or chunk shape) is refused as a damaged cache instead of failing deep inside a read.
Pure: no IO, no zarr.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from kdcache.cache import schema
from kdcache.cache.bounds import LABEL_CHUNK_FLOOR
from kdcache.cache.digest import DIGEST_BYTES, digested_arrays

NAN = float("nan")
BLOCK_COUNTS = (schema.BLOCK_TOP1, schema.BLOCK_TOP5)  # the teacher's hits per block


@dataclass(frozen=True)
class ArraySpec:
    """One row of the table: what an array of this cache must look like."""

    name: str
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    dtype: str  # numpy dtype name, as zarr reports it
    fill: float | int  # NaN for the float arrays: a missing chunk reads as NaN

    def fill_matches(self, value: object) -> bool:
        """Whether a stored fill value is this one (NaN equals NaN here)."""
        try:
            stored = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return False
        if math.isnan(float(self.fill)):
            return math.isnan(stored)
        return stored == float(self.fill)


def index_dtype(num_classes: int) -> str:
    """``topk_indices``'s dtype: int16 while every class index fits, else int32."""
    return "int16" if num_classes <= np.iinfo(np.int16).max else "int32"


def array_specs(meta: schema.CacheMeta) -> tuple[ArraySpec, ...]:
    """Every array of a cache with this metadata, in creation order (``labels`` before the
    per-block records, whose marks make blocks count as written)."""
    ident = meta.identity
    storage = ident.storage
    V, N, C = ident.augmentation.num_views, ident.dataset.num_samples, ident.dataset.num_classes
    R, nb = storage.chunk_rows, meta.num_blocks

    def rows(name: str, dtype: str, fill: float | int, *tail: int) -> ArraySpec:
        """A per-view array of rows, one chunk per block."""
        return ArraySpec(name, (V, N, *tail), (1, R, *tail), dtype, fill)

    specs: list[ArraySpec] = []
    if storage.mode == "dense":
        specs.append(rows(schema.LOGITS, storage.dtype, NAN, C))
    else:
        K = storage.topk or 0
        # 1.0/1.1 sparse caches stored their top-K values in storage.dtype; 1.2 in float32.
        values_dtype = "float32" if storage.exact_sparse else storage.dtype
        specs += [
            rows(schema.TOPK_VALUES, values_dtype, NAN, K),
            rows(schema.TOPK_INDICES, index_dtype(C), -1, K),
        ]
        if storage.exact_sparse:
            nT = len(storage.temperatures or ())
            normalisers = (schema.LSE_AT_T, schema.TAIL_LSE_AT_T)
            specs += [rows(name, "float32", NAN, nT) for name in normalisers]
            specs += [rows(name, "float32", NAN) for name in schema.SPARSE_ROW_STATS]
        else:
            specs.append(rows(schema.LOGSUMEXP, "float32", NAN))
    specs.append(rows(schema.INPUT_HASH, "int64", 0))
    if ident.augmentation.mixed:
        specs += [rows(schema.MIX_PARTNER, "int64", -1), rows(schema.MIX_LAMBDA, "float32", NAN)]
    specs.append(ArraySpec(schema.LABELS, (N,), (max(R, LABEL_CHUNK_FLOOR),), "int64", -1))
    # One chunk per block: each mark / count / digest record is its own object, so concurrent
    # writers never read-modify-write a shared object.
    specs.append(ArraySpec(schema.BLOCK_DONE, (V, nb), (1, 1), "uint8", 0))
    specs += [ArraySpec(name, (V, nb), (1, 1), "int64", -1) for name in BLOCK_COUNTS]
    if meta.has_block_digests:
        A = len(digested_arrays(storage, ident.augmentation.mixed))
        record = (A, DIGEST_BYTES)
        specs.append(ArraySpec(schema.BLOCK_DIGEST, (V, nb, *record), (1, 1, *record), "uint8", 0))
    return tuple(specs)
