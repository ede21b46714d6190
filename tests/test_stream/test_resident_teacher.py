"""ResidentTeacher: a dense cache's logits on the device give CachedTeacher's batches, each chunk
read once for the whole run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from kdcache.augment import create_recipe
from kdcache.cache.reader import CacheReader, open_cache
from kdcache.data import load_dataset
from kdcache.errors import CacheError, ConfigError
from kdcache.seeding import input_hashes
from kdcache.stream.cached_teacher import CachedTeacher
from kdcache.stream.device_views import DeviceViews
from kdcache.stream.plan import plan_epoch
from kdcache.stream.resident_teacher import ResidentTeacher

CPU = torch.device("cpu")
ROWS = 256  # the digits caches' chunk rows (tests/conftest.py)

# digits_cache (float16) and fp32_cache (float32): the session's shared read-only dense digits
# caches, 2 views of 1438 samples in 6 blocks of 256 rows (tests/conftest.py).


class CountingReader(CacheReader):
    """A reader that counts its chunk reads, whoever makes them."""

    def __init__(self, reader: CacheReader) -> None:
        super().__init__(reader.group, reader.meta, reader.parsed_location, reader._arrays)
        self.dense_reads: list[tuple[int, int]] = []
        self.hash_reads: list[tuple[int, int]] = []

    def read_dense(self, view: int, block: int) -> np.ndarray:
        self.dense_reads.append((view, block))
        return super().read_dense(view, block)

    def read_input_hashes(self, view: int, block: int) -> np.ndarray:
        self.hash_reads.append((view, block))
        return super().read_input_hashes(view, block)


def plan(epoch: int, views: list[int], num_samples: int, batch_size: int):  # type: ignore[no-untyped-def]
    return plan_epoch(seed=3, epoch=epoch, num_samples=num_samples, block_rows=ROWS,
                      window_blocks=2, allowed_views=np.array(views),
                      batch_size=batch_size)  # fmt: skip


@pytest.mark.parametrize("cache_name", ["digits_cache", "fp32_cache"])
@pytest.mark.parametrize(
    ("views", "num_samples", "batch_size"), [([0, 1], 1438, 64), ([1], 1438, 37), ([1, 0], 500, 97)]
)
def test_batches_are_cached_teachers_bit_for_bit(request, cache_name, views, num_samples,
                                                 batch_size):  # fmt: skip
    cache = request.getfixturevalue(cache_name)
    resident = ResidentTeacher(open_cache(str(cache)), np.array(views), num_samples, CPU)
    streaming = CachedTeacher(open_cache(str(cache)), chunk_capacity=8)
    for epoch in (0, 1, 2):
        p = plan(epoch, views, num_samples, batch_size)
        assert len(p.bounds) - 1 > 1 and (np.diff(p.bounds) != batch_size).any()  # a short one
        served = list(resident.batches(p.items, p.bounds))
        expected = list(streaming.batches(p.items, p.bounds))
        assert len(served) == len(expected) == p.steps
        for (logits, hashes), (cached, cached_hashes) in zip(served, expected, strict=True):
            assert logits.dtype == torch.float32 and logits.device == CPU
            assert torch.equal(logits, cached)  # bit for bit: fp16 -> fp32 is exact either way
            assert hashes.dtype == np.int64
            np.testing.assert_array_equal(hashes, cached_hashes)
        unsigned = resident.batch(p.items[: p.bounds[1]].astype(np.uint64))  # any integer dtype
        assert torch.equal(unsigned[0], served[0][0])


def test_each_chunk_is_read_once_for_the_whole_run(digits_cache):
    reader = CountingReader(open_cache(str(digits_cache)))
    resident = ResidentTeacher(reader, np.array([0, 1]), 1438, CPU)
    chunks = [(v, b) for v in (0, 1) for b in range(6)]
    assert resident.reads == chunks
    assert reader.dense_reads == reader.hash_reads == chunks
    for epoch in range(3):
        p = plan(epoch, [0, 1], 1438, 64)
        for _ in resident.batches(p.items, p.bounds):
            pass
    assert reader.dense_reads == reader.hash_reads == chunks  # three epochs later: nothing more


def test_a_sample_subset_reads_only_its_blocks_of_the_allowed_views(digits_cache):
    reader = CountingReader(open_cache(str(digits_cache)))
    resident = ResidentTeacher(reader, np.array([1]), 300, CPU)  # blocks 0 and 1 (rows 0-299)
    assert reader.dense_reads == resident.reads == [(1, 0), (1, 1)]
    logits, _ = resident.batch(np.array([[1, 299]]))
    full = open_cache(str(digits_cache)).read_dense(1, 1)
    assert torch.equal(logits[0], torch.from_numpy(full[299 - ROWS].astype(np.float32)))


def test_logits_stay_in_the_stored_dtype(digits_cache, fp32_cache):
    half = ResidentTeacher(open_cache(str(digits_cache)), np.array([0, 1]), 1438, CPU)
    full = ResidentTeacher(open_cache(str(fp32_cache)), np.array([0, 1]), 1438, CPU)
    assert half.stored_dtype == torch.float16 and full.stored_dtype == torch.float32
    assert half.device_bytes == 2 * 1438 * 10 * 2 == full.device_bytes // 2
    for teacher, cache in ((half, digits_cache), (full, fp32_cache)):
        reader = open_cache(str(cache))
        assert ResidentTeacher.nbytes(reader, np.array([0, 1]), 1438) == teacher.device_bytes


def test_device_views_replay_against_the_resident_hashes(digits_cache):
    """The replay check's two halves: hashes of the device-made views equal the cache's."""
    reader = open_cache(str(digits_cache))
    aug = reader.identity.augmentation
    source = load_dataset("digits", None, "train")
    views = DeviceViews(source, create_recipe(aug.recipe, source.spec, **aug.params), aug.seed,
                        CPU)  # fmt: skip
    resident = ResidentTeacher(reader, np.array([0, 1]), len(source), CPU)
    p = plan(0, [0, 1], len(source), 101)
    for start, stop in zip(p.bounds[:-1], p.bounds[1:], strict=True):
        items = p.items[start:stop]
        _, hashes = resident.batch(items)
        np.testing.assert_array_equal(input_hashes(views.views(items)), hashes)


def test_bad_requests_are_clear_errors(digits_cache, tmp_path):
    reader = open_cache(str(digits_cache))
    for views, n, message in (([2], 10, "subset of the cache's views 0..1"),
                              ([], 10, "non-empty"), ([0, 0], 10, "repeat"),
                              ([0], 1439, r"num_samples must be in \[1, 1438\]"),
                              ([0], 0, "num_samples")):  # fmt: skip
        with pytest.raises(ConfigError, match=message):
            ResidentTeacher(reader, np.array(views, np.int64), n, CPU)
    resident = ResidentTeacher(reader, np.array([1]), 100, CPU)
    with pytest.raises(ConfigError, match=r"view 0 is not among the views held \(\[1\]\)"):
        resident.batch(np.array([[1, 3], [0, 3]]))
    with pytest.raises(ConfigError, match=r"outside \[0, 100\)"):
        resident.batch(np.array([[1, 100]]))


def test_a_sparse_cache_is_refused(tmp_path, digits_extract_args):
    from click.testing import CliRunner

    from kdcache.cli import main

    out: Path = tmp_path / "sparse"
    args = [
        *digits_extract_args,
        "--views",
        "1",
        "--topk",
        "3",
        "--out",
        str(out),
        "--workers",
        "0",
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    reader = open_cache(str(out))
    with pytest.raises(CacheError, match="sparse .* streaming teacher"):
        ResidentTeacher(reader, np.array([0]), 1438, CPU)
    with pytest.raises(CacheError, match="sparse"):
        ResidentTeacher.nbytes(reader, np.array([0]), 1438)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_batches_are_the_cpu_ones(digits_cache):
    cuda = ResidentTeacher(
        open_cache(str(digits_cache)), np.array([0, 1]), 1438, torch.device("cuda")
    )
    cpu = ResidentTeacher(open_cache(str(digits_cache)), np.array([0, 1]), 1438, CPU)
    p = plan(1, [0, 1], 1438, 64)
    for (a, ha), (b, hb) in zip(cuda.batches(p.items, p.bounds), cpu.batches(p.items, p.bounds),
                                strict=True):  # fmt: skip
        assert a.device.type == "cuda" and torch.equal(a.cpu(), b)
        np.testing.assert_array_equal(ha, hb)
