"""Reading a cache: :func:`open_cache` and :class:`CacheReader`.

Layout and meaning are specified in ``docs/cache-format.md`` and encoded in :mod:`.schema` and
:mod:`.arrays`. A *block* is one chunk of rows of one view: the unit of writing, of the completeness
record and of reading. Every array's metadata is checked against the table of arrays when the cache
is opened, and every chunk read is checked against its position-bound digest (:mod:`.integrity`),
so a moved, altered or missing chunk is an error naming it, never data.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import zarr
import zarr.errors

from kdcache.cache import chunk_copies, schema, zarr_stores
from kdcache.cache.digest import digested_arrays
from kdcache.cache.group import (
    array_not_cache_error,
    check_bounds,
    guard_read,
    open_arrays,
    read_meta,
)
from kdcache.cache.integrity import check_chunk
from kdcache.cache.location import CacheLocation, parse_location
from kdcache.cache.schema import CacheMeta
from kdcache.cache.sparse import SparseRows
from kdcache.errors import CacheCorruptError, CacheError, KdcacheError

T = TypeVar("T")


class CacheReader:
    """Read-only access to a cache. Never writes, whatever the location. Obtain via
    :func:`open_cache`."""

    def __init__(
        self,
        group: zarr.Group,
        meta: CacheMeta,
        location: CacheLocation,
        arrays: dict[str, zarr.Array],
    ) -> None:
        self.group = group
        self.meta = meta
        self.parsed_location = location
        self._arrays = arrays  # opened and checked once (group.open_arrays)
        digested = digested_arrays(meta.identity.storage, meta.identity.augmentation.mixed)
        self._digest_slot = {name: i for i, name in enumerate(digested)}
        self._digest_records: dict[tuple[int, int], np.ndarray] = {}  # (view, block) -> [A, 32]

    @property
    def location(self) -> str:
        """The location as the user gave it (messages, run records)."""
        return self.parsed_location.raw

    @property
    def identity(self) -> schema.CacheIdentity:
        return self.meta.identity

    def _read(self, what: str, fn: Callable[[], T]) -> T:
        return guard_read(what, fn, self.parsed_location)

    def _whole(self, name: str) -> np.ndarray:
        return np.asarray(self._read(name, lambda: self._arrays[name][:]))

    def labels(self) -> np.ndarray:
        """The cache's labels [N] int64, checked against ``labels_sha256`` (format 1.3)."""
        labels = self._whole(schema.LABELS)
        if (problem := self.meta.labels_problem(labels)) is not None:
            raise CacheCorruptError(
                f"cache {self.location}: the {schema.LABELS!r} array {problem}. Fetch an intact "
                "copy of the cache, or re-extract it."
            )
        return labels

    def done_mask(self) -> np.ndarray:
        """[V, n_blocks] bool completeness record."""
        return self._whole(schema.BLOCK_DONE).astype(bool)

    def require_complete(self) -> None:
        mask = self.done_mask()
        if not mask.all():
            missing = np.argwhere(~mask)
            shown = ", ".join(f"(view {v}, block {b})" for v, b in missing[:5])
            raise CacheError(
                f"cache {self.location} is incomplete: {len(missing)} of {mask.size} blocks were "
                f"never written ({shown}{', ...' if len(missing) > 5 else ''}). Resume it by "
                "re-running the same `kdcache extract` command."
            )

    @property
    def has_block_digests(self) -> bool:
        """Whether reads are checked against position-bound digests (format >= 1.2)."""
        return self.meta.has_block_digests

    def integrity_note(self) -> str:
        """What the reads of this cache prove about each chunk's place, in one line."""
        if self.has_block_digests:
            return "every chunk matches the sha256 digest recorded for its (array, view, block)"
        return (
            f"format {self.meta.format_version} records no block digests: a missing chunk is "
            "caught, but a valid chunk copied to another position, or replaced by other finite "
            "values, is not (re-extract with this kdcache for format 1.2)"
        )

    def _digest_record(self, view: int, block: int) -> np.ndarray:
        """[A, 32] uint8: the digests recorded for block (view, block); all zero if none.

        The first miss in a view reads the whole view's records at once (zarr fetches its
        n_blocks small chunks concurrently; one call instead of one per block read), so a
        training epoch pays one digest read per view, not per block.
        """
        record = self._digest_records.get((view, block))
        if record is not None:
            return record
        digests = self._arrays[schema.BLOCK_DIGEST]
        try:
            records = np.asarray(
                self._read(f"{schema.BLOCK_DIGEST} (view {view})", lambda: digests[view])
            )
        except KdcacheError:  # a damaged record: read this block's alone, to name it
            records = None
        if records is not None:
            for b in np.flatnonzero(records.reshape(len(records), -1).any(axis=1)).tolist():
                self._digest_records[(view, b)] = records[b]  # only written records are final
            return records[block]
        return np.asarray(
            self._read(
                f"{schema.BLOCK_DIGEST} (view {view}, block {block})",
                lambda: digests[view, block],
            )
        )

    def _checked(self, name: str, view: int, block: int, values: np.ndarray) -> np.ndarray:
        """``values`` read from ``name``'s chunk at (view, block), once proven to belong there."""
        rows = self.meta.block_rows(block)
        expected = None
        if self.has_block_digests:
            expected = self._digest_record(view, block)[self._digest_slot[name]].tobytes()
        check_chunk(
            self.meta,
            name,
            view,
            block,
            values,
            fill=self._arrays[name].fill_value,
            expected_digest=expected,
            where=f"{name} chunk (view {view}, block {block}, rows {rows.start}-{rows.stop - 1}) "
            f"of {self.location}",
        )
        return values

    def read_dense(self, view: int, block: int) -> np.ndarray:
        """Logits of one block, [R, C] in the stored dtype, checked against its digest."""
        if self.identity.storage.mode != "dense":
            raise CacheError("this cache is sparse (top-K); it holds no dense logits")
        return self._read_block(schema.LOGITS, view, block)

    def _read_block(self, name: str, view: int, block: int) -> np.ndarray:
        rows = self.meta.block_rows(block)
        values = np.asarray(
            self._read(
                f"{name} chunk (view {view}, block {block})",
                lambda: self._arrays[name][view, rows, ...],
            )
        )
        return self._checked(name, view, block, values)

    def read_sparse(self, view: int, block: int) -> SparseRows:
        """The sparse rows of one block, checked against their digests (format 1.0/1.1: top-K and
        the log-sum-exp at T = 1 only)."""
        storage = self.identity.storage
        if storage.mode != "sparse":
            raise CacheError("this cache is dense; it holds no top-K arrays")

        def read(name: str) -> np.ndarray:
            return self._read_block(name, view, block)

        values, indices = read(schema.TOPK_VALUES), read(schema.TOPK_INDICES)
        if not storage.exact_sparse:
            return SparseRows(
                values=values.astype(np.float32),
                indices=indices,
                temperatures=(1.0,),
                lse=read(schema.LOGSUMEXP)[:, None],
            )
        return SparseRows(
            values=values,
            indices=indices,
            temperatures=storage.temperatures or (),
            lse=read(schema.LSE_AT_T),
            tail_lse=read(schema.TAIL_LSE_AT_T),
            label_logit=read(schema.LABEL_LOGIT),
            logit_mean=read(schema.LOGIT_MEAN),
            logit_std=read(schema.LOGIT_STD),
        )

    def read_input_hashes(self, view: int, block: int) -> np.ndarray:
        """Input hashes of one block, [R] int64, checked against its digest."""
        return self._read_block(schema.INPUT_HASH, view, block)

    def read_mix(self, view: int, block: int) -> tuple[np.ndarray, np.ndarray]:
        """A mixed recipe's partners (int64 [R]) and effective lambdas (float32 [R]) of one block,
        checked against their digests."""
        if not self.identity.augmentation.mixed:
            raise CacheError(
                f"recipe {self.identity.augmentation.recipe!r} mixes nothing: this cache holds no "
                "partners or lambdas"
            )
        partners = self._read_block(schema.MIX_PARTNER, view, block)
        return partners, self._read_block(schema.MIX_LAMBDA, view, block)

    def read_block_counts(self, view: int, block: int) -> tuple[int, int]:
        """The teacher's top-1 and top-5 hits recorded for one block, checked against its digest."""
        counts = []
        for name in (schema.BLOCK_TOP1, schema.BLOCK_TOP5):
            one = functools.partial(self._arrays[name].__getitem__, (view, block))
            value = np.asarray(self._read(f"{name} (view {view}, block {block})", one))
            counts.append(int(self._checked(name, view, block, value)))
        return counts[0], counts[1]

    def block_correct_counts(self) -> tuple[np.ndarray, np.ndarray]:
        """Teacher top-1 and top-5 hits per block, [V, n_blocks] each (-1 where not written)."""
        return self._whole(schema.BLOCK_TOP1), self._whole(schema.BLOCK_TOP5)

    def stored_bytes(self) -> int | None:
        """Total bytes of the stored objects, when the store can list sizes (not http)."""
        return zarr_stores.stored_size(self.group.store, self.parsed_location)

    @property
    def local_copies(self) -> Path | None:
        """Where local copies of a remote cache's chunks are kept (None: local or off)."""
        return chunk_copies.local_copy_dir(self.group.store)


