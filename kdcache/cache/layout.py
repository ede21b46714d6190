"""zarr v3's on-disk layout as kdcache writes it: the one module that knows object keys and bytes.

``docs/cache-format.md`` §2 specifies it: every array is stored with zarr's default chunk key
encoding (``<array>/c/<i>/<j>...``), its metadata in ``<array>/zarr.json`` (the group's in the root
``zarr.json``), and every chunk's codec chain ends with crc32c, whose 4 trailing bytes guard it.

zarr reads and writes through these rules itself (:mod:`.reader`, :mod:`.writer`), and every
array's metadata is checked against them on open (:func:`encoding_problems`). They are spelled
out here for the code that handles a cache's objects *without* opening it through zarr, where
going through zarr would cost more than it knows: the local chunk copies of a remote reader (a
store wrapper that sees bare keys and bytes, inside zarr's async I/O), ``kdcache pack`` (copies
objects byte for byte, batched through fsspec) and ``kdcache ls`` (one small document per cache,
no zarr group opened).
The chunk key encoding and the metadata file name are zarr's own objects, so they cannot drift
from what zarr writes; ``tests/test_cache/test_layout.py`` checks the rest against a real cache.
"""

from __future__ import annotations

import json
import re
from typing import Any

import zarr
from zarr.codecs import BytesCodec, Crc32cCodec, ZstdCodec
from zarr.codecs.bytes import Endian
from zarr.core.chunk_key_encodings import DefaultChunkKeyEncoding
from zarr.core.common import ZARR_JSON

METADATA_FILE = ZARR_JSON  # "zarr.json": a group's or an array's metadata document
CHUNK_KEY_ENCODING = DefaultChunkKeyEncoding(separator="/")
_CHUNK_DIR = "c"  # the default encoding's first key component (zarr v3 spec)
CRC32C_BYTES = 4
# zarr's LocalStore writes each object to ``<key without suffix>.<uuid4 hex>.partial`` and renames
# it; a killed writer leaves that file behind, and zarr never reads it.
_INTERRUPTED_WRITE = re.compile(r"\.[0-9a-f]{32}\.partial$")
# zstd level 3: the chunk bytes shrink ~8-25% (logits are noisy floats), decoding stays cheap.
# crc32c last: every stored chunk ends with the checksum of the bytes before it.
_COMPRESSORS = (ZstdCodec(level=3), Crc32cCodec())


def array_encoding() -> dict[str, Any]:
    """The keyword arguments of ``zarr.Group.create_array`` that fix a kdcache array's bytes."""
    return {
        "serializer": BytesCodec(),
        "compressors": list(_COMPRESSORS),
        "chunk_key_encoding": CHUNK_KEY_ENCODING,
    }


def encoding_problems(array: zarr.Array) -> list[str]:
    """How ``array``'s stored encoding differs from :func:`array_encoding` (empty: it does not).

    The codec chain must be bytes (little endian) -> zstd -> crc32c: without the crc32c a damaged
    chunk would decode silently, and another byte order would read other numbers.
    """
    metadata = array.metadata
    codecs: tuple[Any, ...] = tuple(getattr(metadata, "codecs", ()))
    names = [type(codec).__name__ for codec in codecs]
    expected = [type(codec).__name__ for codec in (BytesCodec(), *_COMPRESSORS)]
    problems = []
    if names != expected:
        problems.append(f"codecs {names}, expected {expected}")
    elif getattr(codecs[0], "endian", None) not in (None, Endian.little):
        problems.append(f"byte order {codecs[0].endian.value}, expected little")
    encoding = getattr(metadata, "chunk_key_encoding", None)
    if encoding != CHUNK_KEY_ENCODING:
        problems.append(f"chunk key encoding {encoding}, expected {CHUNK_KEY_ENCODING}")
    return problems


def chunk_key(array: str, index: tuple[int, ...]) -> str:
    """The object key of chunk ``index`` of ``array``, relative to the cache root (``a/c/0/1``)."""
    return f"{array}/{CHUNK_KEY_ENCODING.encode_chunk_key(index)}"


def chunk_prefix(array: str) -> str:
    """The key prefix shared by all of ``array``'s chunks (``block_done/c/``): one per object."""
    return f"{array}/{_CHUNK_DIR}/"


def metadata_key(array: str | None = None) -> str:
    """The key of an array's metadata document, or of the root group's when ``array`` is None."""
    return METADATA_FILE if array is None else f"{array}/{METADATA_FILE}"


def is_chunk_key(key: str) -> bool:
    """Whether ``key`` (relative to a cache root) names a chunk rather than a metadata document."""
    return f"/{_CHUNK_DIR}/" in f"/{key}"


def is_interrupted_write(key: str) -> bool:
    """Whether ``key`` is a temporary file of a local write that never finished (not an object)."""
    return _INTERRUPTED_WRITE.search(key) is not None


def array_of_metadata_key(key: str) -> str | None:
    """The array whose metadata document ``key`` is (``logits/zarr.json`` -> ``logits``), or None.

    kdcache caches are flat: a group whose arrays sit directly under its root.
    """
    array, sep, name = key.partition("/")
    return array if sep and name == METADATA_FILE else None


def crc32c_trailer_ok(data: bytes) -> bool:
    """Whether a stored chunk's trailing crc32c (little-endian) matches the bytes before it."""
    import google_crc32c  # what zarr's Crc32cCodec computes it with

    body, trailer = data[:-CRC32C_BYTES], data[-CRC32C_BYTES:]
    return len(data) >= CRC32C_BYTES and google_crc32c.value(body) == int.from_bytes(
        trailer, "little"
    )


def group_attributes(document: bytes) -> dict[str, Any]:
    """The attributes of a group's ``zarr.json`` document (empty when it has none).

    Raises:
        ValueError: the document is not JSON (``json.JSONDecodeError``) or not a JSON object.
    """
    parsed = json.loads(document)
    if not isinstance(parsed, dict):
        raise ValueError(f"{METADATA_FILE} is not a JSON object")
    attrs = parsed.get("attributes", {})
    return attrs if isinstance(attrs, dict) else {}
