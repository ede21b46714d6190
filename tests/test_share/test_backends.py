"""One contract for every storage backend (issue 24 item 4): the same cases, four backends.

zarr-python's ``StoreTests`` is the model: a backend is a way to publish a cache directory (a local
directory, a ``.zip`` archive, a static http server on loopback, a moto S3 server on loopback) and,
where it can be written, a fresh location to write into. Every case below runs against each of
them: read, write (or a clear refusal), list, partial reads, a missing object and a damaged
object. A new backend joins by adding one entry to ``BACKENDS``.
"""

from __future__ import annotations

import functools
import http.server
import shutil
import threading
import uuid
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import zarr.core.sync
from zarr.abc.store import OffsetByteRequest, RangeByteRequest, SuffixByteRequest
from zarr.core.buffer import default_buffer_prototype

from kdcache.cache import layout, schema
from kdcache.cache.listing import list_caches
from kdcache.cache.reader import CacheReader, open_cache
from kdcache.cache.writer import open_for_writing
from kdcache.errors import CacheCorruptError, ConfigError, DataNotFoundError
from tests.test_share.conftest import upload

CHUNK = (schema.LOGITS, 1, 3)  # (array, view, block) of the chunk the object cases use


@dataclass(frozen=True)
class Backend:
    name: str
    publish: Callable[[Path], str]  # a cache directory -> its location on this backend
    fresh: Callable[[], str] | None  # a new location to write a cache into; None: read-only
    parent: Callable[[str], str]  # where `list_caches` finds a published location


def zip_directory(cache: Path, out: Path) -> None:
    """The archive `kdcache pack` would write, without its checks (these caches are damaged)."""
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as archive:
        for path in sorted(cache.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(cache).as_posix())


def parent_of(location: str) -> str:
    return location.rstrip("/").rsplit("/", 1)[0]


