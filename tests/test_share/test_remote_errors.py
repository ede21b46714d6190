"""What a consumer sees when the bucket, the credentials or the bytes are wrong: a clear error."""

from __future__ import annotations

import json
import socket

import pytest

from kdcache.cache.reader import open_cache
from kdcache.cache.remote import StorageAccessError, StorageUnavailableError
from kdcache.errors import CacheCorruptError, CacheError, DataNotFoundError
from tests.test_share.conftest import BUCKET, put_object, run_cli, s3_objects, upload


def test_a_missing_bucket_is_named(s3):
    with pytest.raises(DataNotFoundError, match="bucket 'nowhere' does not exist"):
        open_cache("s3://nowhere/caches/c")
    code, output = run_cli(["info", "s3://nowhere/caches/c"])
    assert code != 0 and "bucket 'nowhere' does not exist" in output
    assert "Traceback" not in output


def test_a_missing_prefix_says_there_is_no_cache_there(s3):
    with pytest.raises(DataNotFoundError, match=f"no kdcache cache at s3://{BUCKET}/nothing-here"):
        open_cache(f"s3://{BUCKET}/nothing-here")


@pytest.mark.parametrize(
    ("variable", "value"),
    [("AWS_SECRET_ACCESS_KEY", "not-the-secret"), ("AWS_ACCESS_KEY_ID", "AKIAUNKNOWNUSER00000")],
)
def test_wrong_credentials_are_reported_as_such(digits_cache, prefix, monkeypatch, variable, value):
    upload(digits_cache, prefix)
    monkeypatch.setenv(variable, value)
    with pytest.raises(StorageAccessError, match="denied access") as err:
        open_cache(prefix)
    assert "AWS_ACCESS_KEY_ID" in str(err.value)  # says where credentials come from
    for command in (["info", prefix], ["verify", prefix], ["ls", prefix]):
        code, output = run_cli(command)
        assert code != 0 and "denied access" in output and "Traceback" not in output


def test_a_truncated_chunk_object_is_named(digits_cache, prefix):
    upload(digits_cache, prefix)
    whole = s3_objects(prefix)["logits/c/1/2/0"]
    put_object(f"{prefix}/logits/c/1/2/0", whole[: len(whole) // 2])
    reader = open_cache(prefix)
    reader.read_dense(1, 1)  # the other blocks still read
    with pytest.raises(CacheCorruptError, match=r"logits chunk \(view 1, block 2\) fails its crc"):
        reader.read_dense(1, 2)
    code, output = run_cli(["verify", prefix, "--replay", "0"])
    assert code != 0 and "[FAIL] chunks" in output and "(view 1, block 2)" in output


def test_a_corrupted_chunk_object_is_named_and_never_copied_locally(digits_cache, prefix):
    upload(digits_cache, prefix)
    data = bytearray(s3_objects(prefix)["input_hash/c/0/4"])
    data[len(data) // 2] ^= 0xFF
    put_object(f"{prefix}/input_hash/c/0/4", bytes(data))
    reader = open_cache(prefix)
    for _ in range(2):  # the second read goes to the server again: no bad local copy
        with pytest.raises(CacheCorruptError, match=r"input_hash chunk \(view 0, block 4\)"):
            reader.read_input_hashes(0, 4)
    assert reader.local_copies is not None
    assert not (reader.local_copies / "input_hash" / "c" / "0" / "4").exists()


def test_corrupted_metadata_is_a_cache_error(digits_cache, prefix):
    upload(digits_cache, prefix)
    doc = s3_objects(prefix)["zarr.json"]
    put_object(f"{prefix}/zarr.json", doc[: len(doc) // 2])
    with pytest.raises(CacheCorruptError, match="not valid JSON"):
        open_cache(prefix)


def test_an_incomplete_cache_says_what_is_missing_and_how_to_resume(digits_cache, prefix):
    upload(digits_cache, prefix)
    root = json.loads(s3_objects(prefix)["zarr.json"])
    meta = root["attributes"]["kdcache"]
    meta["complete"] = False
    del meta["teacher_top1"], meta["teacher_top5"]
    put_object(f"{prefix}/zarr.json", json.dumps(root).encode())
    from tests.test_share.conftest import s3fs_client

    s3fs_client().rm_file(f"{prefix.removeprefix('s3://')}/block_done/c/1/3")
    with pytest.raises(CacheError, match=r"incomplete: 1 of 12 blocks .*\(view 1, block 3\)"):
        open_cache(prefix).require_complete()
    code, output = run_cli(["info", prefix])
    assert code == 0 and "INCOMPLETE (11/12 blocks)" in output
    code, output = run_cli(["verify", prefix, "--replay", "0"])
    assert (
        code != 0
        and "[FAIL] complete" in output
        and "re-running the same `kdcache extract`" in output
    )


def test_an_unreachable_server_is_named(s3, monkeypatch):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # botocore's retries would only slow the test
    with pytest.raises(StorageUnavailableError, match="cannot reach the storage service"):
        open_cache(f"s3://{BUCKET}/c")
