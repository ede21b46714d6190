"""The cache format: metadata round trip, version refusal, integrity, info and verify."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from kdcache.cache import schema
from kdcache.cache.reader import open_cache
from kdcache.cache.writer import create_arrays, open_for_writing
from kdcache.cli import main
from kdcache.errors import CacheCorruptError, CacheError, ConfigError, FormatVersionError


def make_meta(n: int = 10, c: int = 5, views: int = 2, rows: int = 4) -> schema.CacheMeta:
    ident = schema.CacheIdentity(
        teacher=schema.TeacherInfo("resnet8", "ab" * 32, 123),
        dataset=schema.DatasetInfo("digits", "train", n, c, "f" * 64, {"name": "digits"}),
        augmentation=schema.AugmentationInfo("cifar", {"padding": 4}, 3, views),
        storage=schema.StorageInfo("dense", "float32", rows),
    )
    return schema.CacheMeta(identity=ident, versions={"torch": "x"}, created="t")


def write_all(path: Path, meta: schema.CacheMeta) -> np.ndarray:
    n, c = meta.identity.dataset.num_samples, meta.identity.dataset.num_classes
    logits = np.random.default_rng(0).normal(size=(meta.identity.augmentation.num_views, n, c))
    writer = open_for_writing(str(path), meta, np.arange(n) % c, create=True)
    for v in range(meta.identity.augmentation.num_views):
        for b in range(meta.num_blocks):
            r = meta.block_rows(b)
            writer.write_block(
                v, b, logits[v, r].astype(np.float32), np.arange(r.start, r.stop), 1, 2
            )
    writer.finalize()
    return logits


def test_metadata_round_trips_through_plain_json():
    meta = make_meta().with_labels_digest(np.arange(10) % 5)  # format 1.3 records it
    again = schema.CacheMeta.from_dict(json.loads(json.dumps(meta.to_dict())))
    assert again == meta and again.fingerprint == meta.fingerprint


def test_fingerprint_changes_with_any_identity_field():
    base = make_meta()
    other = schema.CacheMeta(
        identity=schema.CacheIdentity(
            teacher=base.identity.teacher,
            dataset=base.identity.dataset,
            augmentation=schema.AugmentationInfo("cifar", {"padding": 4}, 4, 2),
            storage=base.identity.storage,
        )
    )
    assert other.fingerprint != base.fingerprint
    assert base.identity.differences(other.identity) == ["augmentation.seed: 3 != 4"]


def test_blocks_cover_every_row_once():
    meta = make_meta(n=10, rows=4)
    rows = [meta.block_rows(b) for b in range(meta.num_blocks)]
    assert [(r.start, r.stop) for r in rows] == [(0, 4), (4, 8), (8, 10)]


def test_written_blocks_read_back_exactly(tmp_path):
    logits = write_all(tmp_path / "c", make_meta())
    reader = open_cache(str(tmp_path / "c"))
    np.testing.assert_array_equal(reader.read_dense(1, 2), logits[1, 8:10].astype(np.float32))
    assert reader.meta.complete and reader.meta.teacher_top1 == [30.0, 30.0]


def test_unwritten_blocks_are_reported_not_trusted(tmp_path):
    meta = make_meta()
    writer = open_for_writing(str(tmp_path / "c"), meta, np.arange(10) % 5, create=True)
    writer.write_block(0, 0, np.zeros((4, 5), np.float32), np.zeros(4, np.int64), 0, 0)
    reader = open_cache(str(tmp_path / "c"))
    assert reader.done_mask().sum() == 1
    with pytest.raises(CacheCorruptError, match=r"view 1, block 1, rows 4-7.*no digest record"):
        reader.read_dense(1, 1)  # never the fill value of a never-written chunk
    with pytest.raises(CacheError, match=r"incomplete: 5 of 6 blocks"):
        reader.require_complete()


def test_newer_major_format_is_refused_with_the_version_needed(tmp_path):
    write_all(tmp_path / "c", make_meta())
    group = zarr.open_group(str(tmp_path / "c"), mode="r+")
    attrs = dict(group.attrs["kdcache"])
    attrs["format_version"] = "2.0"
    group.attrs["kdcache"] = attrs
    with pytest.raises(FormatVersionError, match=r"format version 2\.0.*reads format 1\.x"):
        open_cache(str(tmp_path / "c"))


def test_a_format_1_0_cache_without_producers_still_reads(tmp_path):
    write_all(tmp_path / "c", make_meta())
    group = zarr.open_group(str(tmp_path / "c"), mode="r+")
    attrs = dict(group.attrs["kdcache"])
    attrs["format_version"] = "1.0"
    del attrs["producers"]
    group.attrs["kdcache"] = attrs
    reader = open_cache(str(tmp_path / "c"))
    assert reader.meta.producers == () and reader.meta.complete


def test_edited_identity_is_detected(tmp_path):
    write_all(tmp_path / "c", make_meta())
    group = zarr.open_group(str(tmp_path / "c"), mode="r+")
    attrs = dict(group.attrs["kdcache"])
    attrs["augmentation"] = {**attrs["augmentation"], "seed": 99}
    group.attrs["kdcache"] = attrs
    with pytest.raises(CacheError, match="metadata was edited"):
        open_cache(str(tmp_path / "c"))


def test_corrupted_chunk_raises_an_error_naming_it(tmp_path):
    write_all(tmp_path / "c", make_meta())
    chunk = tmp_path / "c" / "logits" / "c" / "1" / "2" / "0"
    data = bytearray(chunk.read_bytes())
    data[3] ^= 0x55
    chunk.write_bytes(bytes(data))
    with pytest.raises(CacheCorruptError, match=r"logits chunk \(view 1, block 2\).*checksum"):
        open_cache(str(tmp_path / "c")).read_dense(1, 2)


def test_reading_never_modifies_a_cache(tmp_path):
    write_all(tmp_path / "c", make_meta())
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "c").rglob("*")}
    reader = open_cache(str(tmp_path / "c"))
    reader.read_dense(0, 0)
    reader.done_mask()
    CliRunner().invoke(main, ["info", str(tmp_path / "c")])
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "c").rglob("*")} == before


def test_a_zarr_group_that_is_not_a_cache_is_named_as_such(tmp_path):
    zarr.open_group(str(tmp_path / "g"), mode="w")
    with pytest.raises(CacheError, match="not a kdcache cache"):
        open_cache(str(tmp_path / "g"))


# ------------------------------------------------------------------------ info and verify


# digits_cache: the session's shared read-only cache (tests/conftest.py).


def test_info_shows_what_the_cache_is(digits_cache):
    result = CliRunner().invoke(main, ["info", str(digits_cache)])
    assert result.exit_code == 0
    for text in (
        "digits/train",
        "resnet8",
        "cifar",
        "seed 7",
        "views 2",
        "dense float16",
        "complete",
        "teacher top-1 per view",
    ):
        assert text in result.output
    as_json = json.loads(CliRunner().invoke(main, ["info", str(digits_cache), "--json"]).output)
    assert as_json["blocks"] == {"done": 12, "total": 12, "per_view": 6}
    assert len(as_json["teacher_top1"]) == 2


def test_verify_passes_on_an_intact_cache_and_reruns_the_teacher(
    digits_cache, digits_teacher_weights
):
    result = CliRunner().invoke(
        main, ["verify", str(digits_cache), "--teacher-weights", str(digits_teacher_weights)]
    )
    assert result.exit_code == 0, result.output
    assert "[ok] replay: 64 sampled views regenerate bit-exactly" in result.output
    assert "[ok] teacher" in result.output


def test_verify_fails_on_corruption_and_incompleteness(tmp_path, digits_cache):
    broken = tmp_path / "broken"
    shutil.copytree(digits_cache, broken)
    chunk = broken / "logits" / "c" / "0" / "3" / "0"
    chunk.write_bytes(chunk.read_bytes()[:-9] + b"corrupted")
    (broken / "block_done" / "c" / "1" / "5").unlink()
    result = CliRunner().invoke(main, ["verify", str(broken)])
    assert result.exit_code == 1
    assert "[FAIL] complete" in result.output and "(view 1, block 5)" in result.output
    assert "[FAIL] chunks" in result.output and "view 0, block 3" in result.output


def test_verify_fails_when_views_do_not_replay(digits_cache, monkeypatch):
    import kdcache.views

    # As if another torchvision/Pillow drew other crops: every regenerated view differs.
    seed = kdcache.views.sample_seed
    monkeypatch.setattr(kdcache.views, "sample_seed", lambda s, v, i: seed(s + 1, v, i))
    result = CliRunner().invoke(main, ["verify", str(digits_cache)])
    assert result.exit_code == 1 and "[FAIL] replay" in result.output
    assert "[ok] chunks" in result.output


def test_info_on_a_missing_path_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(main, ["info", str(tmp_path / "nothing")])
    assert result.exit_code == 1 and "no kdcache cache" in result.output


def test_a_format_1_1_sparse_cache_still_reads_and_says_what_it_lacks(tmp_path):
    from kdcache.losses.sparse import SparseTeacher

    meta = make_meta()
    legacy = schema.StorageInfo("sparse", "float16", 4, topk=2)  # 1.1: no temperatures
    meta = schema.CacheMeta(
        identity=schema.CacheIdentity(
            meta.identity.teacher, meta.identity.dataset, meta.identity.augmentation, legacy
        ),
        format_version="1.1",
        created="t",
    )
    assert "temperatures" not in meta.identity.to_dict()["storage"]  # 1.1 fingerprints unchanged
    group = zarr.open_group(str(tmp_path / "c"), mode="w", zarr_format=3)
    # The arrays a 1.1 writer made (the table of arrays knows 1.1's), holding values other than
    # the fills, as a 1.1 writer left them.
    arrays = create_arrays(group, meta, np.zeros(10, np.int64))
    values = {
        schema.TOPK_VALUES: 0.5,
        schema.TOPK_INDICES: 1,
        schema.LOGSUMEXP: 1.5,
        schema.INPUT_HASH: 7,
        schema.BLOCK_DONE: 1,
        schema.BLOCK_TOP1: 1,
        schema.BLOCK_TOP5: 2,
    }
    assert set(arrays) == {*values, schema.LABELS}  # no 1.2 array, no digests
    assert arrays[schema.TOPK_VALUES].dtype == np.float16
    for name, value in values.items():
        arrays[name][...] = value
    group.attrs["kdcache"] = {**meta.to_dict(), "complete": True}
    reader = open_cache(str(tmp_path / "c"))
    rows = reader.read_sparse(0, 0)
    assert rows.temperatures == (1.0,) and not rows.exact and rows.lse.shape == (4, 1)
    with pytest.raises(ConfigError, match="format 1.0/1.1.*Re-extract"):
        SparseTeacher.from_rows(rows, 5)
    out = CliRunner().invoke(main, ["info", str(tmp_path / "c")])
    assert out.exit_code == 0 and "LSE at T = 1 only" in out.output, out.output
