"""`verify` of a remote cache checks the objects at the origin, never the local chunk copies.

A publisher verifies a bucket to certify what every other machine will read: after an object in the
bucket is deleted or overwritten, verify must fail naming it, even where an earlier read left
intact local copies behind.
"""

from __future__ import annotations

from pathlib import Path

from kdcache.cache.reader import open_cache
from tests.test_share.conftest import put_object, run_cli, s3_objects, s3fs_client, upload


def read_every_block(location: str) -> None:
    """One pass over the cache: leaves a local copy of every chunk."""
    reader = open_cache(location)
    for view in range(reader.identity.augmentation.num_views):
        for block in range(reader.meta.num_blocks):
            reader.read_dense(view, block)
            reader.read_input_hashes(view, block)
    assert reader.local_copies is not None and any(reader.local_copies.rglob("*"))


def test_verify_fails_on_an_object_deleted_from_the_bucket(digits_cache, prefix):
    upload(digits_cache, prefix)
    read_every_block(prefix)
    code, output = run_cli(["verify", prefix, "--replay", "0"])
    assert code == 0, output
    s3fs_client().rm_file(f"{prefix.removeprefix('s3://')}/logits/c/1/4/0")
    code, output = run_cli(["verify", prefix, "--replay", "0"])
    assert code == 1 and "[FAIL] chunks" in output
    assert "logits chunk (view 1, block 4, rows 1024-1279)" in output and "missing" in output


def test_verify_fails_on_an_object_overwritten_in_the_bucket(digits_cache, prefix):
    upload(digits_cache, prefix)
    read_every_block(prefix)
    objects = s3_objects(prefix)
    put_object(f"{prefix}/input_hash/c/0/2", objects["input_hash/c/1/2"])  # valid, misplaced
    code, output = run_cli(["verify", prefix, "--replay", "0"])
    assert code == 1 and "input_hash chunk (view 0, block 2, rows 512-767)" in output


def test_verify_of_a_remote_zip_checks_the_archive_at_the_origin(digits_cache, prefix, tmp_path):
    packed = tmp_path / "digits.zip"
    code, output = run_cli(["pack", str(digits_cache), str(packed)])
    assert code == 0, output
    url = f"{prefix}/digits.zip"
    put_object(url, packed.read_bytes())
    code, output = run_cli(["verify", url, "--replay", "0"])
    assert code == 0, output
    s3fs_client().rm_file(url.removeprefix("s3://"))
    code, output = run_cli(["verify", url, "--replay", "0"])
    assert code == 1 and "no cache archive at" in output


def test_verify_leaves_no_local_copies(digits_cache, prefix, tmp_path: Path):
    upload(digits_cache, prefix)
    copies = tmp_path / "chunk-copies"  # KDCACHE_REMOTE_CACHE_DIR of the s3 fixture
    code, output = run_cli(["verify", prefix, "--replay", "0"])
    assert code == 0, output
    assert not copies.exists() or not any(p.is_file() for p in copies.rglob("*"))
