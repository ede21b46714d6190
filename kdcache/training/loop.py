"""``run_train``: a flat loop (``train_one_epoch``, ``evaluate``) in the timm ``train.py`` style.

The batches come from :mod:`kdcache.stream`, the very stream ``kdcache.open_cache(...).loader(...)``
gives to your own loop; each step is :class:`kdcache.training.step.TrainStep` (no host sync; the
host reads the steps' records at the log interval). ``run_train`` is: set up
(:mod:`kdcache.training.run_setup`), then per epoch the batches (:func:`_epoch_batches`), the
steps (:func:`train_one_epoch`) and the epoch's record (:func:`_end_epoch`: evaluation, metrics,
checkpoints, curves).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sized
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from kdcache.losses.objective import Objective
from kdcache.runtime import DistContext
from kdcache.stream.batch import Batch
from kdcache.stream.epoch import EpochBatches, epoch_batches
from kdcache.training import finite, outputs, run_state, tracking
from kdcache.training.config import TrainConfig
from kdcache.training.evaluation import evaluate_batches
from kdcache.training.optim import Optimization
from kdcache.training.progress import TrainReporter, as_reporter
from kdcache.training.run_setup import (
    Run,
    check_loss_vs_source,
    distributed,
    open_run,
    prepare,
    restore_rng,
    rng_state,
    share_stream,
)
from kdcache.training.step import StepGuard, TrainStep
from kdcache.training.tally import EpochTally

log = logging.getLogger(__name__)
# A reporter (bars, logs: kdcache.training.progress) or a plain progress(images) callable.
ProgressFn = Callable[[int], None] | TrainReporter
# Steps between the host's reads of the steps' records on an accelerator (on the CPU: every step,
# which costs nothing there).
SYNC_EVERY = 50


@dataclass(frozen=True)
class TrainResult:
    out: Path
    epochs: int  # epochs the schedule has
    best_top1: float | None  # None: no epoch was evaluated (--eval-every 0)
    final_top1: float | None  # of the last evaluated epoch
    final_top5: float | None
    cache_fingerprint: str | None
    step_losses: list[float]  # every optimiser step's total loss, this process (= steps.jsonl)
    # False when --time-limit stopped the run before its last epoch (resume to go on)
    finished: bool = True
    epochs_done: int = 0


@dataclass(frozen=True)
class EpochStats:
    means: dict[str, float]  # sample-weighted means: "loss" (total), "ce", each loss term ...
    samples: int
    step_losses: list[float]  # every step's total loss, in order (this process)
    step_lrs: list[float] = field(default_factory=list)  # every step's lr, in order


def _teacher_info(batches: Iterable[Batch]) -> tuple[str | None, int | None]:
    """(origin, chunk rows) of the stream's teacher, to name a bad row's source."""
    if isinstance(batches, EpochBatches) and batches.source.teacher is not None:
        return batches.source.teacher.origin, batches.source.teacher.chunk_rows
    return None, None


def train_one_epoch(
    model: nn.Module,
    objective: Objective,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[Batch],
    *,
    epoch: int,
    amp: bool = True,
    progress: ProgressFn | None = None,
    optim: Optimization | None = None,
    tally: EpochTally | None = None,
    step: TrainStep | None = None,
    checkpoint: Callable[[int, EpochTally], None] | None = None,
    checkpoint_every: int = 0,
    sync_every: int | None = None,
) -> EpochStats:
    """One optimiser step per batch; ``epoch`` is 0-based (the objective's warm-up counts from 1).

    ``optim`` (which needs ``len(batches)``) sets the lr before each update and updates the EMA
    after it; without it the optimiser's lr is left as it is. ``tally``: the epoch's running
    sums, which the steps extend; a resumed epoch's holds its served steps, and ``batches`` are
    the remaining ones (``EpochBatches.skip``). ``step``: the run's (compiled) step; default
    an eager one. ``checkpoint(served, tally)`` is called every ``checkpoint_every`` steps (not
    after the last one: the epoch's end saves). The host reads the steps' losses every
    ``sync_every`` steps (default: every step on the CPU, :data:`SYNC_EVERY` elsewhere), before a
    checkpoint and at the end; a non-finite step stops the epoch there with
    :class:`~kdcache.errors.NonFiniteError`, and no weight takes its update.

    The teacher signal comes with the batches (a cache or a live teacher, the stream's teacher
    source); without one the objective must be cross-entropy.
    """
    model.train()
    reporter = as_reporter(progress)
    tally = tally if tally is not None else EpochTally()
    start = tally.served
    steps = start + len(batches) if isinstance(batches, Sized) else 0
    step_fn = step if step is not None else TrainStep(model, objective, optimizer, amp=amp)
    warmup = objective.warmup_factor(epoch + 1)
    origin, chunk_rows = _teacher_info(batches)
    guard: StepGuard | None = None
    every = sync_every or 1

    def flush() -> None:
        if guard is not None:
            tally.flush(guard, epoch=epoch, origin=origin, chunk_rows=chunk_rows)

    for k, batch in enumerate(batches, start=start):
        if guard is None:
            guard = StepGuard(batch.images.device)
            every = sync_every or (1 if batch.images.device.type == "cpu" else SYNC_EVERY)
        if optim is not None:
            optim.set_lr(epoch, k, steps)
        lr = optimizer.param_groups[0]["lr"]
        record = step_fn(batch, warmup, guard)
        if optim is not None:
            optim.update_ema(epoch, k, steps)
        n = len(batch.labels)
        tally.queue(n, record, lr, batch.view, batch.index)
        served = k + 1
        if served % every == 0:
            flush()
        if checkpoint is not None and checkpoint_every and served % checkpoint_every == 0 \
                and served < steps:  # fmt: skip
            flush()
            checkpoint(served, tally)
        reporter.step(n, tally.step_losses[-1] if tally.step_losses else float("nan"), lr)
    flush()
    finite.check_weights(model, epoch=epoch)
    return EpochStats(tally.means(), tally.seen, list(tally.step_losses), list(tally.step_lrs))


def _save_mid_epoch(run: Run, epoch: int, served: int, tally: EpochTally) -> None:
    """last.pt after ``served`` steps of 0-based ``epoch`` (``epoch`` epochs complete)."""
    state = run_state.checkpoint_state(run.config, run.data, run.model, run.optim, epoch,
                                       run.best)  # fmt: skip
    outputs.save_checkpoint(run.out / "last.pt", state | {"step": served, "tally": tally.to_dict()})


# ---------------------------------------------------------------------------- per epoch


def _epoch_batches(run: Run, epoch: int) -> EpochBatches:
    """This rank's share of the epoch: the public loader's stream, global batch split over ranks."""
    config = run.config
    return epoch_batches(
        run.source,
        seed=config.seed,
        epoch=epoch,
        batch_size=run.schedule.batch_size // run.ctx.world_size,
        rank=run.ctx.rank,
        world=run.ctx.world_size,
        window_blocks=config.window_blocks,
        verify_replay=config.verify_replay,
        channels_last=config.channels_last,
    )


def _evaluation_due(eval_every: int, epoch: int, epochs: int) -> bool:
    """Every ``eval_every``-th epoch and the last one; never with 0."""
    return eval_every > 0 and ((epoch + 1) % eval_every == 0 or epoch + 1 == epochs)


def _evaluate(run: Run) -> dict[str, float]:
    """The student's (and its EMA's) test loss, top-1 and top-5: the record's ``test_*`` fields."""
    models = {"": run.model}
    if run.optim.ema is not None:
        models["_ema"] = run.optim.ema.module
    fields: dict[str, float] = {}
    for suffix, model in models.items():
        m = evaluate_batches(model, run.eval_batches)
        fields |= {f"test_loss{suffix}": m.loss, f"test_top1{suffix}": m.top1,
                   f"test_top5{suffix}": m.top5}  # fmt: skip
    return fields


def _end_epoch(
    run: Run, epoch: int, stats: EpochStats, lr: float, seconds: float, reporter: TrainReporter
) -> None:
    """Main process: evaluation (when due), metrics.jsonl, steps.jsonl, summary.csv,
    TensorBoard, checkpoints, curves."""
    config, out = run.config, run.out
    evaluated = _evaluation_due(config.eval_every, epoch, run.schedule.epochs)
    tests: dict[str, float | None] = dict.fromkeys(["test_loss", "test_top1", "test_top5"])
    if run.optim.ema is not None:
        tests |= dict.fromkeys(["test_loss_ema", "test_top1_ema", "test_top5_ema"])
    if evaluated:
        reporter.evaluating(epoch + 1, len(run.data.eval))
        measured = _evaluate(run)
        tests |= measured
        run.top1, run.top5 = measured["test_top1"], measured["test_top5"]
        run.best = max(run.best, measured["test_top1"])
        run.evaluated = True
    means = stats.means
    record = {
        "epoch": epoch + 1,
        "lr": lr,
        "train_loss": means["loss"],
        "train_ce": means["ce"],
        **tests,
        "epoch_seconds": seconds,
        "images_per_second": stats.samples / seconds,
        **{f"train_{k}": v for k, v in means.items() if k not in ("loss", "ce")},
    }
    outputs.append_metrics(out, record)
    steps = {"epoch": epoch + 1, "loss": stats.step_losses, "lr": stats.step_lrs}
    outputs.append_metrics(out, steps, outputs.STEP_LOSSES)
    tracking.write_summary(out)
    if run.tensorboard is not None:
        run.tensorboard.log_epoch(record, stats.step_losses, stats.step_lrs,
                                  first_update=run.optim.update_index(epoch, 0, 1))  # fmt: skip
    state = run_state.checkpoint_state(config, run.data, run.model, run.optim, epoch + 1,
                                       run.best)  # fmt: skip
    outputs.save_checkpoint(out / "last.pt", state)
    if evaluated and run.top1 is not None and run.top1 >= run.best:
        outputs.save_checkpoint(out / "best.pt", state)
    tracking.plot_curves(out)
    reporter.epoch_finished(record)


def train_epoch(run: Run, epoch: int, reporter: TrainReporter) -> float:
    """Train and record 0-based ``epoch``; returns its seconds."""
    config, ctx = run.config, run.ctx
    if run.rng is not None:  # as if the run had the process to itself
        restore_rng(run)
    tally = run.resumed if epoch == run.start_epoch and run.resumed else EpochTally()
    batches = _epoch_batches(run, epoch).skip(tally.served)
    started = time.perf_counter()
    reporter.epoch_started(epoch + 1, run.schedule.epochs, int(batches.plan.bounds[-1]))
    save = (lambda served, t: _save_mid_epoch(run, epoch, served, t)) if ctx.is_main else None
    stats = train_one_epoch(run.train_model, run.objective, run.optim.optimizer, batches,
                            epoch=epoch, amp=config.amp, progress=reporter, optim=run.optim,
                            tally=tally, step=run.step, checkpoint=save,
                            checkpoint_every=config.checkpoint_every)  # fmt: skip
    seconds = time.perf_counter() - started
    lr = run.optim.optimizer.param_groups[0]["lr"]  # of the epoch's last update
    run.step_losses += stats.step_losses
    stats = _reduce_stats(stats, ctx)
    if ctx.is_main:
        _end_epoch(run, epoch, stats, lr, seconds, reporter)
    ctx.barrier()
    run.epochs_done = epoch + 1
    run.rng = rng_state(run.device)
    return seconds


def out_of_time(config: TrainConfig, started: float, last_epoch: float | None) -> bool:
    """Whether another epoch (as long as the last one) would end past ``--time-limit``."""
    if config.time_limit is None or last_epoch is None:
        return False
    return time.perf_counter() - started + last_epoch > config.time_limit


def train_result(run: Run, finished: bool) -> TrainResult:
    return TrainResult(run.out, run.schedule.epochs, run.best if run.evaluated else None,
                       run.top1, run.top5, run.data.cache_fingerprint, run.step_losses,
                       finished, run.epochs_done)  # fmt: skip


def run_train(config: TrainConfig, progress: ProgressFn | None = None) -> TrainResult:
    """Train a student; writes checkpoints, metrics.jsonl, steps.jsonl, run.json and
    curves.png under ``out``. With ``config.time_limit`` it may stop early (``finished`` False;
    ``--resume`` goes on)."""
    check_loss_vs_source(config)
    reporter = as_reporter(progress)
    started = time.perf_counter()
    with distributed(config) as (ctx, device):
        run = prepare(config, ctx, device, share_stream(config, device))
        open_run(run, reporter)
        last: float | None = None
        finished = True
        for epoch in range(run.start_epoch, run.schedule.epochs):
            if out_of_time(config, started, last):
                finished = False
                log.warning("--time-limit %gs: stopped after epoch %d of %d (resume to go on)",
                            config.time_limit, epoch, run.schedule.epochs)  # fmt: skip
                break
            last = train_epoch(run, epoch, reporter)
        if run.tensorboard is not None:
            run.tensorboard.close()
        return train_result(run, finished)


def _reduce_stats(stats: EpochStats, ctx: DistContext) -> EpochStats:
    """Sample-weighted means over ranks (the step losses stay this process's)."""
    if not ctx.enabled:
        return stats
    import torch.distributed as dist

    keys = sorted(stats.means)
    n = stats.samples
    t = torch.tensor([stats.means[k] * n for k in keys] + [n], dtype=torch.float64)
    dist.all_reduce(t)
    total = float(t[-1])
    means = {k: float(v) / total for k, v in zip(keys, t[:-1], strict=True)}
    return EpochStats(means, int(total), stats.step_losses, stats.step_lrs)
