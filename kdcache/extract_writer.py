"""Turning a stream of teacher outputs into cache blocks, off the forward's thread.

Extraction's per-batch host work (copying logits to the host, gathering rows into blocks, the
teacher's top-1/top-5 counts, dtype conversion, digests, zstd and the chunk writes) used to run in
series with the teacher forward: on an H200 it held extraction to 0.27 of the bare forward
(``docs/benchmarks.md``, "GPU check"). :class:`BackgroundBlockWriter` moves all of it to one
writer thread fed through a bounded queue, so it overlaps the next batch's forward while memory
stays flat (at most ``depth`` batches waiting, plus the one block being filled).

One thread, in order, so a block's bytes and the order blocks are marked done are exactly those of
the serial loop: a block is written the moment its last row arrives, and the done mark comes last
(:meth:`kdcache.cache.writer.CacheWriter.write_block`), so a kill at any moment leaves a cache that
resumes to the same bytes.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator
from types import TracebackType

import numpy as np
import torch

from kdcache.cache.schema import CacheMeta
from kdcache.cache.writer import CacheWriter

log = logging.getLogger(__name__)

# Batches allowed to wait for the writer. Two lets one batch be written while the next is queued
# behind it; more only adds memory, since the forward cannot outrun the writer for long anyway.
QUEUE_DEPTH = 2
# How often a blocked put looks whether the writer thread has died (seconds).
_POLL_SECONDS = 0.1

Mix = tuple[np.ndarray, np.ndarray]  # a mixed recipe's partners [B] int64 and lambdas [B] float32
# logits [B, C], input hashes [B], labels [B], mix or None
_Batch = tuple[torch.Tensor, np.ndarray, np.ndarray, Mix | None]


def topk_hits(logits: np.ndarray, labels: np.ndarray) -> tuple[int, int]:
    """Rows whose label is the top-1 / within the top-5 of ``logits`` [R, C] (labels [R]).

    Ties rank the lower class index first, exactly as a stable descending sort would: the label's
    rank is the number of classes with a larger logit plus the number of lower-indexed classes
    with an equal one. One comparison pass over [R, C] instead of sorting every row (18x faster
    at 1024 x 1000, where the sort cost as much as compressing and writing the block).
    """
    k = min(5, logits.shape[1])
    rows = np.arange(len(labels))
    own = logits[rows, labels][:, None]  # [R, 1]
    lower = np.arange(logits.shape[1])[None, :] < labels[:, None]  # [R, C]
    rank = (logits > own).sum(axis=1) + ((logits == own) & lower).sum(axis=1)  # [R]
    return int((rank == 0).sum()), int((rank < k).sum())


def pending_blocks(writer: CacheWriter, num_views: int) -> list[tuple[int, int]]:
    """The (view, block) pairs not yet marked written, view after view."""
    done = writer.done_mask()
    blocks = range(writer.meta.num_blocks)
    return [(v, b) for v in range(num_views) for b in blocks if not done[v, b]]


def block_items(meta: CacheMeta, blocks: list[tuple[int, int]]) -> np.ndarray:
    """(view, index) pairs of the given blocks, block after block: int64 [M, 2]."""
    parts = []
    for view, block in blocks:
        rows = meta.block_rows(block)
        idx = np.arange(rows.start, rows.stop, dtype=np.int64)
        parts.append(np.stack([np.full_like(idx, view), idx], axis=1))
    return np.concatenate(parts) if parts else np.zeros((0, 2), dtype=np.int64)


class BlockAssembler:
    """Collects batch outputs in order and writes each block the moment its last row arrives."""

    def __init__(self, writer: CacheWriter, blocks: list[tuple[int, int]]) -> None:
        self.writer = writer
        self.blocks: Iterator[tuple[int, int]] = iter(blocks)
        self.written = 0
        self._start_block()

    def _start_block(self) -> None:
        nxt = next(self.blocks, None)
        self.current = nxt
        self.logits: list[np.ndarray] = []
        self.hashes: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []
        self.mix: list[Mix] = []
        self.filled = 0
        if nxt is not None:
            rows = self.writer.meta.block_rows(nxt[1])
            self.size = rows.stop - rows.start

    def add(
        self, logits: np.ndarray, hashes: np.ndarray, labels: np.ndarray, mix: Mix | None = None
    ) -> None:
        """Append rows (logits [B, C] float32, hashes [B] int64, labels [B] int64; for a mixed
        recipe the partners and lambdas [B])."""
        while len(logits):
            if self.current is None:
                raise RuntimeError("the teacher produced more rows than the pending blocks hold")
            take = min(self.size - self.filled, len(logits))
            self.logits.append(logits[:take])
            self.hashes.append(hashes[:take])
            self.labels.append(labels[:take])
            if mix is not None:
                self.mix.append((mix[0][:take], mix[1][:take]))
                mix = (mix[0][take:], mix[1][take:])
            self.filled += take
            logits, hashes, labels = logits[take:], hashes[take:], labels[take:]
            if self.filled == self.size:
                self._flush()

    def _flush(self) -> None:
        assert self.current is not None
        view, block = self.current
        logits = np.concatenate(self.logits)  # [R, C]
        labels = np.concatenate(self.labels)  # [R]
        top1, top5 = topk_hits(logits, labels)
        mix = None
        if self.mix:  # a mixed recipe: the block's partners and lambdas
            partners, lambdas = zip(*self.mix, strict=True)
            mix = (np.concatenate(partners), np.concatenate(lambdas))
        self.writer.write_block(
            view, block, logits, np.concatenate(self.hashes), top1, top5, labels=labels, mix=mix
        )
        self.written += 1
        self._start_block()


class BackgroundBlockWriter:
    """Feeds a :class:`BlockAssembler` from one background thread; use as a context manager.

    ``put`` hands over one batch's outputs and returns at once unless ``depth`` batches are
    already waiting. An exception in the writer thread (a NaN logit, a full disk, a simulated
    kill) stops it and is re-raised, as the same object, by the next ``put`` or by the exit of
    the ``with`` block, so the caller sees exactly the error the serial loop raised. If the
    caller's own code raises (Ctrl-C, a loader error), leaving the ``with`` block still writes
    the batches already handed over, as the serial loop would have, then re-raises.
    """

    def __init__(self, assembler: BlockAssembler, depth: int = QUEUE_DEPTH) -> None:
        self.assembler = assembler
        self._queue: queue.Queue[_Batch | None] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        # A daemon: were the process to exit with the thread stuck in storage IO, nothing it
        # holds matters (a block is marked done only after its chunks are whole).
        self._thread = threading.Thread(target=self._run, name="kdcache-block-writer", daemon=True)

    def __enter__(self) -> BackgroundBlockWriter:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # The end of the stream: the thread writes what it was handed, then stops.
        while self._thread.is_alive():
            try:
                self._queue.put(None, timeout=_POLL_SECONDS)
                break
            except queue.Full:
                continue
        self._thread.join()
        if self._error is None:
            return
        if exc is None:
            raise self._error
        if self._error is not exc:  # the caller's exception wins; do not lose the writer's
            log.error("the block writer failed too: %r", self._error)

    def put(
        self,
        logits: torch.Tensor,
        hashes: np.ndarray,
        labels: np.ndarray,
        mix: Mix | None = None,
    ) -> None:
        """Queue one batch: logits [B, C] float32 (any device), hashes [B], labels [B], and a
        mixed recipe's partners and lambdas [B]."""
        while True:
            self._raise_if_failed()
            if not self._thread.is_alive():  # its error, if any, was set before it ended
                self._raise_if_failed()
                raise RuntimeError("the block writer thread is not running")
            try:
                self._queue.put((logits, hashes, labels, mix), timeout=_POLL_SECONDS)
                return
            except queue.Full:
                continue

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        try:
            # Device logits are copied to the host here: on CUDA the copy waits for the forward
            # to finish, which the main thread then need not do before launching the next one.
            with torch.inference_mode():
                while (item := self._queue.get()) is not None:
                    logits, hashes, labels, mix = item
                    self.assembler.add(logits.cpu().numpy(), hashes, labels, mix)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread, re-raised
            self._error = exc
