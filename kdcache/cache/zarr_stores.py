"""The zarr store for a cache location: a local directory, a ``.zip`` file, or an fsspec URL.

Turning a parsed location (:mod:`kdcache.cache.location`) into a zarr store happens here and
nowhere else. Remote readers get their chunks through
:class:`~kdcache.cache.chunk_copies.ChunkCachingStore`, which keeps a local copy of every chunk it
fetches (:mod:`.chunk_copies`). The URL-level logic (filesystems, credentials, errors) is in
:mod:`kdcache.cache.remote`; what a chunk's key and bytes look like is in :mod:`.layout`.
"""

from __future__ import annotations

import asyncio
import atexit
import inspect
import logging
import os
import zipfile
from pathlib import Path
from typing import Any

import zarr.core.sync
import zarr.storage
from zarr.abc.store import Store

from kdcache.cache import layout, remote
from kdcache.cache.chunk_copies import ChunkCachingStore
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
    return ChunkCachingStore(
        store,
        location=location,
        reopen=lambda: _fsspec_store(location, read_only=True),
        cache_dir=cache_dir,
    )


def _fsspec_store(location: CacheLocation, *, read_only: bool) -> zarr.storage.FsspecStore:
    fs, path = remote.filesystem(location, asynchronous=True)
    if fs.async_impl:
        return zarr.storage.FsspecStore(fs, path=path, read_only=read_only)
    # zarr wraps synchronous filesystems (zip::, ...) itself
    return zarr.storage.FsspecStore.from_url(location.url, read_only=read_only)


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


async def _cancel_pending_reads(grace_s: float) -> int:
    """Cancel every task still running on zarr's loop (but this one) and wait for them to end."""
    current = asyncio.current_task()
    pending = [task for task in asyncio.all_tasks() if task is not current and not task.done()]
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=grace_s)
    return len(pending)


def cancel_pending_reads(grace_s: float = 2.0) -> int:
    """Cancel the reads zarr still has in flight; returns how many there were.

    When one of a batch of concurrent chunk reads fails (a damaged chunk, a hung server), zarr
    raises at once and leaves the others running on its event loop. At exit zarr closes that loop
    with them still pending, and Python prints "Task was destroyed but it is pending!" (and
    "Event loop is closed") for each: hundreds of lines after the one error that matters.
    """
    loop = zarr.core.sync.loop[0]
    if loop is None or loop.is_closed() or not loop.is_running():
        return 0
    try:
        return zarr.core.sync.sync(_cancel_pending_reads(grace_s), timeout=grace_s + 1)
    except Exception as exc:  # never fail an exiting process over a courtesy cancel
        log.debug("cancelling pending reads failed: %s", exc)
        return 0


@atexit.register
def _close_remote_clients() -> None:
    """Cancel zarr's pending reads, then close async storage clients, on zarr's loop before zarr
    stops it (atexit runs LIFO, and this module imports zarr first); otherwise Python prints
    "Task was destroyed but it is pending!" and aiohttp "Unclosed client session"."""
    cancel_pending_reads()
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
