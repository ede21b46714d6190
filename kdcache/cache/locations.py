"""Where a cache lives: a local directory, a ``.zip`` file, or an fsspec URL (``s3://``, ...).

Resolving a user's location string to a zarr store happens here and nowhere else.
"""

from __future__ import annotations

from pathlib import Path

import zarr.storage

from kdcache.errors import ConfigError, DataNotFoundError


def is_url(location: str) -> bool:
    return "://" in location or "::" in location


def open_zarr_store(location: str, *, read_only: bool) -> zarr.abc.store.Store:
    """A zarr store for ``location``; readers always get a read-only store."""
    if is_url(location):
        if location.startswith("file://"):
            return open_zarr_store(location[len("file://"):], read_only=read_only)
        try:
            return zarr.storage.FsspecStore.from_url(location, read_only=read_only)
        except ImportError as exc:
            raise ConfigError(
                f"reading {location} needs an fsspec filesystem that is not installed ({exc}); "
                "for s3:// install kdcache[s3]"
            ) from exc
    path = Path(location).expanduser()
    if path.suffix == ".zip":
        if not read_only:
            raise ConfigError(
                f"{location}: a .zip cache is read-only; extract into a directory, then "
                "`kdcache pack` it"
            )
        if not path.is_file():
            raise DataNotFoundError(f"no cache archive at {location}")
        return zarr.storage.ZipStore(path, mode="r")
    if read_only and not path.exists():
        raise DataNotFoundError(
            f"no kdcache cache at {location}: create one with `kdcache extract --out {location}`"
        )
    return zarr.storage.LocalStore(path, read_only=read_only)
