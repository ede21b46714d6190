"""`kdcache extract --out s3://...`: the same bytes as a local extract, from one or two ranks."""

from __future__ import annotations

import json

import pytest

from tests.conftest import cache_attrs, cache_chunk_bytes, run_kdcache_process
from tests.test_share.conftest import (
    BUCKET,
    chunk_bytes,
    put_object,
    run_cli,
    s3_listing,
    s3_objects,
)


def remote_attrs(prefix: str) -> dict:
    attrs = json.loads(s3_objects(prefix)["zarr.json"])["attributes"]["kdcache"]
    attrs.pop("created", None)
    return attrs


def test_extract_to_s3_writes_the_bytes_of_a_local_extract(
    digits_cache, digits_extract_args, prefix
):
    code, output = run_cli([*digits_extract_args, "--out", prefix, "--workers", "0"])
    assert code == 0, output
    assert f"cache {prefix}: complete" in output
    assert chunk_bytes(s3_objects(prefix)) == cache_chunk_bytes(digits_cache)
    assert remote_attrs(prefix) == cache_attrs(digits_cache)
    # Re-running finds every block marked and writes nothing.
    before = s3_listing(prefix)
    code, output = run_cli([*digits_extract_args, "--out", prefix, "--workers", "0"])
    assert code == 0 and "nothing to do" in output
    assert s3_listing(prefix) == before


@pytest.mark.slow
def test_two_torchrun_ranks_write_to_s3_the_bytes_of_one_process(
    digits_cache, digits_extract_args, prefix
):
    args = [*digits_extract_args, "--out", prefix, "--workers", "0", "--device", "cpu"]
    done = run_kdcache_process(args, ranks=2, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert chunk_bytes(s3_objects(prefix)) == cache_chunk_bytes(digits_cache)
    assert remote_attrs(prefix) == cache_attrs(digits_cache)


def test_a_prefix_holding_other_objects_is_never_written_into(digits_extract_args, prefix):
    put_object(f"{prefix}/thesis.tex", b"keep me")
    before = s3_objects(prefix)
    code, output = run_cli([*digits_extract_args, "--out", prefix])
    assert code != 0 and "non-empty prefix that is not a kdcache cache" in output
    assert "Traceback" not in output
    assert s3_objects(prefix) == before


def test_a_bucket_root_is_refused_as_an_extract_target(digits_extract_args, s3):
    code, output = run_cli([*digits_extract_args, "--out", f"s3://{BUCKET}"])
    assert code != 0 and "write a cache under a prefix" in output


def test_extract_into_a_missing_bucket_says_so(digits_extract_args, s3):
    code, output = run_cli([*digits_extract_args, "--out", "s3://no-such-bucket/c"])
    assert code != 0 and "bucket 'no-such-bucket' does not exist" in output
    assert "Traceback" not in output


def test_http_locations_are_read_only(digits_extract_args, tmp_path):
    code, output = run_cli([*digits_extract_args, "--out", "http://127.0.0.1:9/c"])
    assert code != 0 and "read-only" in output
