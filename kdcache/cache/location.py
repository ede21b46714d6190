"""A cache location, parsed once where it enters: a local directory, a ``.zip`` file, or a URL.

Every public function that takes a location (``open_cache``, ``open_for_writing``, ``verify_cache``,
``pack_cache``, ``list_caches``) calls :func:`parse_location` on what the user gave and hands the
resulting :class:`CacheLocation` on; nothing below re-classifies the string. Error messages show
:attr:`CacheLocation.raw`, the location exactly as the user typed it.

Pure: no IO, no zarr, no fsspec. Kinds of location:

- a local path (``caches/r56``, ``~/caches/r56``, ``file:///data/r56``): ``~`` is expanded;
- a remote fsspec URL (anything else with ``://`` or ``::``): ``s3://bucket/prefix`` (s3fs),
  ``gs://`` (gcsfs), ``az://``, ``http(s)://`` (read-only), chained URLs
  (``simplecache::s3://...``, whose innermost URL names the storage);
- either of them naming a ``.zip`` file: a packed, read-only cache (``kdcache pack``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from kdcache.errors import ConfigError

# Protocols whose first path component is a bucket (or container) that must exist beforehand.
BUCKET_PROTOCOLS = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"})
HTTP_PROTOCOLS = frozenset({"http", "https"})
_FILE_SCHEME = "file://"
ARCHIVE_SUFFIX = ".zip"  # a packed cache (``kdcache pack``) is recognised by its name alone


@dataclass(frozen=True)
class CacheLocation:
    """Where a cache lives, classified once. Build it with :func:`parse_location`."""

    raw: str  # as the user gave it: what every message shows
    url: str  # what fsspec is given: the local path, or the URL without trailing slashes
    protocol: str  # the storage's protocol: "file" for local paths, "s3" for s3://b/p ...
    is_remote: bool  # served by a storage service (any URL but file://)
    is_zip: bool  # a packed cache: one read-only .zip file
    bucket: str | None  # the bucket (container) of an object-store URL; None otherwise
    key_prefix: str  # an object-store URL's part after the bucket ("a/b" for s3://bkt/a/b/)
    path: Path | None  # the local path (``~`` expanded); None for remote locations

    @property
    def is_chained(self) -> bool:
        """A chained URL (``simplecache::s3://...``): its options belong to the outer layer."""
        return "::" in self.raw

    @property
    def is_http(self) -> bool:
        """http(s):// locations are read-only, and list no objects (so no sizes)."""
        return self.protocol in HTTP_PROTOCOLS

    def __str__(self) -> str:
        return self.raw


def is_archive_name(name: str) -> bool:
    """Whether a path, URL or file name names a packed cache (trailing slashes ignored)."""
    return PurePosixPath(name.rstrip("/")).suffix == ARCHIVE_SUFFIX


def _is_url(text: str) -> bool:
    return "://" in text or "::" in text


def _protocol(text: str) -> str:
    if not _is_url(text):
        return "file"
    last = text.split("::")[-1]  # chained URLs: the innermost one names the storage
    return last.split("://", 1)[0] if "://" in last else "file"


def parse_location(location: str | os.PathLike[str] | CacheLocation) -> CacheLocation:
    """Classify ``location`` (a path, a URL or an already parsed value, returned as is).

    Raises:
        ConfigError: an empty location, or one that is not a path or a string (None ...).
    """
    if isinstance(location, CacheLocation):
        return location
    raw = os.fspath(location) if isinstance(location, str | os.PathLike) else None
    if not isinstance(raw, str):  # None, a number, bytes: say what is expected, not a TypeError
        raise ConfigError(
            f"a cache location must be a path or a string (a directory, a .zip file or a URL "
            f"such as s3://bucket/prefix), got {location!r}"
        )
    if not raw.strip():
        raise ConfigError(
            "the cache location is empty: give a directory, a .zip file or a URL "
            "(s3://bucket/prefix, gs://, http(s)://, file://)"
        )
    if raw.startswith(_FILE_SCHEME) or not _is_url(raw):
        path = Path(raw[len(_FILE_SCHEME) :] if raw.startswith(_FILE_SCHEME) else raw).expanduser()
        return CacheLocation(
            raw=raw,
            url=str(path),
            protocol="file",
            is_remote=False,
            is_zip=is_archive_name(path.as_posix()),
            bucket=None,
            key_prefix="",
            path=path,
        )
    stripped = raw.rstrip("/")
    protocol = _protocol(raw)
    rest = raw.split("::")[-1].split("://", 1)[-1]  # the innermost URL without its scheme
    bucket = (rest.split("/", 1)[0] or None) if protocol in BUCKET_PROTOCOLS else None
    return CacheLocation(
        raw=raw,
        url=stripped,
        protocol=protocol,
        is_remote=True,
        is_zip=is_archive_name(stripped),
        bucket=bucket,
        key_prefix=rest.split("/", 1)[1].strip("/") if bucket and "/" in rest else "",
        path=None,
    )
