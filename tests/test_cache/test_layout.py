"""kdcache.cache.layout (the code that reads objects without zarr) agrees with what zarr writes."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import zarr

from kdcache.cache import layout, schema
from kdcache.cache.reader import open_cache
from tests.test_cache.test_store import make_meta, write_all


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real cache written by kdcache's writer: 2 views, 3 blocks of 4 rows (the last short)."""
    path = tmp_path_factory.mktemp("layout") / "cache"
    write_all(path, make_meta(n=10, c=5, views=2, rows=4))
    return path


def stored_keys(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def test_chunk_keys_are_the_keys_zarr_writes_and_everything_else_is_metadata(written):
    group = zarr.open_group(written, mode="r")
    expected_chunks: set[str] = set()
    for name, array in group.arrays():
        grid = [range(-(-s // c)) for s, c in zip(array.shape, array.chunks, strict=True)]
        for index in itertools.product(*grid):
            key = layout.chunk_key(name, index)
            assert key == f"{name}/{array.metadata.encode_chunk_key(index)}"  # zarr's own answer
            assert key.startswith(layout.chunk_prefix(name))
            expected_chunks.add(key)
    keys = stored_keys(written)
    chunks = {k for k in keys if layout.is_chunk_key(k)}
    assert chunks == expected_chunks  # every block of every array was written, nothing else
    metadata = keys - chunks
    assert layout.metadata_key() in metadata
    arrays = {layout.array_of_metadata_key(k) for k in metadata} - {None}
    assert arrays == {name for name, _ in group.arrays()}
    assert metadata == {layout.metadata_key(), *(layout.metadata_key(a) for a in arrays)}


def test_every_stored_chunk_ends_with_its_crc32c_and_a_flipped_byte_fails_it(written):
    for key in sorted(k for k in stored_keys(written) if layout.is_chunk_key(k)):
        data = (written / key).read_bytes()
        assert layout.crc32c_trailer_ok(data), key
        damaged = bytearray(data)
        damaged[0] ^= 0x01
        assert not layout.crc32c_trailer_ok(bytes(damaged)), key
    assert not layout.crc32c_trailer_ok(b"abc")  # shorter than a trailer


def test_a_killed_local_write_is_told_apart_from_the_objects(written):
    assert not any(layout.is_interrupted_write(k) for k in stored_keys(written))
    leftover = f"logits/c/0/1/0.{'ab' * 16}.partial"  # what zarr's LocalStore leaves when killed
    assert layout.is_interrupted_write(leftover)


def test_the_completeness_marks_are_one_object_each_under_the_chunk_prefix(written):
    prefix = layout.chunk_prefix(schema.BLOCK_DONE)
    marks = [k for k in stored_keys(written) if k.startswith(prefix)]
    assert len(marks) == int(open_cache(written).done_mask().sum()) == 2 * 3


def test_the_root_document_holds_the_self_description(written):
    attrs = layout.group_attributes((written / layout.metadata_key()).read_bytes())
    assert attrs[schema.ATTRS_KEY]["format_version"] == schema.FORMAT_VERSION
    assert layout.group_attributes(b'{"zarr_format": 3, "node_type": "group"}') == {}
    with pytest.raises(ValueError):
        layout.group_attributes(b"[1, 2]")


def test_naming_the_layout_explicitly_writes_the_same_metadata_as_zarrs_defaults(tmp_path):
    """The format is unchanged: kdcache's encoding arguments are zarr's defaults made explicit."""
    encoding = layout.array_encoding()
    documents = []
    for name, extra in (("explicit", {"chunk_key_encoding": encoding["chunk_key_encoding"]}),
                        ("default", {})):  # fmt: skip
        group = zarr.open_group(tmp_path / name, mode="w", zarr_format=3)
        group.create_array(
            "a",
            shape=(2, 3),
            chunks=(1, 3),
            dtype="float32",
            serializer=encoding["serializer"],
            compressors=encoding["compressors"],
            **extra,
        )[:] = np.ones((2, 3), np.float32)
        documents.append(json.loads((tmp_path / name / "a" / layout.METADATA_FILE).read_text()))
        assert stored_keys(tmp_path / name) >= {"a/c/0/0", "a/c/1/0"}
    assert documents[0] == documents[1]
