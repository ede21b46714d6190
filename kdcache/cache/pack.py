"""``kdcache pack``: one cache (directory or prefix) -> one ``.zip`` file that ``open_cache`` reads.

The archive holds the zarr group exactly as stored (same keys, same bytes), uncompressed
(``ZIP_STORED``: chunks are already zstd-compressed, and stored members can be read in place),
members sorted and time-stamped 1980-01-01, so packing the same cache twice gives the same bytes.
It is written to a temporary file beside OUT, re-opened and checked as ``kdcache verify`` checks
a cache's chunks (every marked block present, intact and at its recorded position, the recorded
figures equal to the hit counts), then renamed: OUT is either absent, the old file, or a complete,
verified archive. Every chunk's crc32c is also checked on the way, so a damaged cache is never
published.
"""

from __future__ import annotations

import logging
import os
import uuid
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from kdcache.cache import layout, remote
from kdcache.cache.location import CacheLocation, parse_location
from kdcache.cache.reader import CacheReader, open_cache
from kdcache.cache.scan import bad_blocks_detail, block_problems, figure_problems
from kdcache.errors import CacheCorruptError, CacheError, ConfigError, KdcacheError

log = logging.getLogger(__name__)

_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest zip timestamp: reproducible archives
_BATCH = 64  # objects fetched per request batch from a remote source (bounded memory)


@dataclass(frozen=True)
class PackResult:
    source: str
    out: Path
    members: int
    bytes: int  # size of the archive
    fingerprint: str
    complete: bool


def cache_members(source: str | os.PathLike[str] | CacheLocation) -> list[str]:
    """Keys of a cache's objects, relative to its root: ``zarr.json`` and its arrays' objects.

    Only the zarr hierarchy is taken (the root document and every directory holding a
    ``zarr.json``), so stray files beside a cache (``.DS_Store``, notes) stay out of the archive.
    """
    location = parse_location(source)
    fs, root = remote.filesystem(location)
    root = root.rstrip("/")
    keys = sorted(p[len(root) + 1 :] for p in fs.find(root) if p.startswith(root + "/"))
    arrays = {a for a in map(layout.array_of_metadata_key, keys) if a is not None}
    if location.path is not None:
        _refuse_links(Path(root), arrays, location)
    root_doc = layout.metadata_key()
    members = [k for k in keys if k == root_doc or k.split("/", 1)[0] in arrays]
    leftovers = [k for k in members if layout.is_interrupted_write(k)]
    if leftovers:
        # zarr writes each object to <key>.<uuid>.partial and renames it; a killed writer leaves
        # the temporary file. zarr never reads it, so neither `verify` nor `train` sees it: the
        # archive leaves it out too instead of refusing it as a damaged chunk.
        log.warning(
            "leaving %d leftover temporary file(s) of an interrupted write out of the archive "
            "(e.g. %s)",
            len(leftovers),
            leftovers[0],
        )
        members = [k for k in members if not layout.is_interrupted_write(k)]
    # The root document first: `unzip -l` and humans see what the archive is at once.
    return sorted(members, key=lambda k: (k != root_doc, k))


def _refuse_links(root: Path, arrays: set[str], location: CacheLocation) -> None:
    """Refuse symbolic links inside a local cache: the archive would hold the bytes of whatever
    they point to (perhaps outside the cache), which `verify` of the directory never vouched for."""
    for name in [layout.metadata_key(), *sorted(arrays)]:
        top = root / name
        if top.is_symlink():
            raise CacheError(_link_message(location, name))
        if not top.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(top, followlinks=False):
            for entry in [*dirnames, *filenames]:
                path = Path(dirpath) / entry
                if path.is_symlink():
                    raise CacheError(_link_message(location, str(path.relative_to(root))))


def _link_message(location: CacheLocation, key: str) -> str:
    return (
        f"{location}/{key} is a symbolic link; refusing to pack it (the archive would hold "
        "whatever it points to). Replace the link with a copy of the file, or pack the directory "
        "it links from."
    )


def _read_objects(location: CacheLocation, keys: list[str]) -> Iterator[tuple[str, bytes]]:
    fs, root = remote.filesystem(location)
    root = root.rstrip("/")
    for start in range(0, len(keys), _BATCH):
        batch = keys[start : start + _BATCH]
        paths = [f"{root}/{k}" for k in batch]
        data = fs.cat(paths, on_error="raise")  # concurrent on object stores
        for key, path in zip(batch, paths, strict=True):
            yield key, data[path]


