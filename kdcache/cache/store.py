"""The one place that talks to zarr: create, resume, and read caches.

Layout and meaning are specified in ``docs/cache-format.md`` and encoded in :mod:`.schema`. A
*block* is one chunk of rows of one view: the unit of writing, of the completeness record and of
reading. Writers mark a block done only after its data and its digest record are written (zarr's
LocalStore writes each chunk to a temporary file and renames it, so a written chunk is whole), and
each mark and each digest record is its own zarr chunk (its own file or object), so concurrent
writers never read-modify-write a shared object. Readers check every chunk they read against its
position-bound digest (:mod:`.digest`), so a moved, altered or missing chunk is an error naming it,
never data.
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

from kdcache.cache import bounds, layout, schema, zarr_stores
from kdcache.cache.digest import DIGEST_BYTES, block_digest, digested_arrays
from kdcache.cache.location import CacheLocation, parse_location
from kdcache.cache.schema import CacheMeta
from kdcache.cache.sparse import SparseRows, sparse_rows_from_logits
from kdcache.errors import (
    CacheCorruptError,
    CacheError,
    CacheMismatchError,
    DataNotFoundError,
    KdcacheError,
)

log = logging.getLogger(__name__)
T = TypeVar("T")


def _guard_read(what: str, fn: Callable[[], T], location: CacheLocation) -> T:
    """Turn zarr's and the storage's failures into errors that name the damaged part."""
    try:
        return fn()
    except KdcacheError:
        raise
    except json.JSONDecodeError as exc:
        raise CacheCorruptError(
            f"corrupted cache metadata: a zarr.json document read for {what} is not valid JSON "
            f"({exc}). Fetch an intact copy of {location}."
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
        err = zarr_stores.storage_error(exc, location)
        if err is None:
            raise
        raise err from exc


def _index_dtype(num_classes: int) -> str:
    return "int16" if num_classes <= np.iinfo(np.int16).max else "int32"


def _open_array(group: zarr.Group, name: str, location: CacheLocation) -> zarr.Array:
    node = group[name]
    if not isinstance(node, zarr.Array):
        raise CacheCorruptError(f"cache {location}: {name!r} is not an array")
    return node


def _digested(meta: CacheMeta) -> tuple[str, ...]:
    return digested_arrays(meta.identity.storage, meta.identity.augmentation.mixed)


def _per_view_arrays(meta: CacheMeta) -> tuple[str, ...]:
    names = (*_digested(meta), schema.BLOCK_DONE)
    return (*names, schema.BLOCK_DIGEST) if meta.has_block_digests else names


def _all_fill(values: np.ndarray, fill: Any) -> bool:
    """Whether every value equals the array's fill value (what zarr returns for a missing chunk)."""
    if isinstance(fill, float | np.floating) and np.isnan(fill):
        return bool(np.isnan(values).all())
    return bool((values == fill).all())


