"""Every array's zarr metadata is compared with the table of arrays on open (issue 25, item 19).

An edited ``<array>/zarr.json`` (another dtype, another chunk shape, a codec chain without its
crc32c) is a damaged cache: the API raises CacheCorruptError naming the array, and every command
says so in one line instead of "This is a bug in kdcache".
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from kdcache.cache import arrays, schema
from kdcache.cache.reader import open_cache
from kdcache.cache.writer import open_for_writing
from kdcache.cli import main
from kdcache.errors import CacheCorruptError


def edit(document: dict, change: Callable[[dict], None]) -> dict:
    change(document)
    return document


def other_dtype(doc: dict) -> None:
    doc["data_type"] = "float32"  # the cache is float16


def other_chunks(doc: dict) -> None:
    doc["chunk_grid"]["configuration"]["chunk_shape"][1] = 128  # blocks are 256 rows


def no_crc32c(doc: dict) -> None:
    doc["codecs"] = [c for c in doc["codecs"] if c["name"] != "crc32c"]


def big_endian(doc: dict) -> None:
    doc["codecs"][0]["configuration"]["endian"] = "big"


def other_shape(doc: dict) -> None:
    doc["shape"][1] += 1


def other_fill(doc: dict) -> None:
    doc["fill_value"] = 0.0


def unreadable_dtype(doc: dict) -> None:
    doc["data_type"] = "float99"  # valid JSON zarr cannot read


TAMPERINGS = {
    "dtype float32": (other_dtype, "dtype float32, expected float16"),
    "chunk shape": (other_chunks, "chunk shape (1, 128, 10), expected (1, 256, 10)"),
    "no crc32c": (no_crc32c, "expected ['BytesCodec', 'ZstdCodec', 'Crc32cCodec']"),
    "big endian": (big_endian, "byte order big"),
    "shape": (other_shape, "zarr.json: shape (2, "),  # one row more than the dataset has
    "fill": (other_fill, "fill value 0.0, expected nan"),
    "unreadable": (unreadable_dtype, "zarr cannot read it"),
}


@pytest.fixture(params=sorted(TAMPERINGS))
def tampered(request, digits_cache, tmp_path) -> tuple[Path, str]:
    """A copy of the digits cache whose logits/zarr.json was edited; and what the error says."""
    change, says = TAMPERINGS[request.param]
    cache = tmp_path / "tampered"
    shutil.copytree(digits_cache, cache)
    document = cache / schema.LOGITS / "zarr.json"
    document.write_text(json.dumps(edit(json.loads(document.read_text()), change)))
    return cache, says


def test_the_api_refuses_tampered_array_metadata_naming_the_array(tampered):
    cache, says = tampered
    with pytest.raises(CacheCorruptError, match="array 'logits'") as caught:
        open_cache(str(cache))
    assert says in str(caught.value) and "logits/zarr.json" in str(caught.value)


@pytest.mark.parametrize("command", [["info"], ["verify", "--replay", "0"]])
def test_commands_report_tampered_metadata_in_one_line(tampered, command):
    cache, says = tampered
    result = CliRunner().invoke(main, [command[0], str(cache), *command[1:]])
    assert result.exit_code == 1, result.output
    assert "array 'logits'" in result.output and says in result.output
    assert "bug in kdcache" not in result.output and "Traceback" not in result.output


def test_a_resumed_cache_is_checked_as_well(tampered):
    cache, says = tampered
    stored = schema.CacheMeta.from_dict(zarr.open_group(str(cache), mode="r").attrs["kdcache"])
    with pytest.raises(CacheCorruptError, match="array 'logits'"):
        labels = np.zeros(stored.identity.dataset.num_samples, np.int64)
        open_for_writing(str(cache), stored, labels, create=True)


def test_the_table_is_what_the_writer_creates(digits_cache):
    """The table and a real cache agree: every array it lists exists with that layout, and the
    cache holds no other array."""
    reader = open_cache(str(digits_cache))
    specs = arrays.array_specs(reader.meta)
    group = zarr.open_group(str(digits_cache), mode="r")
    assert sorted(name for name, _ in group.arrays()) == sorted(s.name for s in specs)
    for spec in specs:
        array = group[spec.name]
        assert (array.shape, array.chunks, str(array.dtype)) == (
            spec.shape,
            spec.chunks,
            spec.dtype,
        )
