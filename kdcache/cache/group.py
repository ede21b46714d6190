"""A cache's zarr group as the reader and the writer share it: its self-description, its arrays
opened and checked against the table of arrays (:mod:`.arrays`), and zarr's failures as errors that
name the damaged part.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import TypeVar

import zarr
import zarr.core.sync
import zarr.errors
from zarr.abc.store import Store
from zarr.core.array import AsyncArray
from zarr.core.group import get_node

from kdcache.cache import bounds, layout, schema, zarr_stores
from kdcache.cache.arrays import ArraySpec, array_specs
from kdcache.cache.location import CacheLocation
from kdcache.cache.schema import CacheMeta
from kdcache.errors import CacheCorruptError, CacheError, DataNotFoundError, KdcacheError

T = TypeVar("T")


def guard_read(what: str, fn: Callable[[], T], location: CacheLocation) -> T:
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


def read_meta(group: zarr.Group, location: CacheLocation) -> CacheMeta:
    """The self-description in the group's attributes, parsed and validated."""
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


def check_bounds(meta: CacheMeta, location: CacheLocation) -> None:
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


def open_arrays(
    group: zarr.Group, meta: CacheMeta, location: CacheLocation
) -> dict[str, zarr.Array]:
    """Every array the table lists for ``meta``, each checked against its row.

    The arrays' zarr.json documents are fetched concurrently (over an object store, one round
    trip instead of one per array), and each array is opened once: the reader and the writer keep
    these handles, since each ``group[name]`` would read the document again.
    """
    specs = array_specs(meta)
    prefix = f"{group.store_path.path}/" if group.store_path.path else ""

    async def fetch() -> list[object]:
        nodes = (get_node(group.store_path.store, prefix + spec.name, 3) for spec in specs)
        return list(await asyncio.gather(*nodes, return_exceptions=True))

    found = zarr.core.sync.sync(fetch())
    return {
        spec.name: _open_checked(spec, node, location)
        for spec, node in zip(specs, found, strict=True)
    }


def _node(name: str, found: object) -> object:
    """What :func:`get_node` gave for array ``name``: its node, or the failure it raised."""
    if isinstance(found, FileNotFoundError):
        raise KeyError(name) from found
    if isinstance(found, BaseException):
        raise found
    return zarr.Array(found) if isinstance(found, AsyncArray) else found


def _open_checked(spec: ArraySpec, found: object, location: CacheLocation) -> zarr.Array:
    document = layout.metadata_key(spec.name)
    try:
        node = guard_read(document, lambda: _node(spec.name, found), location)
    except (ValueError, TypeError) as exc:  # JSON, but not an array zarr can read
        if isinstance(exc, KdcacheError):
            raise
        raise _tampered(location, spec, f"zarr cannot read it ({exc})") from exc
    if not isinstance(node, zarr.Array):
        raise _tampered(location, spec, "it is a group, not an array")
    problems = []
    if node.shape != spec.shape:
        problems.append(f"shape {node.shape}, expected {spec.shape}")
    if node.chunks != spec.chunks:
        problems.append(f"chunk shape {node.chunks}, expected {spec.chunks}")
    if str(node.dtype) != spec.dtype:
        problems.append(f"dtype {node.dtype}, expected {spec.dtype}")
    if not spec.fill_matches(node.fill_value):
        problems.append(f"fill value {node.fill_value}, expected {spec.fill}")
    problems += layout.encoding_problems(node)
    if problems:
        raise _tampered(location, spec, "; ".join(problems))
    return node


def _tampered(location: CacheLocation, spec: ArraySpec, problem: str) -> CacheCorruptError:
    return CacheCorruptError(
        f"cache {location}: array {spec.name!r} does not have this cache's layout "
        f"({layout.metadata_key(spec.name)}: {problem}; see docs/cache-format.md §2). Its "
        "metadata was edited or damaged: fetch an intact copy of the cache, or re-extract it."
    )


def try_open_group(store: Store, location: CacheLocation, *, mode: str) -> zarr.Group | None:
    """The zarr group at ``store``; None when there is none (empty or absent location)."""
    try:
        return zarr.open_group(store=store, mode=mode, zarr_format=3)  # type: ignore[arg-type]
    except zarr.errors.ContainsArrayError as exc:
        raise array_not_cache_error(location) from exc
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, zarr.errors.NodeTypeValidationError):
        return None


def array_not_cache_error(location: CacheLocation) -> DataNotFoundError:
    """A path that names one array inside a cache (``cache/logits``) rather than the cache."""
    parent = location.path.parent if location.path is not None else location.url.rsplit("/", 1)[0]
    return DataNotFoundError(
        f"{location} is one array inside a cache, not a cache: give the cache's own folder "
        f"(the one holding it, e.g. {parent})"
    )
