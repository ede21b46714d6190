"""The one place that talks to zarr: create, resume, and read caches.

Layout and meaning are specified in ``docs/cache-format.md`` and encoded in :mod:`.schema`. A
*block* is one chunk of rows of one view: the unit of writing, of the completeness record and of
reading. Writers mark a block done only after its data is written (zarr's LocalStore writes each
chunk to a temporary file and renames it, so a written chunk is whole), and each mark is its own
zarr chunk (its own file or object), so concurrent writers never read-modify-write a shared object.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import zarr
import zarr.storage
from zarr.abc.store import Store
from zarr.codecs import BytesCodec, Crc32cCodec, ZstdCodec

from kdcache.cache import bounds, locations, schema
from kdcache.cache.locations import open_zarr_store
from kdcache.cache.schema import CacheMeta
from kdcache.cache.sparse import SparseRows, sparse_rows_from_logits
from kdcache.errors import CacheCorruptError, CacheError, CacheMismatchError, KdcacheError

log = logging.getLogger(__name__)
T = TypeVar("T")

# zstd level 3: the chunk bytes shrink ~8-25% (logits are noisy floats), decoding stays cheap.
_COMPRESSORS = (ZstdCodec(level=3), Crc32cCodec())


def _codecs() -> dict[str, Any]:
    return {"serializer": BytesCodec(), "compressors": list(_COMPRESSORS)}


def _guard_read(what: str, fn: Callable[[], T], location: str = "") -> T:
    """Turn zarr's and the storage's failures into errors that name the damaged part."""
    try:
        return fn()
    except KdcacheError:
        raise
    except json.JSONDecodeError as exc:
        raise CacheCorruptError(
            f"corrupted cache metadata: a zarr.json document read for {what} is not valid JSON "
            f"({exc}). Fetch an intact copy of {location or 'the cache'}."
        ) from exc
    except ValueError as exc:
        if "checksum" in str(exc).lower():
            raise CacheCorruptError(
                f"corrupted cache chunk: {what} fails its crc32c checksum. The cache's bytes were "
                "damaged after writing; re-run `kdcache extract` with the same settings into a "
                "fresh directory, or fetch an intact copy."
            ) from exc
        raise
    except KeyError as exc:
        raise CacheCorruptError(
            f"cache {location} has no {exc} array (reading {what}): its objects were deleted or "
            "only partly copied. Fetch a complete copy."
        ) from exc
    except Exception as exc:
        err = locations.storage_error(exc, location or what)
        if err is None:
            raise
        raise err from exc


def _index_dtype(num_classes: int) -> str:
    return "int16" if num_classes <= np.iinfo(np.int16).max else "int32"


def _open_array(group: zarr.Group, name: str, location: str) -> zarr.Array:
    node = group[name]
    if not isinstance(node, zarr.Array):
        raise CacheCorruptError(f"cache {location}: {name!r} is not an array")
    return node


_SPARSE_ROW_STATS = (schema.LABEL_LOGIT, schema.LOGIT_MEAN, schema.LOGIT_STD)  # [V, N] each


def _data_arrays(storage: schema.StorageInfo) -> tuple[str, ...]:
    """The per-view arrays that hold the teacher's outputs in this storage mode."""
    if storage.mode == "dense":
        return (schema.LOGITS,)
    if storage.exact_sparse:
        return (
            schema.TOPK_VALUES,
            schema.TOPK_INDICES,
            schema.LSE_AT_T,
            schema.TAIL_LSE_AT_T,
            *_SPARSE_ROW_STATS,
        )
    return (schema.TOPK_VALUES, schema.TOPK_INDICES, schema.LOGSUMEXP)  # format 1.0 / 1.1


def _per_view_arrays(storage: schema.StorageInfo) -> tuple[str, ...]:
    return (
        *_data_arrays(storage),
        schema.INPUT_HASH,
        schema.BLOCK_DONE,
        schema.BLOCK_TOP1,
        schema.BLOCK_TOP5,
    )


