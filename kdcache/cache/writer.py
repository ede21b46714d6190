"""Writing a cache: :func:`open_for_writing` creates or resumes one, :class:`CacheWriter` fills it.

A new cache's arrays are created from the table of arrays (:mod:`.arrays`); a resumed one's are
checked against it, as a reader's are. Writers mark a block done only after its data and its
digest record are written (zarr's LocalStore writes each chunk to a temporary file and renames
it, so a written chunk is whole), and each mark and each digest record is its own zarr chunk (its
own file or object), so concurrent writers never read-modify-write a shared object.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import numpy as np
import zarr

from kdcache.cache import layout, schema, zarr_stores
from kdcache.cache.arrays import array_specs
from kdcache.cache.digest import DIGEST_BYTES, block_digest, digested_arrays
from kdcache.cache.group import guard_read, open_arrays, read_meta, try_open_group
from kdcache.cache.location import CacheLocation, parse_location
from kdcache.cache.schema import CacheMeta
from kdcache.cache.sparse import sparse_rows_from_logits
from kdcache.errors import CacheError, CacheMismatchError

log = logging.getLogger(__name__)


class CacheWriter:
    """Writes blocks into a cache whose metadata is fixed. Obtain via :func:`open_for_writing`."""

    def __init__(self, group: zarr.Group, meta: CacheMeta, arrays: dict[str, zarr.Array]) -> None:
        self.group = group
        self.meta = meta
        self._arrays = arrays  # opened once: re-opening per block would re-read each zarr.json
        self._digested = digested_arrays(meta.identity.storage, meta.identity.augmentation.mixed)
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
                block_digest(name, view, block, rows, chunks[name]) for name in self._digested
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


def create_arrays(group: zarr.Group, meta: CacheMeta, labels: np.ndarray) -> dict[str, zarr.Array]:
    """Create every array of the table in an empty group, store the labels, then the attributes."""
    encoding = layout.array_encoding()  # codecs and chunk keys: the same for every array
    arrays = {
        spec.name: group.create_array(
            spec.name,
            shape=spec.shape,
            chunks=spec.chunks,
            dtype=spec.dtype,
            fill_value=spec.fill,
            **encoding,
        )
        for spec in array_specs(meta)
    }
    arrays[schema.LABELS][:] = labels.astype(np.int64)
    # Attributes last: a directory without them is not (yet) a cache and is recreated.
    group.attrs[schema.ATTRS_KEY] = meta.to_dict()
    return arrays


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
    existing = guard_read(
        "the group metadata", lambda: try_open_group(store, location, mode="r+"), location
    )
    if existing is not None and schema.ATTRS_KEY in existing.attrs:
        return _resume(existing, meta, location, create=create)
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
    return CacheWriter(group, meta, create_arrays(group, meta, labels))


def _resume(
    group: zarr.Group, meta: CacheMeta, location: CacheLocation, *, create: bool
) -> CacheWriter:
    old = read_meta(group, location)
    if old.identity != meta.identity:
        diffs = "\n  ".join(old.identity.differences(meta.identity)[:12])
        raise CacheMismatchError(
            f"{location} already holds a different cache (fingerprint {old.fingerprint[:12]}); "
            f"refusing to overwrite it. Differences (existing != requested):\n  {diffs}\n"
            "Choose another --out, or re-run with the existing cache's settings to resume it."
        )
    arrays = open_arrays(group, old, location)  # the existing layout, as the reader checks it
    log.info(
        "resuming cache %s (%d of %d blocks done)",
        location,
        int(np.asarray(arrays[schema.BLOCK_DONE][:]).sum()),
        old.num_blocks * old.identity.augmentation.num_views,
    )
    merged = old.with_producers(meta.producers)
    if create and merged is not old:  # rank 0 records a new forward configuration
        group.attrs[schema.ATTRS_KEY] = merged.to_dict()
    return CacheWriter(group, merged, arrays)
