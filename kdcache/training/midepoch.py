"""Checkpoints inside an epoch (``--checkpoint-every N`` steps), and resuming from one.

An epoch's batches are a pure function of (seed, epoch, rank) (:mod:`kdcache.training.plan`), so a
run stopped after ``k`` steps of an epoch resumes by skipping the plan's first ``k`` batches: the
remaining batches are the very ones the uninterrupted run would have trained on. The checkpoint
also carries the epoch's running tally (loss sums, samples, every served step's loss and lr), so
the resumed epoch's metrics.jsonl, steps.jsonl and summary.csv lines equal the uninterrupted
run's; the weights, optimiser and EMA come from the checkpoint as at an epoch's end.

Under DDP the tally saved is rank 0's; each rank restores it, so the resumed epoch's step losses
(rank 0's, as always) are exact while its mean loss counts rank 0's served steps for every rank.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from kdcache.training.optim import Optimization
from kdcache.training.plan import EpochPlan
from kdcache.training.stream import EpochBatches


@dataclass
class EpochTally:
    """An epoch's running sums: what :class:`kdcache.training.loop.EpochStats` is made of."""

    sums: dict[str, float] = field(default_factory=dict)  # sample-weighted sums of each term
    seen: int = 0
    step_losses: list[float] = field(default_factory=list)
    step_lrs: list[float] = field(default_factory=list)

    @property
    def served(self) -> int:
        """Steps already trained this epoch."""
        return len(self.step_losses)

    def add(self, n: int, loss: float, parts: dict[str, float], lr: float) -> None:
        for key, value in {"loss": loss, **parts}.items():
            self.sums[key] = self.sums.get(key, 0.0) + value * n
        self.seen += n
        self.step_losses.append(loss)
        self.step_lrs.append(lr)

    def means(self) -> dict[str, float]:
        return {key: value / max(self.seen, 1) for key, value in self.sums.items()}

    def to_dict(self) -> dict[str, Any]:
        return {"sums": dict(self.sums), "seen": self.seen, "step_losses": list(self.step_losses),
                "step_lrs": list(self.step_lrs)}  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EpochTally:
        return cls(dict(d["sums"]), int(d["seen"]), list(d["step_losses"]), list(d["step_lrs"]))


def skip_served(batches: EpochBatches, served: int) -> EpochBatches:
    """The epoch's batches after its first ``served`` ones (nothing of those is read)."""
    if served == 0:
        return batches
    plan = batches.plan
    start = int(plan.bounds[served])
    rest = EpochPlan(plan.items[start:], plan.bounds[served:] - start, plan.batch_size)
    return EpochBatches(batches.source, rest, workers=batches.workers, device=batches.device,
                        verify_replay=batches.verify_replay,
                        channels_last=batches.memory_format == torch.channels_last)  # fmt: skip


class StepCheckpoints:
    """The loop's step hooks: the optimisation's (lr, EMA), then every ``every`` steps a call of
    ``save(epoch, served, tally)`` (not after an epoch's last step: the epoch's end saves)."""

    def __init__(
        self,
        optim: Optimization,
        every: int,
        save: Callable[[int, int, EpochTally], None] | None,
    ) -> None:
        self.optim, self.every, self.save = optim, every, save
        self.tally = EpochTally()

    def begin(self, tally: EpochTally) -> EpochTally:
        """The tally the coming epoch accumulates into (a resumed epoch's, or a new one)."""
        self.tally = tally
        return tally

    def before_step(self, epoch: int, step: int, steps: int) -> None:
        self.optim.before_step(epoch, step, steps)

    def after_step(self, epoch: int, step: int, steps: int) -> None:
        self.optim.after_step(epoch, step, steps)
        served = step + 1
        if self.save is not None and self.every and served % self.every == 0 and served < steps:
            self.save(epoch, served, self.tally)
