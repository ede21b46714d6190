"""`kdcache pack` (one-file artifact) and `kdcache ls` (what a directory or prefix holds)."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from kdcache.cache.listing import list_caches
from kdcache.cache.pack import pack_cache
from kdcache.cache.reader import open_cache
from kdcache.errors import CacheCorruptError, ConfigError
from tests.test_share.conftest import BUCKET, run_cli, s3fs_client, upload


def blocks(location: str) -> list[np.ndarray]:
    reader = open_cache(location)
    V, nb = reader.identity.augmentation.num_views, reader.meta.num_blocks
    return [reader.read_dense(v, b) for v in range(V) for b in range(nb)] + [
        reader.read_input_hashes(v, b) for v in range(V) for b in range(nb)
    ]


def make_incomplete(cache) -> None:  # type: ignore[no-untyped-def]
    """Drop one block's mark and the completion record, as a killed extract would leave it."""
    (cache / "block_done" / "c" / "1" / "3").unlink()
    doc = json.loads((cache / "zarr.json").read_text())
    meta = doc["attributes"]["kdcache"]
    meta["complete"] = False
    del meta["teacher_top1"], meta["teacher_top5"]
    (cache / "zarr.json").write_text(json.dumps(doc))


def test_a_packed_zip_reads_like_the_directory(digits_cache, tmp_path):
    out = tmp_path / "digits.zip"
    code, output = run_cli(["pack", str(digits_cache), str(out)])
    assert code == 0, output
    assert "81 objects" in output and "complete" in output
    for x, y in zip(blocks(str(out)), blocks(str(digits_cache)), strict=True):
        assert np.array_equal(x, y)
    assert open_cache(str(out)).meta == open_cache(str(digits_cache)).meta
    with zipfile.ZipFile(out) as archive:
        names = archive.namelist()
        assert names[0] == "zarr.json"
        assert all(i.compress_type == zipfile.ZIP_STORED for i in archive.infolist())
    code, output = run_cli(["verify", str(out), "--replay", "8"])
    assert code == 0, output


def test_packing_is_reproducible_and_reads_from_s3(digits_cache, prefix, tmp_path):
    upload(digits_cache, prefix)
    local_zip, remote_zip = tmp_path / "a.zip", tmp_path / "b.zip"
    pack_cache(str(digits_cache), local_zip)
    pack_cache(prefix, remote_zip)  # from the object store
    assert local_zip.read_bytes() == remote_zip.read_bytes()
    s3fs_client().put_file(str(local_zip), f"{prefix.removeprefix('s3://')}-packed/digits.zip")
    for x, y in zip(blocks(f"{prefix}-packed/digits.zip"), blocks(str(digits_cache)), strict=True):
        assert np.array_equal(x, y)


def test_stray_files_beside_a_cache_stay_out_of_the_archive(digits_cache, tmp_path):
    cache = tmp_path / "c"
    shutil.copytree(digits_cache, cache)
    (cache / ".DS_Store").write_bytes(b"junk")
    (cache / "NOTES.txt").write_text("hi")
    out = pack_cache(str(cache), tmp_path / "c.zip").out
    with zipfile.ZipFile(out) as archive:
        assert not {".DS_Store", "NOTES.txt"} & set(archive.namelist())


def test_pack_refuses_an_incomplete_cache_unless_asked(digits_cache, tmp_path):
    cache = tmp_path / "partial"
    shutil.copytree(digits_cache, cache)
    make_incomplete(cache)
    out = tmp_path / "partial.zip"
    code, output = run_cli(["pack", str(cache), str(out)])
    assert code != 0 and "incomplete" in output and "--allow-incomplete" in output
    assert not out.exists()
    code, output = run_cli(["pack", str(cache), str(out), "--allow-incomplete"])
    assert code == 0 and "INCOMPLETE" in output
    assert not open_cache(str(out)).done_mask()[1, 3]


def test_pack_never_overwrites_without_force(digits_cache, tmp_path):
    out = tmp_path / "taken.zip"
    out.write_bytes(b"precious")
    code, output = run_cli(["pack", str(digits_cache), str(out)])
    assert code != 0 and "already exists" in output and "--force" in output
    assert out.read_bytes() == b"precious"
    assert run_cli(["pack", str(digits_cache), str(out), "--force"])[0] == 0
    assert open_cache(str(out)).meta.complete
    assert [p.name for p in tmp_path.iterdir()] == ["taken.zip"]  # no temporary file left


def test_pack_refuses_a_damaged_cache_and_leaves_nothing(digits_cache, tmp_path):
    cache = tmp_path / "damaged"
    shutil.copytree(digits_cache, cache)
    chunk = cache / "logits" / "c" / "0" / "3" / "0"
    chunk.write_bytes(chunk.read_bytes()[:100])
    with pytest.raises(CacheCorruptError, match="logits/c/0/3/0 fails its crc32c"):
        pack_cache(str(cache), tmp_path / "damaged.zip")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["damaged"]


def delete_logits_chunk(cache: Path) -> None:
    (cache / "logits" / "c" / "0" / "2" / "0").unlink()