class CacheWriter:
    """Writes blocks into a cache whose metadata is fixed. Obtain via :func:`open_for_writing`."""

    def __init__(self, group: zarr.Group, meta: CacheMeta, location: CacheLocation) -> None:
        self.group = group
        self.meta = meta
        # Opened once: re-opening per block would re-read each array's zarr.json (slow on S3).
        self._arrays = {name: _open_array(group, name, location) for name in _per_view_arrays(meta)}
        self._done = self._arrays[schema.BLOCK_DONE]
        # A resumed 1.0 / 1.1 cache keeps its version and is finished without digests.
        self._digests = self._arrays.get(schema.BLOCK_DIGEST)

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
        mix: tuple[np.ndarray, np.ndarray] | None = None,  # mixed recipe: partners, lambdas [R]
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
            chunks = {schema.LOGITS: stored}
        else:
            if labels is None:
                raise ValueError("a sparse block needs the rows' labels")
            chunks = self._sparse_chunks(logits, labels)
        chunks[schema.INPUT_HASH] = input_hashes.astype(np.int64)
        if self.meta.identity.augmentation.mixed:
            if mix is None:
                raise ValueError("a mixed recipe's block needs its partners and lambdas")
            chunks[schema.MIX_PARTNER] = np.asarray(mix[0], dtype=np.int64)
            chunks[schema.MIX_LAMBDA] = np.asarray(mix[1], dtype=np.float32)
        for name, values in chunks.items():
            self._arrays[name][view, rows, ...] = values
        chunks[schema.BLOCK_TOP1] = np.asarray(top1_correct, dtype=np.int64)
        chunks[schema.BLOCK_TOP5] = np.asarray(top5_correct, dtype=np.int64)
        self._arrays[schema.BLOCK_TOP1][view, block] = top1_correct
        self._arrays[schema.BLOCK_TOP5][view, block] = top5_correct
        if self._digests is not None:  # digests of exactly the values stored, before the mark
            record = b"".join(
                block_digest(name, view, block, rows, chunks[name]) for name in _digested(self.meta)
            )
            self._digests[view, block] = np.frombuffer(record, np.uint8).reshape(-1, DIGEST_BYTES)
        # The mark comes last: a crash before this line leaves the block unmarked, so it is redone.
        self._done[view, block] = 1

    def _sparse_chunks(self, logits: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
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
        return {
            schema.TOPK_VALUES: sparse.values,
            schema.TOPK_INDICES: sparse.indices,
            schema.LSE_AT_T: sparse.lse,
            schema.TAIL_LSE_AT_T: sparse.tail_lse,
            schema.LABEL_LOGIT: sparse.label_logit,
            schema.LOGIT_MEAN: sparse.logit_mean,
            schema.LOGIT_STD: sparse.logit_std,
        }

    def finalize(self) -> CacheMeta:
        """If every block is marked, record completeness and the teacher's accuracy per view."""
        if not self.done_mask().all():
            return self.meta
        top1, top5 = self.meta.figures_from_counts(
            np.asarray(self._arrays[schema.BLOCK_TOP1][:]),
            np.asarray(self._arrays[schema.BLOCK_TOP5][:]),
        )
        meta = dataclasses.replace(self.meta, complete=True, teacher_top1=top1, teacher_top5=top5)
        self.group.attrs[schema.ATTRS_KEY] = meta.to_dict()
        self.meta = meta
        return meta


def _create_layout(group: zarr.Group, meta: CacheMeta, labels: np.ndarray) -> None:
    ident = meta.identity
    V, N, C = ident.augmentation.num_views, ident.dataset.num_samples, ident.dataset.num_classes
    R, nb = ident.storage.chunk_rows, meta.num_blocks
    enc = layout.array_encoding()  # codecs and chunk keys: the same for every array
    if ident.storage.mode == "dense":
        group.create_array(
            schema.LOGITS,
            shape=(V, N, C),
            chunks=(1, R, C),
            dtype=ident.storage.dtype,
            fill_value=float("nan"),
            **enc,
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
            **enc,
        )
        group.create_array(
            schema.TOPK_INDICES,
            shape=(V, N, K),
            chunks=(1, R, K),
            dtype=_index_dtype(C),
            fill_value=-1,
            **enc,
        )
        for name in (schema.LSE_AT_T, schema.TAIL_LSE_AT_T):
            group.create_array(
                name,
                shape=(V, N, nT),
                chunks=(1, R, nT),
                dtype="float32",
                fill_value=float("nan"),
                **enc,
            )
        for name in schema.SPARSE_ROW_STATS:
            group.create_array(
                name,
                shape=(V, N),
                chunks=(1, R),
                dtype="float32",
                fill_value=float("nan"),
                **enc,
            )
    group.create_array(
        schema.INPUT_HASH, shape=(V, N), chunks=(1, R), dtype="int64", fill_value=0, **enc
    )
    if ident.augmentation.mixed:
        for name, dtype, fill in ((schema.MIX_PARTNER, "int64", -1),
                                  (schema.MIX_LAMBDA, "float32", float("nan"))):  # fmt: skip
            group.create_array(
                name, shape=(V, N), chunks=(1, R), dtype=dtype, fill_value=fill, **enc
            )
    lab = group.create_array(
        schema.LABELS,
        shape=(N,),
        chunks=(max(R, 65536),),
        dtype="int64",
        fill_value=-1,
        **enc,
    )
    lab[:] = labels.astype(np.int64)
    # One chunk per block: each mark / count is its own object (no shared read-modify-write).
    group.create_array(
        schema.BLOCK_DONE, shape=(V, nb), chunks=(1, 1), dtype="uint8", fill_value=0, **enc
    )
    for name in (schema.BLOCK_TOP1, schema.BLOCK_TOP5):
        group.create_array(name, shape=(V, nb), chunks=(1, 1), dtype="int64", fill_value=-1, **enc)
    if meta.has_block_digests:
        n_digests = len(_digested(meta))
        group.create_array(
            schema.BLOCK_DIGEST,
            shape=(V, nb, n_digests, DIGEST_BYTES),
            chunks=(1, 1, n_digests, DIGEST_BYTES),
            dtype="uint8",
            fill_value=0,
            **enc,
        )
    # Attributes last: a directory without them is not (yet) a cache and is recreated.
    group.attrs[schema.ATTRS_KEY] = meta.to_dict()


def _read_meta(group: zarr.Group, location: CacheLocation) -> CacheMeta:
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
    out: str | os.PathLike[str] | CacheLocation,
    meta: CacheMeta,
    labels: np.ndarray,
    *,
    create: bool,
) -> CacheWriter:
    """Create a cache at ``out``, or reopen one with the same identity to resume it.

    Refuses (without touching anything) a location holding a cache of other settings, or a
    non-empty directory that is not a cache. ``create=False`` (non-zero ranks) only reopens.
    """
    location = parse_location(out)
    store = zarr_stores.open_zarr_store(location, read_only=False)
    existing = _guard_read("the group metadata", lambda: _try_open_group(store, location), location)
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
    if existing is None and zarr_stores.holds_other_content(location):
        kind = "prefix" if location.is_remote else "directory"
        raise CacheError(
            f"{location} is a non-empty {kind} that is not a kdcache cache; refusing to write "
            f"into it. Choose an empty or new --out {kind}."
        )
    group = zarr.open_group(store=store, mode="w", zarr_format=3)
    meta = meta.with_labels_digest(labels)
    _create_layout(group, meta, labels)
    return CacheWriter(group, meta, location)


