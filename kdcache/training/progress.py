"""What a training run reports while it runs: the reporter protocol the loop calls, and the
one-line description of the resolved schedule.

The loop calls a :class:`TrainReporter` at five points (run start, epoch start, every step, the
evaluation, epoch end) and knows nothing of bars or terminals; the CLI's reporter
(``kdcache.cli.progress``) draws them. A plain ``progress(n)`` callable (the older interface) is
still accepted and receives the images of each step.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from kdcache.losses.objective import Objective
from kdcache.training.config import Schedule, TrainConfig

log = logging.getLogger(__name__)


@runtime_checkable
class TrainReporter(Protocol):
    """Receives a run's progress; every method must be cheap (``step`` runs every batch)."""

    def run_started(self, description: str) -> None: ...

    def epoch_started(self, epoch: int, epochs: int, samples: int) -> None:
        """``epoch`` counts from 1; ``samples``: images this process trains on this epoch."""

    def step(self, samples: int, loss: float, lr: float) -> None: ...

    def evaluating(self, epoch: int, samples: int) -> None: ...

    def epoch_finished(self, record: dict[str, Any]) -> None:
        """``record``: the epoch's metrics.jsonl record (main process only)."""


class LogReporter:
    """The library default: the description and each epoch's summary go to the log."""

    def run_started(self, description: str) -> None:
        log.info("%s", description)

    def epoch_started(self, epoch: int, epochs: int, samples: int) -> None:
        pass

    def step(self, samples: int, loss: float, lr: float) -> None:
        pass

    def evaluating(self, epoch: int, samples: int) -> None:
        log.info("epoch %d: evaluating on %d images", epoch, samples)

    def epoch_finished(self, record: dict[str, Any]) -> None:
        log.info("%s", format_epoch(record))


class _CallbackReporter(LogReporter):
    def __init__(self, progress: Callable[[int], None]) -> None:
        self._progress = progress

    def step(self, samples: int, loss: float, lr: float) -> None:
        self._progress(samples)


def as_reporter(progress: TrainReporter | Callable[[int], None] | None) -> TrainReporter:
    """A reporter for whatever the caller passed (a reporter, a ``progress(n)`` callable, None)."""
    if progress is None:
        return LogReporter()
    if isinstance(progress, TrainReporter):
        return progress
    return _CallbackReporter(progress)


def describe_run(config: TrainConfig, schedule: Schedule, objective: Objective) -> str:
    """One line with everything the run will do, e.g. ``resnet8, loss kd (ce 0.1, distill 0.9):
    240 epochs, batch 64, SGD lr 0.05 momentum 0.9 weight decay 0.0005, lr x0.1 after epochs 150,
    180, 210 (cifar protocol)``; AdamW, cosine, lr warm-up, label smoothing and the student EMA
    appear when chosen."""
    terms = [f"ce {objective.ce_weight:g}"]
    if schedule.label_smoothing:
        terms.append(f"label smoothing {schedule.label_smoothing:g}")
    if objective.requires_teacher:
        terms.append(f"distill {objective.distill_weight:g}")
        if objective.warmup_epochs:
            terms.append(f"warm-up {objective.warmup_epochs:g} epochs")
    terms += [f"{k}={v}" for k, v in sorted(config.loss_params.items())]
    if schedule.opt == "sgd":
        opt = f"SGD lr {schedule.lr:g} momentum {schedule.momentum:g}"
    else:
        opt = f"AdamW lr {schedule.lr:g}"
    if schedule.sched == "cosine":
        sched = f"cosine lr to {schedule.min_lr:g} per step"
    else:
        milestones = ", ".join(str(m) for m in schedule.milestones) or "none"
        sched = f"lr x{schedule.lr_decay:g} after epochs {milestones}"
    if schedule.lr_warmup_epochs:
        warm = schedule.lr_warmup_epochs
        sched += f", lr warm-up {warm:g} epochs from {schedule.lr_warmup_init:g}"
    if schedule.model_ema_decay is not None:
        sched += f", student EMA decay {schedule.model_ema_decay:g}"
    return (
        f"{config.student}, loss {config.loss} ({', '.join(terms)}): {schedule.epochs} epoch"
        f"{'s' if schedule.epochs != 1 else ''}, batch {schedule.batch_size}, {opt} weight decay "
        f"{schedule.weight_decay:g}, {sched} ({schedule.protocol} protocol)"
    )


def format_epoch(record: dict[str, Any], epochs: int | None = None) -> str:
    """``epoch 3/240: loss 1.2345 (ce 0.9876, distill 0.3456) test top-1 45.67% ...``."""
    of = f"/{epochs}" if epochs else ""
    parts = [f"ce {record['train_ce']:.4f}"]
    if "train_distill" in record:
        parts.append(f"distill {record['train_distill']:.4f}")
    if record.get("test_top1") is None:  # --eval-every: this epoch was not evaluated
        test = "not evaluated"
    else:
        test = f"test top-1 {record['test_top1']:.2f}% top-5 {record['test_top5']:.2f}%"
        if record.get("test_top1_ema") is not None:
            test += f" (EMA {record['test_top1_ema']:.2f}% / {record['test_top5_ema']:.2f}%)"
    run = f"{record['run']}: " if record.get("run") else ""  # a student of an array
    return (
        f"{run}epoch {record['epoch']}{of}: loss {record['train_loss']:.4f} ({', '.join(parts)}), "
        f"{test}, lr {record['lr']:g}, {record['epoch_seconds']:.1f} s "
        f"({record['images_per_second']:.0f} img/s)"
    )


class _NamedReporter:
    """Forwards to ``inner`` with the run's name in its description and epoch lines."""

    def __init__(self, inner: TrainReporter, name: str) -> None:
        self.inner, self.name = inner, name

    def run_started(self, description: str) -> None:
        self.inner.run_started(f"{self.name}: {description}")

    def epoch_started(self, epoch: int, epochs: int, samples: int) -> None:
        self.inner.epoch_started(epoch, epochs, samples)

    def step(self, samples: int, loss: float, lr: float) -> None:
        self.inner.step(samples, loss, lr)

    def evaluating(self, epoch: int, samples: int) -> None:
        self.inner.evaluating(epoch, samples)

    def epoch_finished(self, record: dict[str, Any]) -> None:
        self.inner.epoch_finished({**record, "run": self.name})


def named_reporter(inner: TrainReporter, name: str) -> TrainReporter:
    """``inner`` reporting for the array student ``name``."""
    return _NamedReporter(inner, name)