class CacheWriter:
    """Writes blocks into a cache whose metadata is fixed. Obtain via :func:`open_for_writing`."""

    def __init__(self, group: zarr.Group, meta: CacheMeta, location: str = "") -> None:
        self.group = group
        self.meta = meta
        # Opened once: re-opening per block would re-read each array's zarr.json (slow on S3).
        self._arrays = {
            name: _open_array(group, name, location)
            for name in _per_view_arrays(meta.identity.storage)
        }
        self._done = self._arrays[schema.BLOCK_DONE]

    def done_mask(self) -> np.ndarray:
        """[V, n_blocks] bool: blocks already written and marked."""
        return np.asarray(self._done[:], dtype=bool)

    def write_block(
        self,
        view: int,
        block: int,
        logits: np.ndarray,  # [R, C] float32, R = rows of this block
        input_hashes: np.ndarray,  # [R] int64
        top1_correct: int,
        top5_correct: int,
        labels: np.ndarray | None = None,  # [R] true labels: sparse mode stores their logit
    ) -> None:
        rows = self.meta.block_rows(block)
        storage = self.meta.identity.storage
        expected = (rows.stop - rows.start, self.meta.identity.dataset.num_classes)
        if logits.shape != expected:
            raise ValueError(
                f"block ({view}, {block}) expects logits {expected}, got {logits.shape}"
            )
        if not np.isfinite(logits).all():
            raise CacheError(
                f"the teacher produced NaN/Inf logits in view {view}, rows {rows.start}-"
                f"{rows.stop - 1}: check the weights and the input normalisation"
            )
        if storage.mode == "dense":
            stored = logits.astype(storage.dtype)
            if not np.isfinite(stored).all():
                raise CacheError(
                    f"teacher logits overflow {storage.dtype} in view {view} (max |logit| "
                    f"{np.abs(logits).max():.4g}): extract with --dtype float32"
                )
            self._arrays[schema.LOGITS][view, rows, :] = stored
        else:
            if labels is None:
                raise ValueError("a sparse block needs the rows' labels")
            self._write_sparse(view, rows, logits, labels)
        self._arrays[schema.INPUT_HASH][view, rows] = input_hashes.astype(np.int64)
        self._arrays[schema.BLOCK_TOP1][view, block] = top1_correct
        self._arrays[schema.BLOCK_TOP5][view, block] = top5_correct
        # The mark comes last: a crash before this line leaves the block unmarked, so it is redone.
        self._done[view, block] = 1

    def _write_sparse(
        self, view: int, rows: slice, logits: np.ndarray, labels: np.ndarray
    ) -> None:
        storage = self.meta.identity.storage
        if not storage.exact_sparse:
            raise CacheError(
                "this sparse cache is of format 1.0/1.1 (log-sum-exp at T = 1 only); kdcache "
                "writes format 1.2 sparse rows only: extract into a fresh --out"
            )
        sparse = sparse_rows_from_logits(
            logits,
            labels,
            storage.topk or 0,
            storage.temperatures or (),
            index_dtype=str(self._arrays[schema.TOPK_INDICES].dtype),
        )
        assert sparse.tail_lse is not None and sparse.label_logit is not None  # format 1.2 rows
        assert sparse.logit_mean is not None and sparse.logit_std is not None
        self._arrays[schema.TOPK_VALUES][view, rows, :] = sparse.values
        self._arrays[schema.TOPK_INDICES][view, rows, :] = sparse.indices
        self._arrays[schema.LSE_AT_T][view, rows, :] = sparse.lse
        self._arrays[schema.TAIL_LSE_AT_T][view, rows, :] = sparse.tail_lse
        self._arrays[schema.LABEL_LOGIT][view, rows] = sparse.label_logit
        self._arrays[schema.LOGIT_MEAN][view, rows] = sparse.logit_mean
        self._arrays[schema.LOGIT_STD][view, rows] = sparse.logit_std

    def finalize(self) -> CacheMeta:
        """If every block is marked, record completeness and the teacher's accuracy per view."""
        if not self.done_mask().all():
            return self.meta
        n = self.meta.identity.dataset.num_samples
        top1 = np.asarray(self._arrays[schema.BLOCK_TOP1][:]).sum(axis=1) * 100.0 / n
        top5 = np.asarray(self._arrays[schema.BLOCK_TOP5][:]).sum(axis=1) * 100.0 / n
        meta = dataclasses.replace(
            self.meta,
            complete=True,
            teacher_top1=[round(float(x), 4) for x in top1],
            teacher_top5=[round(float(x), 4) for x in top5],
        )
        self.group.attrs[schema.ATTRS_KEY] = meta.to_dict()
        self.meta = meta
        return meta