def _missing_chunk(where: str) -> CacheCorruptError:
    return CacheCorruptError(
        f"{where} is missing although its block is marked written (it reads back as the fill "
        "value): the object was deleted or never copied. Fetch a complete copy of the cache, or "
        "re-extract it."
    )


def _try_open_group(store: Store, location: CacheLocation) -> zarr.Group | None:
    try:
        return zarr.open_group(store=store, mode="r+", zarr_format=3)
    except zarr.errors.ContainsArrayError as exc:
        raise _array_not_cache_error(location) from exc
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, zarr.errors.NodeTypeValidationError):
        return None


def _array_not_cache_error(location: CacheLocation) -> DataNotFoundError:
    """A path that names one array inside a cache (``cache/logits``) rather than the cache."""
    parent = location.path.parent if location.path is not None else location.url.rsplit("/", 1)[0]
    return DataNotFoundError(
        f"{location} is one array inside a cache, not a cache: give the cache's own folder "
        f"(the one holding it, e.g. {parent})"
    )


class CacheReader:
    """Read-only access to a cache. Never writes, whatever the location."""

    def __init__(self, group: zarr.Group, meta: CacheMeta, location: CacheLocation) -> None:
        self.group = group
        self.meta = meta
        self.parsed_location = location
        # Array handles, opened once: each `group[name]` reads the array's zarr.json again, which
        # over an object store is one request per block read.
        self._arrays: dict[str, zarr.Array] = {}
        self._digest_slot = {name: i for i, name in enumerate(_digested(meta))}
        self._digest_records: dict[tuple[int, int], np.ndarray] = {}  # (view, block) -> [A, 32]

    @property
    def location(self) -> str:
        """The location as the user gave it (messages, run records)."""
        return self.parsed_location.raw

    def _array(self, name: str) -> zarr.Array:
        array = self._arrays.get(name)
        if array is None:
            array = self._arrays[name] = _open_array(self.group, name, self.parsed_location)
        return array

    @property
    def identity(self) -> schema.CacheIdentity:
        return self.meta.identity

    def _read(self, what: str, fn: Callable[[], T]) -> T:
        return _guard_read(what, fn, self.parsed_location)

    def labels(self) -> np.ndarray:
        """The cache's labels [N] int64, checked against ``labels_sha256`` (format 1.3)."""
        labels = np.asarray(self._read(schema.LABELS, lambda: self._array(schema.LABELS)[:]))
        if (problem := self.meta.labels_problem(labels)) is not None:
            raise CacheCorruptError(
                f"cache {self.location}: the {schema.LABELS!r} array {problem}. Fetch an intact "
                "copy of the cache, or re-extract it."
            )
        return labels

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
        digests = self._array(schema.BLOCK_DIGEST)
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
        """``values`` read from ``name``'s chunk at (view, block), once proven to belong there.

        Format 1.2: the values must hash to the digest recorded for (name, view, block). Older
        caches have no digests: a chunk that reads entirely as the fill value is refused as
        missing, and float data must be finite; a chunk moved to another position goes unnoticed.
        """
        rows = self.meta.block_rows(block)
        where = (
            f"{name} chunk (view {view}, block {block}, rows {rows.start}-{rows.stop - 1}) of "
            f"{self.location}"
        )
        fill = self._array(name).fill_value
        if self.meta.has_block_digests:
            record = self._digest_record(view, block)
            if not record.any():
                raise CacheCorruptError(
                    f"{where} has no digest record ({schema.BLOCK_DIGEST} of view {view}, block "
                    f"{block}): the block was never completely written, or that object was "
                    "deleted. Resume an unfinished cache with the same `kdcache extract` command; "
                    "otherwise fetch a complete copy."
                )
            expected = record[self._digest_slot[name]].tobytes()
            if block_digest(name, view, block, rows, values) != expected:
                if _all_fill(values, fill):
                    raise _missing_chunk(where)
                raise CacheCorruptError(
                    f"{where} does not hold the data recorded for that position (sha256 digest "
                    "mismatch): a chunk was copied to the wrong place, or its bytes were replaced. "
                    "Fetch an intact copy of the cache, or re-extract it."
                )
        elif _all_fill(values, fill):
            raise _missing_chunk(where)
        # The tail log-sum-exp is -inf where no class is left outside the top-K (K = C).
        finite = np.isfinite(values) | (name == schema.TAIL_LSE_AT_T) & (values == -np.inf)
        if values.dtype.kind == "f" and not finite.all():
            raise CacheCorruptError(
                f"{where} holds NaN/Inf values; a kdcache writer never stores them. Fetch an "
                "intact copy of the cache, or re-extract it."
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
                lambda: self._array(name)[view, rows, ...],
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
            value = np.asarray(
                self._read(
                    f"{name} (view {view}, block {block})",
                    lambda name=name: self._array(name)[view, block],  # type: ignore[misc]
                )
            )
            counts.append(int(self._checked(name, view, block, value)))
        return counts[0], counts[1]

    def block_correct_counts(self) -> tuple[np.ndarray, np.ndarray]:
        """Teacher top-1 and top-5 hits per block, [V, n_blocks] each (-1 where not written)."""
        return (
            np.asarray(self._read(schema.BLOCK_TOP1, lambda: self._array(schema.BLOCK_TOP1)[:])),
            np.asarray(self._read(schema.BLOCK_TOP5, lambda: self._array(schema.BLOCK_TOP5)[:])),
        )

    def stored_bytes(self) -> int | None:
        """Total bytes of the stored objects, when the store can list sizes (not http)."""
        return zarr_stores.stored_size(self.group.store, self.parsed_location)

    @property
    def local_copies(self) -> Path | None:
        """Where local copies of a remote cache's chunks are kept (None: local or off)."""
        return zarr_stores.local_copy_dir(self.group.store)


def _check_bounds(meta: CacheMeta, location: CacheLocation) -> None:
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


def open_cache(
    where: str | os.PathLike[str] | CacheLocation,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
) -> CacheReader:
    """Open a cache read-only; a clear error if there is none or it is of a newer format.

    Remote caches (fsspec URLs) that are complete keep local copies of the chunks they read under
    ``cache_dir``, so that later epochs and later runs do not download again. Precedence: the
    ``cache_dir`` argument, else $KDCACHE_REMOTE_CACHE_DIR, else ~/.cache/kdcache/remote; "off"
    (either way) keeps no copies.
    """
    location = parse_location(where)
    store = zarr_stores.open_zarr_store(location, read_only=True, cache_dir=cache_dir)
    try:
        group = _guard_read(
            "the group metadata",
            lambda: zarr.open_group(store=store, mode="r", zarr_format=3),
            location,
        )
    except zarr.errors.ContainsArrayError as exc:
        raise _array_not_cache_error(location) from exc
    except (
        FileNotFoundError,
        zarr.errors.GroupNotFoundError,
        zarr.errors.NodeTypeValidationError,
    ) as exc:
        raise zarr_stores.missing_cache_error(location) from exc
    meta = _read_meta(group, location)
    _check_bounds(meta, location)
    if meta.complete:
        # A complete cache's chunks never change again: safe to keep local copies of.
        zarr_stores.enable_chunk_cache(store, location, meta.fingerprint, meta.created)
    return CacheReader(group, meta, location)
