"""What proves a chunk belongs where it is read from: :func:`check_chunk`, which every read of
:class:`~kdcache.cache.reader.CacheReader` applies to the values it decoded.

The digests themselves are :mod:`.digest`; the scan of a whole cache built on this check is
:mod:`.scan`; the normative description is docs/cache-format.md §3.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kdcache.cache import schema
from kdcache.cache.digest import block_digest
from kdcache.cache.schema import CacheMeta
from kdcache.errors import CacheCorruptError


def _all_fill(values: np.ndarray, fill: Any) -> bool:
    """Whether every value equals the array's fill value (what zarr returns for a missing chunk)."""
    if isinstance(fill, float | np.floating) and np.isnan(fill):
        return bool(np.isnan(values).all())
    return bool((values == fill).all())


def missing_chunk(where: str) -> CacheCorruptError:
    return CacheCorruptError(
        f"{where} is missing although its block is marked written (it reads back as the fill "
        "value): the object was deleted or never copied. Fetch a complete copy of the cache, or "
        "re-extract it."
    )


def check_chunk(
    meta: CacheMeta,
    name: str,
    view: int,
    block: int,
    values: np.ndarray,
    *,
    fill: Any,
    expected_digest: bytes | None,
    where: str,
) -> None:
    """Raise :class:`CacheCorruptError` unless ``values``, read from ``name``'s chunk at (view,
    block), belong there.

    Format 1.2: the values must hash to ``expected_digest``, the digest recorded for (name, view,
    block) (all zero bytes: no record). Older caches have no digests (``expected_digest`` None): a
    chunk that reads entirely as the fill value is refused as missing, and float data must be
    finite; a chunk moved to another position goes unnoticed.
    """
    rows = meta.block_rows(block)
    if expected_digest is not None:
        if not any(expected_digest):
            raise CacheCorruptError(
                f"{where} has no digest record ({schema.BLOCK_DIGEST} of view {view}, block "
                f"{block}): the block was never completely written, or that object was "
                "deleted. Resume an unfinished cache with the same `kdcache extract` command; "
                "otherwise fetch a complete copy."
            )
        if block_digest(name, view, block, rows, values) != expected_digest:
            if _all_fill(values, fill):
                raise missing_chunk(where)
            raise CacheCorruptError(
                f"{where} does not hold the data recorded for that position (sha256 digest "
                "mismatch): a chunk was copied to the wrong place, or its bytes were replaced. "
                "Fetch an intact copy of the cache, or re-extract it."
            )
    elif _all_fill(values, fill):
        raise missing_chunk(where)
    # The tail log-sum-exp is -inf where no class is left outside the top-K (K = C).
    finite = np.isfinite(values) | (name == schema.TAIL_LSE_AT_T) & (values == -np.inf)
    if values.dtype.kind == "f" and not finite.all():
        raise CacheCorruptError(
            f"{where} holds NaN/Inf values; a kdcache writer never stores them. Fetch an "
            "intact copy of the cache, or re-extract it."
        )
