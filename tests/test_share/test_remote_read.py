"""Reading caches from an S3-compatible server, http and zip: same answers as the local copy."""

from __future__ import annotations

import functools
import http.server
import json
import multiprocessing
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from kdcache.cache.reader import CacheReader, open_cache
from kdcache.cache.writer import open_for_writing
from tests.test_share._readers import digest_of_every_block
from tests.test_share.conftest import (
    put_object,
    run_cli,
    s3_listing,
    s3_objects,
    s3fs_client,
    upload,
)


def summary(location: str) -> dict:
    code, output = run_cli(["info", location, "--json"])
    assert code == 0, output
    d = json.loads(output)
    d.pop("location")
    return d


def every_block(location: str, cache_dir: Path | None = None) -> list[np.ndarray]:
    reader = open_cache(location, cache_dir=cache_dir)
    V, nb = reader.identity.augmentation.num_views, reader.meta.num_blocks
    return [reader.read_dense(v, b) for v in range(V) for b in range(nb)] + [
        reader.read_input_hashes(v, b) for v in range(V) for b in range(nb)
    ]


def assert_same_blocks(a: list[np.ndarray], b: list[np.ndarray]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.dtype == y.dtype and np.array_equal(x, y)


def test_info_and_verify_over_s3_match_the_local_cache(digits_cache, prefix):
    upload(digits_cache, prefix)
    assert summary(prefix) == summary(str(digits_cache))  # stored_bytes included
    code, output = run_cli(["verify", prefix, "--replay", "16"])
    assert code == 0, output
    assert "[ok] chunks: 12 blocks decode" in output and "[ok] replay" in output


def test_second_pass_reads_local_copies_not_the_server(digits_cache, prefix, tmp_path):
    upload(digits_cache, prefix)
    copies = tmp_path / "copies"
    first = every_block(prefix, cache_dir=copies)
    # Delete every chunk object on the server: only the local copies can still serve them.
    fs = s3fs_client()
    chunks = [k for k in fs.find(prefix.removeprefix("s3://")) if "/c/" in k]
    fs.rm(chunks)
    assert_same_blocks(every_block(prefix, cache_dir=copies), first)
    # One local file per chunk read: logits, input hashes and digest records of 2 views x 6 blocks.
    assert len([p for p in copies.rglob("*") if p.is_file()]) == 3 * 2 * 6


def test_local_copies_live_outside_the_cache_and_are_per_extraction(digits_cache, prefix, tmp_path):
    upload(digits_cache, prefix)
    copies = tmp_path / "copies"
    reader = open_cache(prefix, cache_dir=copies)
    reader.read_dense(0, 0)
    assert reader.local_copies is not None and reader.local_copies.parent == copies
    assert (reader.local_copies / "logits" / "c" / "0" / "0" / "0").is_file()
    # Re-extraction at the same URL (new creation time, other bytes): old copies are not used.
    rewrite_block_0_with_the_logits_of_block_1(prefix, reader)
    root = json.loads(s3_objects(prefix)["zarr.json"])
    root["attributes"]["kdcache"]["created"] = "2030-01-01T00:00:00+00:00"
    put_object(f"{prefix}/zarr.json", json.dumps(root).encode())
    again = open_cache(prefix, cache_dir=copies)
    assert again.local_copies != reader.local_copies
    assert np.array_equal(again.read_dense(0, 0), reader.read_dense(0, 1))


def rewrite_block_0_with_the_logits_of_block_1(prefix: str, reader: CacheReader) -> None:
    """Write other logits into (view 0, block 0) through the writer (data, digest and mark)."""
    logits = reader.read_dense(0, 1).astype(np.float32)
    writer = open_for_writing(prefix, reader.meta, reader.labels(), create=True)
    writer.write_block(0, 0, logits, reader.read_input_hashes(0, 0), 0, 0)


def test_a_damaged_local_copy_is_fetched_again(digits_cache, prefix, tmp_path):
    upload(digits_cache, prefix)
    copies = tmp_path / "copies"
    expected = every_block(prefix, cache_dir=copies)
    reader = open_cache(prefix, cache_dir=copies)
    assert reader.local_copies is not None
    copy = reader.local_copies / "logits" / "c" / "1" / "2" / "0"
    copy.write_bytes(copy.read_bytes()[:-7])
    assert_same_blocks(every_block(prefix, cache_dir=copies), expected)
    assert copy.read_bytes() == (digits_cache / "logits" / "c" / "1" / "2" / "0").read_bytes()


def test_local_copies_can_be_turned_off(digits_cache, prefix, monkeypatch, tmp_path):
    upload(digits_cache, prefix)
    monkeypatch.setenv("KDCACHE_REMOTE_CACHE_DIR", "off")
    reader = open_cache(prefix)
    assert reader.local_copies is None
    assert np.array_equal(reader.read_dense(0, 0), open_cache(str(digits_cache)).read_dense(0, 0))


def test_an_incomplete_remote_cache_keeps_no_local_copies(digits_cache, prefix):
    upload(digits_cache, prefix)
    root = json.loads(s3_objects(prefix)["zarr.json"])
    root["attributes"]["kdcache"]["complete"] = False
    put_object(f"{prefix}/zarr.json", json.dumps(root).encode())
    reader = open_cache(prefix)
    assert reader.local_copies is None  # its chunks may still be rewritten by a resume
    assert np.array_equal(reader.read_dense(1, 5), open_cache(str(digits_cache)).read_dense(1, 5))


def test_readers_never_write_to_the_cache(digits_cache, prefix, tmp_path):
    upload(digits_cache, prefix)
    before = s3_listing(prefix)
    assert run_cli(["info", prefix])[0] == 0
    assert run_cli(["verify", prefix, "--replay", "4"])[0] == 0
    assert run_cli(["ls", prefix])[0] == 0
    assert run_cli(["pack", prefix, str(tmp_path / "c.zip")])[0] == 0
    every_block(prefix)
    every_block(prefix)
    assert s3_listing(prefix) == before


def test_two_reader_processes_at_once_read_identical_blocks(digits_cache, prefix, tmp_path):
    upload(digits_cache, prefix)
    shared_copies = str(tmp_path / "shared-copies")  # both race to fill the same directory
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        results = pool.starmap(digest_of_every_block, [(prefix, shared_copies)] * 2)
    local = digest_of_every_block(str(digits_cache))
    assert results == [local, local]
    assert digest_of_every_block(prefix, shared_copies) == local  # copies whole after the race


def _read_in_child(reader, queue) -> None:  # type: ignore[no-untyped-def]
    try:
        queue.put(reader.read_dense(1, 3).tobytes())
    except Exception as exc:  # the parent asserts on it
        queue.put(repr(exc))


def test_a_reader_opened_before_fork_reads_in_the_child(digits_cache, prefix, tmp_path):
    """DataLoader workers are forked from a process that already opened the cache."""
    upload(digits_cache, prefix)
    reader = open_cache(prefix, cache_dir=tmp_path / "copies")
    reader.read_dense(0, 0)  # the parent's client is now bound to the parent's event loop
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_read_in_child, args=(reader, queue))
    child.start()
    got = queue.get(timeout=60)
    child.join(timeout=60)
    assert got == open_cache(str(digits_cache)).read_dense(1, 3).tobytes()
    assert np.array_equal(reader.read_dense(1, 3), open_cache(str(digits_cache)).read_dense(1, 3))


