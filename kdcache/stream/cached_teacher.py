"""Teacher logits for each training batch, from the cache, decoded ahead of the step.

A background thread walks the epoch's batches in order, decodes each needed chunk (view, block) once
into a small LRU, gathers the batch's rows and puts ``(rows, hashes [B])`` into a bounded queue:
``rows`` is ``{"logits": [B, C] float32}`` from a dense cache, or the sparse arrays of
:class:`~kdcache.cache.sparse.SparseRows` from a sparse one; the consumer gets the loss's teacher
input of either. The step never waits on decoding unless decoding is slower than training, and
memory is bounded by the LRU (a few windows of chunks) and the queue, whatever N is.
"""

from __future__ import annotations

import queue
import threading
from collections import OrderedDict
from collections.abc import Iterator

import numpy as np
import torch

from kdcache.cache.reader import CacheReader
from kdcache.cache.sparse import SparseRows
from kdcache.losses.sparse import SparseTeacher
from kdcache.stream.plan import EpochPlan
from kdcache.stream.teacher_source import Origin, TeacherInput

Rows = dict[str, np.ndarray]  # per-row arrays of one chunk or one batch, leading dimension R / B

_END = object()


class CachedTeacher:
    """Serves cached teacher logits batch by batch; counts chunk decodes (tests, benchmarks).

    A :class:`~kdcache.stream.teacher_source.TeacherSource` (``origin`` ``"cache"``).
    """

    origin: Origin = "cache"

    def __init__(
        self, reader: CacheReader, *, chunk_capacity: int, prefetch_batches: int = 16
    ) -> None:
        self.reader = reader
        self.rows = reader.identity.storage.chunk_rows
        self.chunk_capacity = max(chunk_capacity, 1)
        self.prefetch_batches = prefetch_batches
        # (view, block) in decode order, this epoch: how often the stream decodes each chunk (once
        # per epoch is the design; tests and diagnostics read it).
        self.decoded: list[tuple[int, int]] = []
        storage = reader.identity.storage
        self.chunk_rows: int | None = storage.chunk_rows
        self.versions: dict[str, str] = dict(reader.meta.versions)
        self.temperatures: tuple[float, ...] = storage.temperatures or (1.0,)

    def _load(self, key: tuple[int, int]) -> tuple[Rows, np.ndarray]:
        view, block = key
        self.decoded.append(key)
        if self.reader.identity.storage.mode == "dense":
            logits = self.reader.read_dense(view, block).astype(np.float32)  # [R, C]
            return {"logits": logits}, self.reader.read_input_hashes(view, block)
        sparse = self.reader.read_sparse(view, block)
        hashes = self.reader.read_input_hashes(view, block)
        rows = {
            "values": sparse.values,
            "indices": sparse.indices,
            "lse": sparse.lse,
            "tail_lse": sparse.tail_lse,
            "label_logit": sparse.label_logit,
        }
        return {k: v for k, v in rows.items() if v is not None}, hashes

    def _teacher_input(self, rows: Rows) -> torch.Tensor | SparseTeacher:
        if "logits" in rows:
            return torch.from_numpy(rows["logits"])  # [B, C]
        sparse = SparseRows(
            values=rows["values"],
            indices=rows["indices"],
            temperatures=self.temperatures,
            lse=rows["lse"],
            tail_lse=rows.get("tail_lse"),
            label_logit=rows.get("label_logit"),
        )
        return SparseTeacher.from_rows(sparse, self.reader.identity.dataset.num_classes)

    def _produce(
        self, items: np.ndarray, bounds: np.ndarray, out: queue.Queue, stop: threading.Event
    ) -> None:
        chunks: OrderedDict[tuple[int, int], tuple[Rows, np.ndarray]] = OrderedDict()
        try:
            for start, stop_row in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
                batch = items[start:stop_row]  # [B, 2] (view, index)
                blocks, rows = np.divmod(batch[:, 1], self.rows)
                gathered: Rows = {}
                hashes = np.empty(len(batch), np.int64)
                for key in sorted(set(zip(batch[:, 0].tolist(), blocks.tolist(), strict=True))):
                    if key in chunks:
                        chunks.move_to_end(key)
                    else:
                        chunks[key] = self._load(key)
                        while len(chunks) > self.chunk_capacity:
                            chunks.popitem(last=False)
                    sel = (batch[:, 0] == key[0]) & (blocks == key[1])
                    chunk_rows, chunk_hashes = chunks[key]
                    for name, array in chunk_rows.items():
                        if name not in gathered:
                            gathered[name] = np.empty((len(batch), *array.shape[1:]), array.dtype)
                        gathered[name][sel] = array[rows[sel]]
                    hashes[sel] = chunk_hashes[rows[sel]]
                while not stop.is_set():
                    try:
                        out.put((gathered, hashes), timeout=0.1)
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
    ) -> Iterator[tuple[torch.Tensor | SparseTeacher, np.ndarray]]:
        """Yield ``(teacher, input_hashes [B])`` for each batch ``items[bounds[k] : bounds[k + 1]]``
        of ``items`` [M, 2] (an :class:`EpochPlan`'s), in order.

        ``teacher`` is the loss's teacher input on the CPU: float32 logits ``[B, C]`` from a dense
        cache, a :class:`SparseTeacher` from a sparse one; both move with ``.to(device)``.
        """
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
                rows, hashes = got
                yield self._teacher_input(rows), hashes
        finally:
            stop.set()
            worker.join(timeout=5)

    def feed(self, plan: EpochPlan, device: torch.device) -> _CachedFeed:
        """The epoch's rows, decoded ahead in a background thread, moved to ``device``."""
        return _CachedFeed(self.batches(plan.items, plan.bounds), device)


class _CachedFeed:
    def __init__(
        self, rows: Iterator[tuple[TeacherInput, np.ndarray]], device: torch.device
    ) -> None:
        self.rows, self.device = rows, device

    def next(
        self, items: np.ndarray, views: torch.Tensor, labels: torch.Tensor
    ) -> tuple[TeacherInput, np.ndarray]:
        cached, hashes = next(self.rows)  # the prefetch thread serves the plan's batches in order
        return cached.to(self.device, non_blocking=True), hashes

    def close(self) -> None:
        self.rows.close()  # type: ignore[attr-defined]  # stops the prefetch thread
