"""The background block writer: same blocks and errors as the serial loop, bounded memory."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from kdcache.cache import schema
from kdcache.cache.reader import open_cache
from kdcache.cli import main
from kdcache.extract_writer import QUEUE_DEPTH, BackgroundBlockWriter, BlockAssembler, topk_hits
from tests.conftest import cache_chunk_bytes


class FakeWriter:
    """Records the blocks written; fails on block ``fail_at``; waits for ``gate`` if given."""

    def __init__(self, rows: int, fail_at: int | None = None, gate: threading.Event | None = None):
        self.meta = schema.CacheMeta(
            identity=schema.CacheIdentity(
                teacher=schema.TeacherInfo("t", None, 0),
                dataset=schema.DatasetInfo("d", "train", rows, 3, "f", {}),
                augmentation=schema.AugmentationInfo("none", {}, 0, 1),
                storage=schema.StorageInfo("dense", "float32", 4, None),
            )
        )
        self.blocks: list[tuple[int, int, np.ndarray]] = []
        self.fail_at, self.gate = fail_at, gate
        self.entered = threading.Event()

    def write_block(self, view, block, logits, hashes, top1, top5, labels=None, mix=None):  # type: ignore[no-untyped-def]
        self.entered.set()
        if self.gate is not None:
            self.gate.wait()
        if block == self.fail_at:
            raise OSError(f"disk full while writing block {block}")
        self.blocks.append((view, block, logits.copy()))


def batch(start: int, n: int) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    rows = np.arange(start, start + n)
    logits = torch.from_numpy(np.stack([rows, -rows, rows * 0], axis=1).astype(np.float32))
    return logits, rows.astype(np.int64), np.zeros(n, np.int64)


def test_topk_hits_ranks_ties_as_a_stable_sort_would() -> None:
    rng = np.random.default_rng(0)
    for classes in (1, 3, 5, 17, 1000):
        logits = rng.integers(-3, 4, (512, classes)).astype(np.float32)  # many ties
        labels = rng.integers(0, classes, 512)
        top = np.argsort(-logits, axis=1, kind="stable")[:, : min(5, classes)]
        expected = (int((top[:, 0] == labels).sum()), int((top == labels[:, None]).any(1).sum()))
        assert topk_hits(logits, labels) == expected


def test_blocks_are_written_in_order_whatever_the_batch_boundaries() -> None:
    writer = FakeWriter(rows=10)  # blocks of 4, 4 and 2 rows
    assembler = BlockAssembler(writer, [(0, 0), (0, 1), (0, 2)])  # type: ignore[arg-type]
    with BackgroundBlockWriter(assembler) as background:
        for start, n in [(0, 3), (3, 3), (6, 1), (7, 3)]:
            background.put(*batch(start, n))
    assert [b for _, b, _ in writer.blocks] == [0, 1, 2] and assembler.current is None
    assert np.array_equal(np.concatenate([x for *_, x in writer.blocks]), batch(0, 10)[0].numpy())


def test_a_writer_error_is_raised_in_the_callers_thread_and_stops_the_writer() -> None:
    writer = FakeWriter(rows=40, fail_at=1)
    assembler = BlockAssembler(writer, [(0, b) for b in range(10)])  # type: ignore[arg-type]
    with pytest.raises(OSError, match="disk full while writing block 1"):
        with BackgroundBlockWriter(assembler) as background:
            for start in range(0, 40, 4):
                background.put(*batch(start, 4))
    assert [b for _, b, _ in writer.blocks] == [0]  # nothing after the failed block


def test_a_callers_error_still_writes_the_batches_already_handed_over() -> None:
    writer = FakeWriter(rows=12)
    assembler = BlockAssembler(writer, [(0, 0), (0, 1), (0, 2)])  # type: ignore[arg-type]
    with pytest.raises(KeyboardInterrupt):
        with BackgroundBlockWriter(assembler) as background:
            background.put(*batch(0, 4))
            background.put(*batch(4, 2))
            raise KeyboardInterrupt
    assert [b for _, b, _ in writer.blocks] == [0]  # the half-filled block 1 is not written


def test_put_waits_while_the_queue_is_full_so_memory_stays_bounded() -> None:
    gate = threading.Event()
    writer = FakeWriter(rows=4 * (QUEUE_DEPTH + 2), gate=gate)
    assembler = BlockAssembler(writer, [(0, b) for b in range(QUEUE_DEPTH + 2)])  # type: ignore[arg-type]
    with BackgroundBlockWriter(assembler) as background:
        background.put(*batch(0, 4))
        assert writer.entered.wait(10)  # the writer holds batch 0, stuck in write_block
        for k in range(1, QUEUE_DEPTH + 1):
            background.put(*batch(4 * k, 4))  # these fill the queue
        producer = threading.Thread(target=background.put, args=batch(4 * (QUEUE_DEPTH + 1), 4))
        producer.start()
        producer.join(0.5)
        assert producer.is_alive(), "put returned although the queue was full"
        gate.set()
        producer.join(10)
    assert len(writer.blocks) == QUEUE_DEPTH + 2


def test_nan_logits_fail_extract_with_the_writers_message_and_the_cache_resumes(
    tmp_path: Path,
    digits_extract_args: list[str],
    digits_cache: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The error raised in the writer thread reaches the CLI as before: one line, exit 1."""
    # digits_cache is the uninterrupted run of these arguments (its default batch size: the
    # bytes do not depend on it), so the resumed cache must equal it.
    whole, broken = digits_cache, tmp_path / "broken"
    args = [*digits_extract_args, "--workers", "0", "--batch-size", "128"]

    import kdcache.extract

    real = kdcache.extract.teacher_forward
    calls = {"n": 0}

    def nan_on_the_fifth_batch(*a, **k):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        out = real(*a, **k)
        return out * float("nan") if calls["n"] == 5 else out

    monkeypatch.setattr(kdcache.extract, "teacher_forward", nan_on_the_fifth_batch)
    result = CliRunner().invoke(main, [*args, "--out", str(broken)])
    assert result.exit_code == 1
    assert "the teacher produced NaN/Inf logits in view 0, rows 512-767" in result.output
    assert "Traceback" not in result.output
    assert open_cache(str(broken)).done_mask().sum() == 2  # blocks of 256 rows: 2 whole before
    monkeypatch.setattr(kdcache.extract, "teacher_forward", real)
    assert CliRunner().invoke(main, [*args, "--out", str(broken)]).exit_code == 0
    assert cache_chunk_bytes(whole) == cache_chunk_bytes(broken)