def open_cache(
    where: str | os.PathLike[str] | CacheLocation,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
) -> CacheReader:
    """Open a cache read-only; a clear error if there is none, it is of a newer format, or an
    array's metadata is not what the table of arrays says.

    Remote caches (fsspec URLs) that are complete keep local copies of the chunks they read under
    ``cache_dir``, so that later epochs and later runs do not download again. Precedence: the
    ``cache_dir`` argument, else $KDCACHE_REMOTE_CACHE_DIR, else ~/.cache/kdcache/remote; "off"
    (either way) keeps no copies.
    """
    location = parse_location(where)
    store = zarr_stores.open_zarr_store(location, read_only=True, cache_dir=cache_dir)
    try:
        group = guard_read(
            "the group metadata",
            lambda: zarr.open_group(store=store, mode="r", zarr_format=3),
            location,
        )
    except zarr.errors.ContainsArrayError as exc:
        raise array_not_cache_error(location) from exc
    except (
        FileNotFoundError,
        zarr.errors.GroupNotFoundError,
        zarr.errors.NodeTypeValidationError,
    ) as exc:
        raise zarr_stores.missing_cache_error(location) from exc
    meta = read_meta(group, location)
    check_bounds(meta, location)
    arrays = open_arrays(group, meta, location)
    if meta.complete:
        # A complete cache's chunks never change again: safe to keep local copies of.
        chunk_copies.enable_chunk_cache(store, location, meta.fingerprint, meta.created)
    return CacheReader(group, meta, location, arrays)
