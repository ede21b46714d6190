"""Teacher logits for each training batch, from the cache, decoded ahead of the step.

A background thread walks the epoch's batches in order, decodes each needed chunk (view, block) once
into a small LRU, gathers the batch's rows and puts ``(logits [B, C] float32, hashes [B])`` into a
bounded queue. The step never waits on decoding unless decoding is slower than training, and memory
is bounded by the LRU (a few windows of chunks) and the queue, whatever N is.
"""

from __future__ import annotations

import queue
import threading
from collections import OrderedDict
from collections.abc import Iterator

import numpy as np

from kdcache.cache.store import CacheReader

_END = object()


class CachedTeacher:
    """Serves cached teacher logits batch by batch; counts chunk decodes (tests, benchmarks)."""

    def __init__(
        self, reader: CacheReader, *, chunk_capacity: int, prefetch_batches: int = 16
    ) -> None:
        self.reader = reader
        self.rows = reader.identity.storage.chunk_rows
        self.chunk_capacity = max(chunk_capacity, 1)
        self.prefetch_batches = prefetch_batches
        self.decoded: list[tuple[int, int]] = []  # (view, block) in decode order, this epoch

    def _load(self, key: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        view, block = key
        self.decoded.append(key)
        logits = self.reader.read_dense(view, block).astype(np.float32)  # [R, C]
        return logits, self.reader.read_input_hashes(view, block)

    def _produce(
        self, items: np.ndarray, bounds: np.ndarray, out: queue.Queue, stop: threading.Event
    ) -> None:
        chunks: OrderedDict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = OrderedDict()
        try:
            for start, stop_row in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
                batch = items[start:stop_row]  # [B, 2] (view, index)
                blocks, rows = np.divmod(batch[:, 1], self.rows)
                logits = np.empty(
                    (len(batch), self.reader.identity.dataset.num_classes), np.float32
                )
                hashes = np.empty(len(batch), np.int64)
                for key in sorted(set(zip(batch[:, 0].tolist(), blocks.tolist(), strict=True))):
                    if key in chunks:
                        chunks.move_to_end(key)
                    else:
                        chunks[key] = self._load(key)
                        while len(chunks) > self.chunk_capacity:
                            chunks.popitem(last=False)
                    sel = (batch[:, 0] == key[0]) & (blocks == key[1])
                    chunk_logits, chunk_hashes = chunks[key]
                    logits[sel] = chunk_logits[rows[sel]]
                    hashes[sel] = chunk_hashes[rows[sel]]
                while not stop.is_set():
                    try:
                        out.put((logits, hashes), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            out.put(_END)
        except BaseException as exc:  # surfaced in the training thread
            out.put(exc)

    def batches(
        self, items: np.ndarray, bounds: np.ndarray
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(logits [B, C], input_hashes [B])`` for each batch ``items[bounds[k] :
        bounds[k + 1]]`` of ``items`` [M, 2] (an :class:`EpochPlan`'s), in order."""
        self.decoded = []
        out: queue.Queue = queue.Queue(maxsize=self.prefetch_batches)
        stop = threading.Event()
        worker = threading.Thread(
            target=self._produce,
            args=(items, np.asarray(bounds), out, stop),
            name="kdcache-logit-prefetch",
            daemon=True,
        )
        worker.start()
        try:
            while True:
                got = out.get()
                if got is _END:
                    return
                if isinstance(got, BaseException):
                    raise got
                yield got
        finally:
            stop.set()
            worker.join(timeout=5)
