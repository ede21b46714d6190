"""The zarr store for a cache location: a local directory, a ``.zip`` file, or an fsspec URL.

Turning a parsed location (:mod:`kdcache.cache.location`) into a zarr store happens here and
nowhere else. Remote readers get their chunks through :class:`ChunkCachingStore`, which keeps a
local copy of every chunk it fetches so that later epochs (and later processes) read the local disk
instead of the network. The URL-level logic (filesystems, credentials, errors) is in
:mod:`kdcache.cache.remote`; what a chunk's key and bytes look like is in :mod:`.layout`.
"""

from __future__ import annotations

import asyncio
import atexit
import inspect
import logging
import os
import zipfile
from collections.abc import AsyncGenerator, Iterable
from pathlib import Path
from typing import Any

import zarr.core.sync
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
from kdcache.errors import CacheCorruptError, ConfigError, DataNotFoundError, KdcacheError

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]


def open_zarr_store(
    location: CacheLocation, *, read_only: bool, cache_dir: PathLike | None = None
) -> Store:
    """A zarr store for ``location``; readers always get a read-only store.

    ``cache_dir`` (readers of remote caches only) overrides where local copies are kept; see
    :func:`kdcache.cache.remote.local_cache_root`.
    """
    if not read_only:
        check_writable(location)
    if location.is_remote:
        return _open_remote(location, read_only=read_only, cache_dir=cache_dir)
    path = location.path
    assert path is not None  # every local location has one
    if location.is_zip:
        if not path.is_file():
            raise DataNotFoundError(f"no cache archive at {location}")
        _check_archive(path, location)
        return zarr.storage.ZipStore(path, mode="r")
    if path.exists() and not path.is_dir():
        raise ConfigError(
            f"{location} is a file, not a cache: a cache is a directory (or a .zip archive); "
            + ("choose another --out" if not read_only else "check the path")
        )
    if read_only and not path.exists():
        raise missing_cache_error(location)
    return zarr.storage.LocalStore(path, read_only=read_only)


def check_writable(location: CacheLocation) -> None:
    """Refuse a location no cache can be written to, from its kind alone (no IO): callers check
    before the expensive work (``kdcache extract`` loads the data and the teacher first)."""
    if location.is_http:
        raise ConfigError(
            f"{location}: http(s) locations are read-only; write to a directory or s3"
        )
    if location.is_zip:
        raise ConfigError(
            f"{location}: a .zip cache is read-only; extract into a directory or prefix, then "
            "`kdcache pack` it"
        )
    if location.bucket is not None and not location.key_prefix:
        # zarr's create mode deletes the location first: at a bucket's root, the bucket.
        raise ConfigError(
            f"{location}: write a cache under a prefix of the bucket, e.g. {location.url}/my-cache"
        )


def _check_archive(path: Path, location: CacheLocation) -> None:
    """Refuse a file that is not a readable zip (not a zip at all, truncated) with one line."""
    try:
        with zipfile.ZipFile(path) as archive:
            archive.getinfo(layout.metadata_key())
    except (zipfile.BadZipFile, zipfile.LargeZipFile, KeyError, OSError) as exc:
        raise CacheCorruptError(
            f"{location} is not a readable kdcache archive ({exc}): it is damaged, truncated or "
            "not a zip file; fetch it again or re-run `kdcache pack`"
        ) from exc


def _open_remote(location: CacheLocation, *, read_only: bool, cache_dir: PathLike | None) -> Store:
    if location.is_zip:  # read-only (check_writable)
        archive = remote.fetch_archive(location, cache_dir)
        _check_archive(archive, location)
        return zarr.storage.ZipStore(archive, mode="r")
    if not read_only and location.bucket is not None:
        remote.check_bucket(location)
    store = _fsspec_store(location, read_only=read_only)
    if not read_only:
        return store
    return ChunkCachingStore(store, location=location, cache_dir=cache_dir)