@pytest.fixture
def http_served(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A static http server on loopback: (the directory it serves, its URL)."""
    served = tmp_path / "www"
    served.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(served))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield served, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        thread.join()


def _published(tmp_path: Path) -> Path:
    """A new, empty directory to publish one cache under."""
    folder = tmp_path / "published" / uuid.uuid4().hex[:8]
    folder.mkdir(parents=True)
    return folder


@pytest.fixture(params=["directory", "zip", "http", "s3"])
def backend(request, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Backend:
    monkeypatch.setenv("KDCACHE_REMOTE_CACHE_DIR", str(tmp_path / "chunk-copies"))
    if request.param == "directory":

        def publish_directory(cache: Path) -> str:
            return str(shutil.copytree(cache, _published(tmp_path) / "cache"))

        def fresh_directory() -> str:
            return str(_published(tmp_path) / "new")

        return Backend("directory", publish_directory, fresh_directory, parent_of)
    if request.param == "zip":

        def publish_zip(cache: Path) -> str:
            out = _published(tmp_path) / "cache.zip"
            zip_directory(cache, out)
            return str(out)

        return Backend("zip", publish_zip, None, parent_of)
    if request.param == "http":
        served, url = request.getfixturevalue("http_served")

        def publish_http(cache: Path) -> str:
            name = uuid.uuid4().hex[:8]
            shutil.copytree(cache, served / name)
            return f"{url}/{name}"

        return Backend("http", publish_http, None, parent_of)
    prefix = request.getfixturevalue("prefix")  # s3://bucket/<random> on the moto server

    def publish_s3(cache: Path) -> str:
        location = f"{prefix}/{uuid.uuid4().hex[:8]}"
        upload(cache, location)
        return location

    def fresh_s3() -> str:
        return f"{prefix}/{uuid.uuid4().hex[:8]}"

    return Backend("s3", publish_s3, fresh_s3, parent_of)


def damaged_copy(cache: Path, tmp_path: Path, damage: Callable[[Path], None]) -> Path:
    copy = shutil.copytree(cache, tmp_path / f"source-{uuid.uuid4().hex[:8]}")
    damage(copy / layout.chunk_key(CHUNK[0], (CHUNK[1], CHUNK[2], 0)))
    return copy


def every_block(reader: CacheReader) -> list[np.ndarray]:
    V, nb = reader.identity.augmentation.num_views, reader.meta.num_blocks
    return [reader.read_dense(v, b) for v in range(V) for b in range(nb)] + [
        reader.read_input_hashes(v, b) for v in range(V) for b in range(nb)
    ]


def assert_same(a: list[np.ndarray], b: list[np.ndarray]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.dtype == y.dtype and np.array_equal(x, y)


# ------------------------------------------------------------------------------------- the cases


def test_read(backend, digits_cache):
    location = backend.publish(digits_cache)
    reader, local = open_cache(location), open_cache(str(digits_cache))
    assert reader.meta == local.meta
    assert np.array_equal(reader.labels(), local.labels())
    assert_same(every_block(reader), every_block(local))


def test_write(backend, digits_cache):
    local = open_cache(str(digits_cache))
    if backend.fresh is None:
        with pytest.raises(ConfigError, match="read-only"):
            open_for_writing(backend.publish(digits_cache), local.meta, local.labels(), create=True)
        return
    location = backend.fresh()
    writer = open_for_writing(location, local.meta, local.labels(), create=True)
    for view, block in np.argwhere(~writer.done_mask()).tolist():
        top1, top5 = local.read_block_counts(view, block)
        logits = local.read_dense(view, block).astype(np.float32)
        writer.write_block(view, block, logits, local.read_input_hashes(view, block), top1, top5)
    assert writer.finalize().complete
    written = open_cache(location)
    assert written.meta.identity == local.meta.identity and written.meta.complete
    assert written.meta.teacher_top1 == local.meta.teacher_top1
    assert_same(every_block(written), every_block(local))


def test_list(backend, digits_cache):
    """`ls` finds the published cache beside it (over http: through the server's directory
    index pages, which this loopback server writes as most static servers do)."""
    location = backend.publish(digits_cache)
    entries = list_caches(backend.parent(location))
    assert [e.location for e in entries] == [location]
    assert entries[0].complete and entries[0].blocks_done == open_cache(location).done_mask().size


def test_partial_read(backend, digits_cache, tmp_path):
    """Byte ranges of an object are its bytes' slices, and one block reads although every other
    chunk of its array is gone (a reader fetches what it reads, nothing more)."""
    location = backend.publish(digits_cache)
    key = layout.chunk_key(CHUNK[0], (CHUNK[1], CHUNK[2], 0))
    whole = (digits_cache / key).read_bytes()
    store = open_cache(location).group.store
    prototype = default_buffer_prototype()
    for byte_range, expected in [
        (None, whole),
        (RangeByteRequest(5, 40), whole[5:40]),
        (OffsetByteRequest(len(whole) - 9), whole[-9:]),
        (SuffixByteRequest(layout.CRC32C_BYTES), whole[-layout.CRC32C_BYTES :]),
    ]:
        got = zarr.core.sync.sync(store.get(key, prototype, byte_range))
        assert got is not None and got.to_bytes() == expected, (backend.name, byte_range)

    def keep_one_chunk(kept: Path) -> None:
        for path in (kept.parent.parent.parent).rglob("*"):
            if path.is_file() and path != kept:
                path.unlink()

    sparse = backend.publish(damaged_copy(digits_cache, tmp_path, keep_one_chunk))
    view, block = CHUNK[1], CHUNK[2]
    expected_block = open_cache(str(digits_cache)).read_dense(view, block)
    assert np.array_equal(open_cache(sparse).read_dense(view, block), expected_block)


def test_missing_object(backend, digits_cache, tmp_path):
    location = backend.publish(damaged_copy(digits_cache, tmp_path, Path.unlink))
    reader = open_cache(location)
    view, block = CHUNK[1], CHUNK[2]
    missing = rf"logits chunk \(view {view}, block {block}.* is missing although"
    with pytest.raises(CacheCorruptError, match=missing):
        reader.read_dense(view, block)
    assert reader.read_dense(view, block - 1).shape == reader.read_dense(0, block).shape
    absent = parent_of(location) + ("/absent.zip" if location.endswith(".zip") else "/absent")
    with pytest.raises(DataNotFoundError, match="no (kdcache cache|cache archive) at"):
        open_cache(absent)


def test_damaged_object(backend, digits_cache, tmp_path):
    def flip_a_byte(path: Path) -> None:
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))

    location = backend.publish(damaged_copy(digits_cache, tmp_path, flip_a_byte))
    reader = open_cache(location)
    view, block = CHUNK[1], CHUNK[2]
    for _ in range(2):  # the damaged object is never kept as a local copy: same error again
        with pytest.raises(CacheCorruptError, match="fails its crc32c checksum"):
            reader.read_dense(view, block)