def pack_cache(
    source: str | os.PathLike[str] | CacheLocation,
    out: str | os.PathLike[str],
    *,
    allow_incomplete: bool = False,
    force: bool = False,
    progress: Callable[[int], None] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> PackResult:
    """Write the cache at ``source`` into the zip file ``out``; see the module docstring.

    ``cache_dir``: where a remote source keeps local copies of what is read through zarr (its
    metadata and completeness record; the objects themselves are copied from the store), as for
    :func:`kdcache.cache.reader.open_cache`.
    """
    location = parse_location(source)
    target = _check_target(location, parse_location(out), force=force)
    reader = open_cache(location, cache_dir=cache_dir)
    done = reader.done_mask()
    if not done.all() and not allow_incomplete:
        try:
            reader.require_complete()
        except CacheError as exc:
            raise CacheError(
                f"{exc} Refusing to pack an incomplete cache (pass --allow-incomplete to pack it "
                "anyway; a packed cache can no longer be resumed)."
            ) from exc
    keys = cache_members(location)
    if layout.metadata_key() not in keys:
        raise CacheError(f"{location}: found no {layout.METADATA_FILE} to pack")
    tmp = target.with_name(f".{target.stem}.{uuid.uuid4().hex[:8]}.partial.zip")
    try:
        _write_archive(location, keys, tmp, progress)
        packed = open_cache(str(tmp))
        if (
            packed.meta.fingerprint != reader.meta.fingerprint
            or not (packed.done_mask() == done).all()
        ):
            raise CacheError(f"packing {location} produced an archive that does not read back")
        _check_packed(packed, location)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    size = target.stat().st_size
    log.info("packed %s -> %s (%d objects, %d bytes)", location, target, len(keys), size)
    return PackResult(
        source=location.raw,
        out=target,
        members=len(keys),
        bytes=size,
        fingerprint=reader.meta.fingerprint,
        complete=bool(done.all()),
    )


def _check_packed(packed: CacheReader, source: CacheLocation) -> None:
    """Refuse an archive whose blocks ``kdcache verify`` would fail: every marked block's chunks
    present, intact and at their recorded position (digests), and the recorded figures equal to
    the hit counts. The check reads the archive just written (local), so it costs no download and
    proves exactly the bytes that are published."""
    bad = block_problems(packed)
    try:
        figures = figure_problems(packed)
    except KdcacheError as exc:
        figures = [str(exc)]
    if bad or figures:
        what = "; ".join([bad_blocks_detail(bad)] if bad else figures)
        raise CacheCorruptError(
            f"refusing to pack {source}: it is damaged ({what}). Nothing was written. Fetch an "
            "intact copy or re-extract it; `kdcache verify` checks it in place."
        )


def _check_target(source: CacheLocation, out: CacheLocation, *, force: bool) -> Path:
    if out.path is None:
        raise ConfigError(
            f"pack writes a local file, not {out}: pack to a local OUT.zip, then upload it "
            "with your storage's tool (e.g. `aws s3 cp OUT.zip s3://bucket/prefix/`)"
        )
    if source.is_zip:
        raise ConfigError(f"{source} is already a packed archive")
    target = out.path
    if not out.is_zip:
        raise ConfigError(f"OUT must name a .zip file (got {out}): caches are read by suffix")
    if target.exists() and not force:
        raise ConfigError(f"{target} already exists; pass --force to replace it")
    if target.is_dir():
        raise ConfigError(f"{target} is a directory")
    if not target.parent.is_dir():
        raise ConfigError(f"the directory of {target} does not exist")
    return target


def _write_archive(
    source: CacheLocation, keys: list[str], path: Path, progress: Callable[[int], None] | None
) -> None:
    with path.open("wb") as fh:
        with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
            for key, data in _read_objects(source, keys):
                if layout.is_chunk_key(key) and not layout.crc32c_trailer_ok(data):
                    raise CacheCorruptError(
                        f"{source}/{key} fails its crc32c checksum; refusing to pack a damaged "
                        "cache. Fetch an intact copy or re-extract it."
                    )
                info = zipfile.ZipInfo(key, date_time=_EPOCH)
                info.external_attr = 0o644 << 16
                archive.writestr(info, data)
                if progress is not None:
                    progress(len(data))
        # On disk before the rename, so that OUT never names an archive with unwritten bytes.
        fh.flush()
        os.fsync(fh.fileno())