def _fsspec_store(location: CacheLocation, *, read_only: bool) -> zarr.storage.FsspecStore:
    fs, path = remote.filesystem(location, asynchronous=True)
    if fs.async_impl:
        return zarr.storage.FsspecStore(fs, path=path, read_only=read_only)
    # zarr wraps synchronous filesystems (zip::, ...) itself
    return zarr.storage.FsspecStore.from_url(location.url, read_only=read_only)


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

    Inactive until :meth:`activate` names the local directory: ``store.open_cache`` activates it
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
        cache_dir: PathLike | None = None,
        local: remote.LocalObjectCache | None = None,
    ) -> None:
        super().__init__(store)
        self.location = location
        self.cache_dir = cache_dir
        self.local = local
        self._pid = os.getpid()

    def _remote(self) -> Store:
        if self._pid != os.getpid():  # forked: the parent's client is bound to its event loop
            self._store = _fsspec_store(self.location, read_only=True)
            self._pid = os.getpid()
        return self._store

    async def exists(self, key: str) -> bool:
        return await self._remote().exists(key)

    async def getsize(self, key: str) -> int:
        return await self._remote().getsize(key)

    def _with_store(self, store: Store) -> ChunkCachingStore:
        return type(self)(store, location=self.location, cache_dir=self.cache_dir, local=self.local)

    def activate(self, namespace: str) -> Path | None:
        """Start keeping local copies under ``<cache root>/<namespace>``; returns that directory."""
        root = remote.local_cache_root(self.cache_dir)
        if root is None:
            self.local = None
            return None
        self.local = remote.LocalObjectCache(root / namespace)
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


def holds_other_content(location: CacheLocation) -> bool:
    """Whether ``location`` already holds files or objects (the writer refuses to mix in)."""
    if location.is_remote:
        return remote.holds_objects(location)
    assert location.path is not None  # every local location has one
    return location.path.is_dir() and any(location.path.iterdir())


def stored_size(store: Store, location: CacheLocation) -> int | None:
    """Total bytes of a cache's stored objects; None when the store cannot list sizes (http)."""
    inner = store._store if isinstance(store, zarr.storage.WrapperStore) else store
    if isinstance(inner, zarr.storage.LocalStore):
        return sum(p.stat().st_size for p in Path(inner.root).rglob("*") if p.is_file())
    if isinstance(inner, zarr.storage.ZipStore):
        with zipfile.ZipFile(inner.path) as archive:
            return sum(info.file_size for info in archive.infolist() if not info.is_dir())
    if location.is_http:
        return None  # http has no listing to add sizes from
    try:
        return remote.stored_size(location)
    except (OSError, NotImplementedError, KdcacheError) as exc:
        log.info("cannot measure %s: %s", location, exc)
        return None


def storage_error(exc: BaseException, location: CacheLocation) -> KdcacheError | None:
    """A user-facing error for a storage failure (credentials, missing bucket, unreachable).

    Local files' operating-system errors (a full disk, a read-only mount, a permission) are not
    storage-service problems: they stay OSErrors, which the CLI reports with their path.
    """
    if isinstance(exc, zipfile.BadZipFile):
        return CacheCorruptError(
            f"{location}: the .zip archive is damaged ({exc}); fetch it again or re-run "
            "`kdcache pack`"
        )
    return remote.translate_error(exc, location)


async def _close_sessions(filesystems: list[Any]) -> None:
    for fs in filesystems:
        for attr in ("_s3", "_session"):  # s3fs's client; http's and gcsfs's aiohttp session
            close = getattr(getattr(fs, attr, None), "close", None)
            if close is not None:
                result = close()
                if inspect.isawaitable(result):
                    await result


@atexit.register
def _close_remote_clients() -> None:
    """Close async storage clients on zarr's loop before zarr stops it (atexit runs LIFO, and
    this module imports zarr first); otherwise aiohttp prints "Unclosed client session"."""
    filesystems = remote.async_filesystems()
    if not filesystems:
        return
    try:
        zarr.core.sync.sync(_close_sessions(filesystems), timeout=5)
    except Exception as exc:  # never fail an exiting process over a courtesy close
        log.debug("closing storage clients failed: %s", exc)


def missing_cache_error(location: CacheLocation) -> KdcacheError:
    """The error for "no cache here", saying whether the bucket or the access is the problem."""
    if location.is_remote and not location.is_zip:
        return remote.missing_cache_error(location)
    return DataNotFoundError(
        f"no kdcache cache at {location}: create one with `kdcache extract --out {location}`"
    )
