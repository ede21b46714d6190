"""``kdcache ls``: the caches under a local directory or an object-store prefix.

Cheap by design, so that it can sweep a bucket: per cache it reads one small document (the root
``zarr.json``, which holds the whole self-description), lists the completeness record of caches that
are not marked complete (each mark is its own object, ``docs/cache-format.md`` §3), and adds up
object sizes from the listing. It never downloads chunks. A packed ``.zip`` is read through its
central directory (range requests on object stores), not fetched whole.
"""

from __future__ import annotations

import logging
import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from kdcache.cache import layout, remote, schema
from kdcache.cache.location import CacheLocation, is_archive_name, parse_location
from kdcache.cache.schema import CacheMeta
from kdcache.errors import ConfigError, DataNotFoundError, KdcacheError

log = logging.getLogger(__name__)

_MARKS = layout.chunk_prefix(schema.BLOCK_DONE)  # one object per marked (view, block)


@dataclass(frozen=True)
class CacheEntry:
    """One cache found by :func:`list_caches`; ``meta`` is None when it could not be read."""

    location: str
    kind: Literal["directory", "zip"]
    meta: CacheMeta | None
    size: int | None  # bytes stored (a directory's objects, or the archive file)
    blocks_done: int | None
    error: str | None = None

    @property
    def blocks_total(self) -> int | None:
        if self.meta is None:
            return None
        return self.meta.num_blocks * self.meta.identity.augmentation.num_views

    @property
    def complete(self) -> bool:
        return self.meta is not None and self.meta.complete

    @property
    def state(self) -> str:
        if self.meta is None:
            return f"unreadable: {self.error}"
        if self.complete:
            return "complete"
        return f"INCOMPLETE ({self.blocks_done}/{self.blocks_total} blocks)"

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "location": self.location,
            "kind": self.kind,
            "size": self.size,
            "complete": self.complete,
            "blocks_done": self.blocks_done,
            "blocks_total": self.blocks_total,
            "error": self.error,
        }
        if self.meta is not None:
            d["fingerprint"] = self.meta.fingerprint
            d.update(self.meta.identity.to_dict())
        return d


def list_caches(
    location: str | os.PathLike[str] | CacheLocation, *, max_depth: int = 4
) -> list[CacheEntry]:
    """Every kdcache cache at or under ``location``, ``max_depth`` directory levels down at most.

    Entries are named as the user spelled ``location``, plus the path below it.
    """
    if max_depth < 0:
        raise ConfigError(f"the depth to search must be >= 0, got {max_depth}")
    where = parse_location(location)
    shown = where.raw.rstrip("/") or where.raw  # the user's spelling, as the entries' prefix
    fs, root = remote.filesystem(where)
    try:
        if where.is_zip:
            return [_zip_entry(fs, root, shown)]
        if not where.is_remote and fs.isfile(root):  # remote: one request fewer
            raise ConfigError(
                f"{shown} is a file, not a directory, prefix or .zip archive: nothing to list"
            )
        return sorted(_walk(fs, root, shown, root, 0, max_depth), key=lambda e: e.location)
    except KdcacheError:
        raise
    except FileNotFoundError as exc:
        if where.bucket is not None:
            remote.check_bucket(where)
        raise DataNotFoundError(f"nothing at {shown}") from exc
    except Exception as exc:
        err = remote.translate_error(exc, where)
        if err is None:
            raise
        raise err from exc


def _name_of(root: str, location: str, path: str) -> str:
    """The user's spelling of ``path``: the listed location plus the relative part."""
    rel = path[len(root) :].strip("/") if path.startswith(root) else path
    return f"{location}/{rel}" if rel else location


def _walk(
    fs: Any, root: str, location: str, path: str, depth: int, max_depth: int
) -> Iterator[CacheEntry]:
    try:
        entries = fs.ls(path, detail=True)
    except FileNotFoundError:
        if depth == 0:
            raise
        return
    by_name = {e["name"].rstrip("/").rsplit("/", 1)[-1]: e for e in entries}
    doc = by_name.get(layout.METADATA_FILE)
    if doc is not None and doc.get("type") == "file":
        entry = _directory_entry(fs, path, _name_of(root, location, path))
        if entry is not None:
            yield entry
        return  # a cache's arrays are not caches
    for name, e in sorted(by_name.items()):
        if e.get("type") == "directory" and depth < max_depth:
            yield from _walk(fs, root, location, e["name"].rstrip("/"), depth + 1, max_depth)
        elif e.get("type") == "file" and is_archive_name(name):
            yield _zip_entry(fs, e["name"], _name_of(root, location, e["name"]), e.get("size"))


def _parse_meta(document: bytes) -> CacheMeta | None:
    """The self-description in a root ``zarr.json``; None for a zarr group that is not a cache."""
    attrs = layout.group_attributes(document)
    if schema.ATTRS_KEY not in attrs:
        return None
    return CacheMeta.from_dict(dict(attrs[schema.ATTRS_KEY]))


def _directory_entry(fs: Any, path: str, name: str) -> CacheEntry | None:
    try:
        meta = _parse_meta(fs.cat_file(f"{path}/{layout.metadata_key()}"))
    except (KdcacheError, ValueError) as exc:  # newer format, malformed JSON or metadata
        return CacheEntry(name, "directory", None, None, None, error=str(exc))
    if meta is None:
        return None
    objects = fs.find(path, detail=True)  # one listing gives both the marks and the sizes
    marks = sum(1 for p in objects if p[len(path) :].lstrip("/").startswith(_MARKS))
    size = sum(int(info.get("size") or 0) for info in objects.values())
    return CacheEntry(name, "directory", meta, size, marks)


def _zip_entry(fs: Any, path: str, name: str, size: int | None = None) -> CacheEntry:
    try:
        with fs.open(path, "rb") as fh, zipfile.ZipFile(fh) as archive:
            meta = _parse_meta(archive.read(layout.metadata_key()))
            marks = sum(1 for n in archive.namelist() if n.startswith(_MARKS))
        size = size if size is not None else int(fs.info(path).get("size") or 0)
    except (KdcacheError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        return CacheEntry(name, "zip", None, size, None, error=str(exc))
    if meta is None:
        return CacheEntry(
            name, "zip", None, size, None, error="a zarr archive, not a kdcache cache"
        )
    return CacheEntry(name, "zip", meta, size, marks)


def format_size(n: int | None) -> str:
    if n is None:
        return "?"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def format_entries(entries: list[CacheEntry]) -> str:
    """One aligned line per cache: location, teacher, dataset/split, views, storage, size, state."""
    rows = []
    for e in entries:
        if e.meta is None:
            rows.append([e.location, "-", "-", "-", "-", format_size(e.size), e.state])
            continue
        ident = e.meta.identity
        st = ident.storage
        mode = f"dense {st.dtype}" if st.mode == "dense" else f"top-{st.topk} {st.dtype}"
        views = ident.augmentation.num_views
        rows.append(
            [
                e.location,
                ident.teacher.name,
                f"{ident.dataset.name}/{ident.dataset.split}",
                f"{views} view{'s' if views != 1 else ''}",
                mode,
                format_size(e.size),
                e.state,
            ]
        )
    if not rows:
        return ""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1]
        for r in rows
    )