def _create_layout(group: zarr.Group, meta: CacheMeta, labels: np.ndarray) -> None:
    ident = meta.identity
    V, N, C = ident.augmentation.num_views, ident.dataset.num_samples, ident.dataset.num_classes
    R, nb = ident.storage.chunk_rows, meta.num_blocks
    if ident.storage.mode == "dense":
        group.create_array(
            schema.LOGITS,
            shape=(V, N, C),
            chunks=(1, R, C),
            dtype=ident.storage.dtype,
            fill_value=float("nan"),
            **_codecs(),
        )
    else:
        K = ident.storage.topk or 0
        nT = len(ident.storage.temperatures or ())
        group.create_array(
            schema.TOPK_VALUES,
            shape=(V, N, K),
            chunks=(1, R, K),
            dtype="float32",
            fill_value=float("nan"),
            **_codecs(),
        )
        group.create_array(
            schema.TOPK_INDICES,
            shape=(V, N, K),
            chunks=(1, R, K),
            dtype=_index_dtype(C),
            fill_value=-1,
            **_codecs(),
        )
        for name in (schema.LSE_AT_T, schema.TAIL_LSE_AT_T):
            group.create_array(
                name,
                shape=(V, N, nT),
                chunks=(1, R, nT),
                dtype="float32",
                fill_value=float("nan"),
                **_codecs(),
            )
        for name in _SPARSE_ROW_STATS:
            group.create_array(
                name,
                shape=(V, N),
                chunks=(1, R),
                dtype="float32",
                fill_value=float("nan"),
                **_codecs(),
            )
    group.create_array(
        schema.INPUT_HASH, shape=(V, N), chunks=(1, R), dtype="int64", fill_value=0, **_codecs()
    )
    lab = group.create_array(
        schema.LABELS,
        shape=(N,),
        chunks=(max(R, 65536),),
        dtype="int64",
        fill_value=-1,
        **_codecs(),
    )
    lab[:] = labels.astype(np.int64)
    # One chunk per block: each mark / count is its own object (no shared read-modify-write).
    group.create_array(
        schema.BLOCK_DONE, shape=(V, nb), chunks=(1, 1), dtype="uint8", fill_value=0, **_codecs()
    )
    for name in (schema.BLOCK_TOP1, schema.BLOCK_TOP5):
        group.create_array(
            name, shape=(V, nb), chunks=(1, 1), dtype="int64", fill_value=-1, **_codecs()
        )
    # Attributes last: a directory without them is not (yet) a cache and is recreated.
    group.attrs[schema.ATTRS_KEY] = meta.to_dict()


def _read_meta(group: zarr.Group, location: str) -> CacheMeta:
    attrs = group.attrs.asdict()
    if schema.ATTRS_KEY not in attrs:
        raise CacheError(
            f"{location} is a zarr group but not a kdcache cache "
            f"(no '{schema.ATTRS_KEY}' attribute)"
        )
    record = attrs[schema.ATTRS_KEY]
    if not isinstance(record, dict):
        raise CacheError(f"{location}: the '{schema.ATTRS_KEY}' attribute is not a JSON object")
    return CacheMeta.from_dict(dict(record))


def open_for_writing(
    location: str, meta: CacheMeta, labels: np.ndarray, *, create: bool
) -> CacheWriter:
    """Create a cache at ``location``, or reopen one with the same identity to resume it.

    Refuses (without touching anything) a location holding a cache of other settings, or a
    non-empty directory that is not a cache. ``create=False`` (non-zero ranks) only reopens.
    """
    store = open_zarr_store(location, read_only=False)
    existing = _guard_read("the group metadata", lambda: _try_open_group(store), location)
    if existing is not None and schema.ATTRS_KEY in existing.attrs:
        old = _read_meta(existing, location)
        if old.identity != meta.identity:
            diffs = "\n  ".join(old.identity.differences(meta.identity)[:12])
            raise CacheMismatchError(
                f"{location} already holds a different cache (fingerprint {old.fingerprint[:12]}); "
                f"refusing to overwrite it. Differences (existing != requested):\n  {diffs}\n"
                "Choose another --out, or re-run with the existing cache's settings to resume it."
            )
        log.info(
            "resuming cache %s (%d of %d blocks done)",
            location,
            int(np.asarray(_open_array(existing, schema.BLOCK_DONE, location)[:]).sum()),
            old.num_blocks * old.identity.augmentation.num_views,
        )
        merged = old.with_producers(meta.producers)
        if create and merged is not old:  # rank 0 records a new forward configuration
            existing.attrs[schema.ATTRS_KEY] = merged.to_dict()
        return CacheWriter(existing, merged, location)
    if not create:
        raise CacheError(f"{location} has no cache to join; rank 0 must create it first")
    if existing is None and locations.holds_other_content(location):
        kind = "prefix" if locations.is_url(location) else "directory"
        raise CacheError(
            f"{location} is a non-empty {kind} that is not a kdcache cache; refusing to write "
            f"into it. Choose an empty or new --out {kind}."
        )
    group = zarr.open_group(store=store, mode="w", zarr_format=3)
    _create_layout(group, meta, labels)
    return CacheWriter(group, meta, location)


def _try_open_group(store: Store) -> zarr.Group | None:
    try:
        return zarr.open_group(store=store, mode="r+", zarr_format=3)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, zarr.errors.NodeTypeValidationError):
        return None


