"""An epoch's running sums, kept on the device between the host's reads.

Each step leaves its loss and loss parts on the device (:class:`~kdcache.training.step.StepRecord`);
the tally queues them and the host reads them all with one copy when it needs them
(:meth:`EpochTally.flush`: the log interval, a checkpoint, the epoch's end). Folded on the host in
step order, in float64, exactly as a per-step ``float()`` would have been, so the epoch means,
``steps.jsonl`` and ``TrainResult.step_losses`` are the same numbers as with a sync every step.

A checkpoint inside an epoch (``--checkpoint-every N``) carries the flushed tally, so a resumed
epoch's metrics.jsonl, steps.jsonl and summary.csv lines equal the uninterrupted run's. Under DDP
the tally saved is rank 0's; each rank restores it, so the resumed epoch's step losses (rank 0's, as
always) are exact while its mean loss counts rank 0's served steps for every rank.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from kdcache.training import finite
from kdcache.training.step import BAD_TEACHER, StepGuard, StepRecord


@dataclass
class _Queued:
    step: int  # 0-based step of the epoch
    n: int
    lr: float
    record: StepRecord
    view: np.ndarray  # [B] the batch's rows, to name a bad one
    index: np.ndarray


@dataclass
class EpochTally:
    """An epoch's running sums: what :class:`kdcache.training.loop.EpochStats` is made of."""

    sums: dict[str, float] = field(default_factory=dict)  # sample-weighted sums of each term
    seen: int = 0
    step_losses: list[float] = field(default_factory=list)
    step_lrs: list[float] = field(default_factory=list)
    queued: list[_Queued] = field(default_factory=list)  # steps not read by the host yet

    @property
    def served(self) -> int:
        """Steps already trained this epoch (read or not)."""
        return len(self.step_losses) + len(self.queued)

    def add(self, n: int, loss: float, parts: dict[str, float], lr: float) -> None:
        """Fold one step's host values in."""
        for key, value in {"loss": loss, **parts}.items():
            self.sums[key] = self.sums.get(key, 0.0) + value * n
        self.seen += n
        self.step_losses.append(loss)
        self.step_lrs.append(lr)

    def queue(
        self, n: int, record: StepRecord, lr: float, view: torch.Tensor, index: torch.Tensor
    ) -> None:
        """Keep one step's device record until the next :meth:`flush`."""
        self.queued.append(_Queued(self.served, n, lr, record, view.numpy(), index.numpy()))

    def flush(
        self, guard: StepGuard, *, epoch: int, origin: str | None, chunk_rows: int | None
    ) -> None:
        """Read the queued steps (one device-to-host copy) and fold them in, in order.

        Raises:
            NonFiniteError: one of them was non-finite (the guard's first bad step), named as a
                per-step check would have.
        """
        if not self.queued:
            return
        values = torch.stack([q.record.values for q in self.queued]).cpu().tolist()
        _raise_first_bad(guard, self.queued, values, epoch, origin, chunk_rows)
        for q, row in zip(self.queued, values, strict=True):
            parts = dict(zip(q.record.keys, row[1:], strict=True))
            self.add(q.n, row[0], parts, q.lr)
        self.queued = []

    def means(self) -> dict[str, float]:
        return {key: value / max(self.seen, 1) for key, value in self.sums.items()}

    def to_dict(self) -> dict[str, Any]:
        """The flushed sums (flush before saving)."""
        return {"sums": dict(self.sums), "seen": self.seen, "step_losses": list(self.step_losses),
                "step_lrs": list(self.step_lrs)}  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EpochTally:
        return cls(dict(d["sums"]), int(d["seen"]), list(d["step_losses"]), list(d["step_lrs"]))


def _raise_first_bad(
    guard: StepGuard, queued: list[_Queued], values: list[list[float]], epoch: int,
    origin: str | None, chunk_rows: int | None,
) -> None:  # fmt: skip
    bad = guard.first_bad()
    if bad is None:
        return
    seen, kind, row, bad_rows = bad
    # The guard counts every step it saw; the queued ones are the last of them.
    position = seen - (int(guard.count) - len(queued))
    q, row_values = queued[position], values[position]
    if kind == BAD_TEACHER:
        v, i = int(q.view[row]), int(q.index[row])
        raise finite.non_finite_teacher(origin or "unknown", v, i, bad_rows, epoch=epoch,
                                        step=q.step, chunk_rows=chunk_rows)  # fmt: skip
    loss = row_values[0]
    part = None
    if math.isfinite(loss):
        part = next(k for k, v in zip(q.record.keys, row_values[1:], strict=True)
                    if not math.isfinite(v))  # fmt: skip
    raise finite.non_finite_loss(loss, part, epoch=epoch, step=q.step)