def logits_chunk_from_another_view(cache: Path) -> None:
    chunk = cache / "logits" / "c" / "{}" / "2" / "0"
    shutil.copyfile(str(chunk).format(1), str(chunk).format(0))  # valid crc32c, wrong place


def delete_input_hash_chunk(cache: Path) -> None:
    (cache / "input_hash" / "c" / "1" / "4").unlink()


def delete_digest_record(cache: Path) -> None:
    (cache / "block_digest" / "c" / "0" / "5" / "0" / "0").unlink()


DAMAGES = [
    delete_logits_chunk,
    logits_chunk_from_another_view,
    delete_input_hash_chunk,
    delete_digest_record,
]


@pytest.mark.parametrize("damage", DAMAGES)
def test_pack_refuses_what_verify_fails_and_leaves_nothing(digits_cache, tmp_path, damage):
    """Issue 25 item 18: every chunk passes its crc32c here, but a block is missing or in the
    wrong place; `verify` fails the cache, so `pack` must not certify it."""
    cache = tmp_path / "damaged"
    shutil.copytree(digits_cache, cache)
    damage(cache)
    code, output = run_cli(["verify", str(cache), "--replay", "0"])
    assert code == 1 and "[FAIL] chunks" in output, output
    code, output = run_cli(["pack", str(cache), str(tmp_path / "damaged.zip")])
    assert code == 1 and "refusing to pack" in output and "1 bad blocks" in output, output
    assert "complete" not in output.split("refusing")[0] and "bug in kdcache" not in output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["damaged"]  # no zip, no temporary


def test_pack_refuses_a_prefix_with_a_deleted_object(digits_cache, prefix, tmp_path):
    upload(digits_cache, prefix)
    s3fs_client().rm_file(f"{prefix.removeprefix('s3://')}/logits/c/1/3/0")
    code, output = run_cli(["pack", prefix, str(tmp_path / "remote.zip")])
    assert code == 1 and "refusing to pack" in output and "view 1 block 3" in output, output
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".zip")]  # no temporary


@pytest.mark.parametrize(
    ("out", "message"),
    [("digits.tar", "must name a .zip"), ("s3://bucket/x.zip", "pack writes a local file")],
)
def test_pack_explains_a_bad_target(digits_cache, tmp_path, out, message):
    target = out if "://" in out else str(tmp_path / out)
    with pytest.raises(ConfigError, match=message):
        pack_cache(str(digits_cache), target)


def test_ls_lists_every_cache_under_a_prefix(digits_cache, prefix, tmp_path):
    upload(digits_cache, f"{prefix}/team-a/digits")
    partial = tmp_path / "partial"
    shutil.copytree(digits_cache, partial)
    make_incomplete(partial)
    upload(partial, f"{prefix}/team-b/nested/partial")
    s3fs_client().pipe_file(f"{prefix.removeprefix('s3://')}/README.md", b"not a cache")
    code, output = run_cli(["ls", prefix])
    assert code == 0, output
    lines = output.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{prefix}/team-a/digits ")
    assert lines[1].startswith(f"{prefix}/team-b/nested/partial ")
    for line in lines:
        assert "resnet8" in line and "digits/train" in line and "2 views" in line
        assert "dense float16" in line and "KiB" in line
    assert lines[0].endswith("complete") and lines[1].endswith("INCOMPLETE (11/12 blocks)")


def test_ls_sees_directories_and_zips_and_reports_sizes(digits_cache, tmp_path):
    shutil.copytree(digits_cache, tmp_path / "dir-cache")
    pack_cache(str(digits_cache), tmp_path / "packed.zip")
    (tmp_path / "unrelated").mkdir()
    entries = list_caches(str(tmp_path))
    assert [e.location for e in entries] == [f"{tmp_path}/dir-cache", f"{tmp_path}/packed.zip"]
    assert [e.kind for e in entries] == ["directory", "zip"]
    assert all(e.complete and e.blocks_done == 12 for e in entries)
    assert entries[0].size == open_cache(str(digits_cache)).stored_bytes()
    assert entries[1].size == (tmp_path / "packed.zip").stat().st_size
    code, output = run_cli(["ls", str(tmp_path), "--json"])
    parsed = json.loads(output)
    assert code == 0 and [d["teacher"]["name"] for d in parsed] == ["resnet8", "resnet8"]


def test_ls_of_a_newer_format_says_so_instead_of_failing(digits_cache, tmp_path):
    cache = tmp_path / "future"
    shutil.copytree(digits_cache, cache)
    doc = json.loads((cache / "zarr.json").read_text())
    doc["attributes"]["kdcache"]["format_version"] = "2.0"
    (cache / "zarr.json").write_text(json.dumps(doc))
    code, output = run_cli(["ls", str(tmp_path)])
    assert code == 0 and "unreadable" in output and "format version 2.0" in output


def test_ls_of_a_missing_bucket_or_directory_is_a_clear_error(s3, tmp_path):
    code, output = run_cli(["ls", "s3://no-such-bucket/x"])
    assert code != 0 and "bucket 'no-such-bucket' does not exist" in output
    code, output = run_cli(["ls", str(tmp_path / "nothing")])
    assert code != 0 and "nothing at" in output and "Traceback" not in output
    assert run_cli(["ls", f"s3://{BUCKET}/empty-prefix"])[0] != 0