@pytest.fixture
def http_root(digits_cache: Path, tmp_path: Path) -> Iterator[str]:
    """A static http server on loopback serving the cache (``/digits``) and a packed copy."""
    served = tmp_path / "www"
    served.mkdir()
    (served / "digits").symlink_to(digits_cache, target_is_directory=True)
    code, output = run_cli(["pack", str(digits_cache), str(served / "digits.zip")])
    assert code == 0, output

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        thread.join()


def test_http_directory_and_zip_read_like_the_local_cache(digits_cache, http_root, tmp_path):
    local = every_block(str(digits_cache))
    assert_same_blocks(every_block(f"{http_root}/digits", cache_dir=tmp_path / "c1"), local)
    assert_same_blocks(every_block(f"{http_root}/digits.zip", cache_dir=tmp_path / "c2"), local)
    code, output = run_cli(["info", f"{http_root}/missing"])
    assert code != 0 and "no kdcache cache at" in output and "Traceback" not in output


def test_the_remote_cache_dir_flag_says_where_local_copies_go(digits_cache, prefix, tmp_path):
    upload(digits_cache, prefix)
    flag_dir = tmp_path / "flag-copies"
    code, output = run_cli(["info", "--remote-cache-dir", str(flag_dir), prefix])
    assert code == 0, output
    assert len([p for p in flag_dir.rglob("*") if p.is_file()]) > 0
    assert not any(p.is_file() for p in (tmp_path / "chunk-copies").rglob("*"))