class CacheReader:
    """Read-only access to a cache. Never writes, whatever the location."""

    def __init__(self, group: zarr.Group, meta: CacheMeta, location: str) -> None:
        self.group = group
        self.meta = meta
        self.location = location
        # Array handles, opened once: each `group[name]` reads the array's zarr.json again, which
        # over an object store is one request per block read.
        self._arrays: dict[str, zarr.Array] = {}

    def _array(self, name: str) -> zarr.Array:
        array = self._arrays.get(name)
        if array is None:
            array = self._arrays[name] = _open_array(self.group, name, self.location)
        return array

    @property
    def identity(self) -> schema.CacheIdentity:
        return self.meta.identity

    def _read(self, what: str, fn: Callable[[], T]) -> T:
        return _guard_read(what, fn, self.location)

    def labels(self) -> np.ndarray:
        return np.asarray(self._read(schema.LABELS, lambda: self._array(schema.LABELS)[:]))

    def done_mask(self) -> np.ndarray:
        """[V, n_blocks] bool completeness record."""
        return np.asarray(
            self._read(schema.BLOCK_DONE, lambda: self._array(schema.BLOCK_DONE)[:]), dtype=bool
        )

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

    def read_dense(self, view: int, block: int) -> np.ndarray:
        """Logits of one block, [R, C] in the stored dtype."""
        if self.identity.storage.mode != "dense":
            raise CacheError("this cache is sparse (top-K); it holds no dense logits")
        rows = self.meta.block_rows(block)
        return np.asarray(
            self._read(
                f"{schema.LOGITS} chunk (view {view}, block {block})",
                lambda: self._array(schema.LOGITS)[view, rows, :],
            )
        )

    def read_sparse(self, view: int, block: int) -> SparseRows:
        """The sparse rows of one block (format 1.0/1.1: top-K and LSE at T = 1 only)."""
        storage = self.identity.storage
        if storage.mode != "sparse":
            raise CacheError("this cache is dense; it holds no top-K arrays")
        rows = self.meta.block_rows(block)
        where = f"(view {view}, block {block})"

        def read(name: str) -> np.ndarray:
            return np.asarray(
                self._read(f"{name} chunk {where}", lambda: self._array(name)[view, rows])
            )

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
        rows = self.meta.block_rows(block)
        return np.asarray(
            self._read(
                f"{schema.INPUT_HASH} chunk (view {view}, block {block})",
                lambda: self._array(schema.INPUT_HASH)[view, rows],
            )
        )

    def block_correct_counts(self) -> tuple[np.ndarray, np.ndarray]:
        """Teacher top-1 and top-5 hits per block, [V, n_blocks] each (-1 where not written)."""
        return (
            np.asarray(self._read(schema.BLOCK_TOP1, lambda: self._array(schema.BLOCK_TOP1)[:])),
            np.asarray(self._read(schema.BLOCK_TOP5, lambda: self._array(schema.BLOCK_TOP5)[:])),
        )

    def stored_bytes(self) -> int | None:
        """Total bytes of the stored objects, when the store can list sizes (not http)."""
        return locations.stored_size(self.group.store, self.location)

    @property
    def local_copies(self) -> Path | None:
        """Where local copies of a remote cache's chunks are kept (None: local or off)."""
        return locations.local_copy_dir(self.group.store)


def _check_bounds(meta: CacheMeta, location: str) -> None:
    """Refuse a self-description claiming sizes this machine cannot hold, before reading more."""
    ident = meta.identity
    bounds.check_layout(
        num_views=ident.augmentation.num_views,
        num_samples=ident.dataset.num_samples,
        num_classes=ident.dataset.num_classes,
        chunk_rows=ident.storage.chunk_rows,
        where=f"cache {location} claims sizes this machine cannot hold (damaged or edited "
        "metadata?)",
        error=CacheCorruptError,
    )


def open_cache(location: str, *, cache_dir: str | os.PathLike[str] | None = None) -> CacheReader:
    """Open a cache read-only; a clear error if there is none or it is of a newer format.

    Remote caches (fsspec URLs) that are complete keep local copies of the chunks they read under
    ``cache_dir`` (default: $KDCACHE_REMOTE_CACHE_DIR, else ~/.cache/kdcache/remote; "off" turns
    them off), so that later epochs and later runs do not download again.
    """
    store = open_zarr_store(location, read_only=True, cache_dir=cache_dir)
    try:
        group = _guard_read(
            "the group metadata",
            lambda: zarr.open_group(store=store, mode="r", zarr_format=3),
            location,
        )
    except (
        FileNotFoundError,
        zarr.errors.GroupNotFoundError,
        zarr.errors.NodeTypeValidationError,
    ) as exc:
        raise locations.missing_cache_error(location) from exc
    meta = _read_meta(group, location)
    _check_bounds(meta, location)
    if meta.complete:
        # A complete cache's chunks never change again: safe to keep local copies of.
        locations.enable_chunk_cache(store, location, meta.fingerprint, meta.created)
    return CacheReader(group, meta, location)
