"""Local copies of a remote cache's chunks: :class:`ChunkCachingStore`, the zarr store wrapper
that keeps them, and :class:`LocalObjectCache`, the directory of files it keeps them in.

Remote readers get their chunks through the wrapper (which
:func:`kdcache.cache.zarr_stores.open_zarr_store` makes), so that later epochs (and later
processes) read the local disk instead of the network. Where the copies live is
:func:`kdcache.cache.remote.local_cache_root`; what a chunk's key and bytes look like is
:mod:`.layout`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
from collections.abc import AsyncGenerator, Callable, Iterable
from pathlib import Path

import zarr.storage
from zarr.abc.store import (
    ByteRequest,
    OffsetByteRequest,
    RangeByteRequest,
    Store,
    SuffixByteRequest,
)
from zarr.core.buffer import Buffer, BufferPrototype

from kdcache.cache import layout, remote
from kdcache.cache.location import CacheLocation

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]


class LocalObjectCache:
    """Local copies of immutable objects under one directory, one file per key.

    Files appear by atomic rename, so concurrent readers (threads or processes) sharing the
    directory never see a partial copy; two readers fetching the same object both write it, and
    the last rename wins with identical bytes.
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, key: str) -> Path:
        parts = key.split("/")
        if any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"refusing to cache an object with key {key!r}")
        return self.root.joinpath(*parts)

    def get(self, key: str) -> bytes | None:
        try:
            return self.path(key).read_bytes()
        except FileNotFoundError:
            return None

    def put(self, key: str, data: bytes) -> None:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def discard(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)


def _slice(data: bytes, byte_range: ByteRequest | None) -> bytes:
    if byte_range is None:
        return data
    if isinstance(byte_range, RangeByteRequest):
        return data[byte_range.start : byte_range.end]
    if isinstance(byte_range, OffsetByteRequest):
        return data[byte_range.offset :]
    if isinstance(byte_range, SuffixByteRequest):
        return data[-byte_range.suffix :] if byte_range.suffix else b""
    raise ValueError(f"unexpected byte range {byte_range!r}")


class ChunkCachingStore(zarr.storage.WrapperStore[Store]):
    """A read-only remote store that keeps local copies of the chunks it fetches.

    Inactive until :meth:`activate` names the local directory: ``reader.open_cache`` activates it
    only for *complete* caches, whose chunk objects never change again, under a
    directory named by URL + fingerprint + creation time (a re-extracted cache never reuses stale
    copies). Metadata documents are always read from the remote. Each local copy is checked
    against the chunk's own crc32c when read: a damaged copy is dropped and fetched again, and a
    damaged remote object is never copied (zarr's codec then reports it).

    It is also fork-safe: an async storage client belongs to the event loop of the process that
    made it, so a forked child (a DataLoader worker) gets a client of its own on first use.

    Why not fsspec's ``filecache``: it rewrites one JSON index per download (quadratic in the
    number of chunks, racy between processes) and is synchronous, so zarr would call it through a
    thread wrapper; this store is async, keeps no index and is safe to share between processes.
    """

    def __init__(
        self,
        store: Store,
        *,
        location: CacheLocation,
        reopen: Callable[[], Store],
        cache_dir: PathLike | None = None,
        local: LocalObjectCache | None = None,
    ) -> None:
        super().__init__(store)
        self.location = location
        self.reopen = reopen  # a new remote store for this process (after a fork)
        self.cache_dir = cache_dir
        self.local = local
        self._pid = os.getpid()

    def _remote(self) -> Store:
        if self._pid != os.getpid():  # forked: the parent's client is bound to its event loop
            self._store = self.reopen()
            self._pid = os.getpid()
        return self._store

    async def exists(self, key: str) -> bool:
        return await self._remote().exists(key)

    async def getsize(self, key: str) -> int:
        return await self._remote().getsize(key)

    def _with_store(self, store: Store) -> ChunkCachingStore:
        return type(self)(
            store,
            location=self.location,
            reopen=self.reopen,
            cache_dir=self.cache_dir,
            local=self.local,
        )

    def activate(self, namespace: str) -> Path | None:
        """Start keeping local copies under ``<cache root>/<namespace>``; returns that directory."""
        root = remote.local_cache_root(self.cache_dir)
        if root is None:
            self.local = None
            return None
        self.local = LocalObjectCache(root / namespace)
        return self.local.root

    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        local, source = self.local, self._remote()
        if local is None or not layout.is_chunk_key(key):
            return await source.get(key, prototype, byte_range)
        data = await asyncio.to_thread(local.get, key)
        if data is not None and not layout.crc32c_trailer_ok(data):
            log.warning("local copy of %s/%s is damaged; fetching it again", self.location, key)
            await asyncio.to_thread(local.discard, key)
            data = None
        if data is None:
            fetched = await source.get(key, prototype)  # whole object, whatever was asked
            if fetched is None:
                return None
            data = fetched.to_bytes()
            if layout.crc32c_trailer_ok(data):
                await asyncio.to_thread(local.put, key, data)
        return prototype.buffer.from_bytes(_slice(data, byte_range))

    async def get_partial_values(
        self,
        prototype: BufferPrototype,
        key_ranges: Iterable[tuple[str, ByteRequest | None]],
    ) -> list[Buffer | None]:
        return list(await asyncio.gather(*(self.get(k, prototype, r) for k, r in key_ranges)))

    async def _get_many(
        self, requests: Iterable[tuple[str, BufferPrototype, ByteRequest | None]]
    ) -> AsyncGenerator[tuple[str, Buffer | None], None]:
        # WrapperStore would hand these to the inner store and bypass the local copies.
        for key, prototype, byte_range in requests:
            yield key, await self.get(key, prototype, byte_range)


def enable_chunk_cache(
    store: Store, location: CacheLocation, fingerprint: str, created: str
) -> Path | None:
    """Activate local chunk copies if ``store`` is a remote reader's store; else a no-op.

    Call it only for complete caches: their chunk objects never change again.
    """
    if isinstance(store, ChunkCachingStore):
        root = store.activate(remote.namespace(location, fingerprint, created))
        log.info("local copies of %s chunks: %s", store.location, root or "off")
        return root
    return None


def local_copy_dir(store: Store) -> Path | None:
    """The directory holding local copies of this store's chunks, if any."""
    if isinstance(store, ChunkCachingStore) and store.local is not None:
        return store.local.root
    return None
