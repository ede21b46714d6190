"""``run_train``: a flat loop (``train_one_epoch``, ``evaluate``) in the timm ``train.py`` style.

The batches come from :mod:`kdcache.training.stream`, the very stream ``kdcache.open_cache(...)
.loader(...)`` gives to your own loop. ``run_train`` is: set up (:func:`_set_up`), then per epoch
the batches (:func:`_epoch_batches`), the steps (:func:`train_one_epoch`) and the epoch's record
(:func:`_end_epoch`: evaluation, metrics, checkpoints, curves).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sized
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from kdcache.errors import ConfigError
from kdcache.losses.objective import Objective, build_objective, list_objectives, unknown_objective
from kdcache.models import build_model
from kdcache.models.inference import prepare_teacher, teacher_forward, teacher_inference
from kdcache.models.preprocess import Preprocessing, resolve_preprocessing
from kdcache.models.probe import check_teacher_io
from kdcache.runtime import DistContext, init_distributed, rank_device, resolve_device
from kdcache.training import finite, outputs, provenance, run_state, tracking
from kdcache.training.config import Schedule, TrainConfig, resolve_schedule
from kdcache.training.evaluation import evaluate_metrics
from kdcache.training.midepoch import EpochTally, StepCheckpoints, skip_served
from kdcache.training.optim import Optimization, build_optimization
from kdcache.training.progress import TrainReporter, as_reporter, describe_run
from kdcache.training.run_data import RunData, check_student_classes, resolve_run_data
from kdcache.training.sparse_teacher import OnlineTopK, prepare_sparse_teacher, sparsify_online
from kdcache.training.stream import Batch, EpochBatches, EpochSource, chunk_capacity, epoch_batches
from kdcache.training.teacher_stream import CachedTeacher

log = logging.getLogger(__name__)
# A reporter (bars, logs: kdcache.training.progress) or a plain progress(images) callable.
ProgressFn = Callable[[int], None] | TrainReporter


class StepHooks(Protocol):
    """Called around each optimiser update (``kdcache.training.optim.Optimization``: the lr
    schedule before, the student's EMA after); ``step`` of ``steps`` in 0-based ``epoch``."""

    def before_step(self, epoch: int, step: int, steps: int) -> None: ...

    def after_step(self, epoch: int, step: int, steps: int) -> None: ...


@dataclass(frozen=True)
class TrainResult:
    out: Path
    epochs: int
    best_top1: float | None  # None: no epoch was evaluated (--eval-every 0)
    final_top1: float | None  # of the last evaluated epoch
    final_top5: float | None
    cache_fingerprint: str | None
    step_losses: list[float]  # every optimiser step's total loss, this process (= steps.jsonl)


@dataclass(frozen=True)
class EpochStats:
    means: dict[str, float]  # sample-weighted means: "loss" (total), "ce", each loss term ...
    samples: int
    step_losses: list[float]  # every step's total loss, in order (this process)
    step_lrs: list[float] = field(default_factory=list)  # every step's lr, in order


def _amp_context(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    if device.type == "cuda" and enabled:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _online_logits(
    teacher: nn.Module, views: torch.Tensor, teacher_input: Preprocessing
) -> torch.Tensor:
    """float32 [B, C] of the uint8 ``views`` converted the teacher's way: the extract forward, so
    that online logits equal a float32 cache's bits."""
    with teacher_inference(views.device):
        logits = teacher_forward(teacher, teacher_input(views))
    # An inference-mode tensor cannot be saved for backward: a plain copy for the loss.
    return logits.clone()


def train_one_epoch(
    model: nn.Module,
    objective: Objective,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[Batch],
    *,
    epoch: int,
    teacher: nn.Module | None = None,
    teacher_input: Preprocessing | None = None,
    amp: bool = True,
    progress: ProgressFn | None = None,
    hooks: StepHooks | None = None,
    tally: EpochTally | None = None,
    teacher_topk: OnlineTopK | None = None,
) -> EpochStats:
    """One optimiser step per batch; ``epoch`` is 0-based (the objective's warm-up counts from 1).

    ``hooks`` (which need ``len(batches)``) set the lr before each update and update the EMA
    after it; without them the optimiser's lr is left as it is. ``tally``: the epoch's running
    sums, which the steps extend; a resumed epoch's holds its served steps, and ``batches`` are
    the remaining ones (:mod:`kdcache.training.midepoch`).

    Teacher logits come with the batch (a cache) or, when it has none, from ``teacher`` (online
    KD), fed the batch's uint8 views converted by ``teacher_input`` and, with ``teacher_topk``,
    sparsified as a top-K cache stores them; with neither the objective must be cross-entropy.
    """
    model.train()
    reporter = as_reporter(progress)
    tally = tally if tally is not None else EpochTally()
    start = tally.served
    steps = start + len(batches) if isinstance(batches, Sized) else 0
    for step, batch in enumerate(batches, start=start):
        teacher_logits = batch.teacher_logits  # [B, C] or None
        if teacher_logits is None and teacher is not None:
            if batch.views_uint8 is None or teacher_input is None:
                raise ConfigError(
                    "online KD needs the batches' uint8 views and the teacher's preprocessing "
                    "(teacher_input=kdcache.models.preprocess.resolve_preprocessing(...))"
                )
            logits = _online_logits(teacher, batch.views_uint8, teacher_input)
            teacher_logits = sparsify_online(logits, batch.labels, teacher_topk)
        with _amp_context(batch.images.device, amp):
            student_logits = model(batch.images)  # [B, C]
        # Losses in float32 whatever the autocast dtype (DESIGN.md §4).
        loss, parts = objective(
            student_logits.float(), teacher_logits, batch.labels, epoch=epoch + 1, mix=batch.mix
        )
        finite.check_step(loss, teacher_logits, batch.view, batch.index, epoch=epoch, step=step,
                          from_cache=batch.teacher_logits is not None,
                          cached_rows=getattr(batches, "block_rows", None))  # fmt: skip
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if hooks is not None:
            hooks.before_step(epoch, step, steps)
        optimizer.step()
        n, lr = len(batch.labels), optimizer.param_groups[0]["lr"]
        tally.add(n, float(loss.detach()), {k: float(v) for k, v in parts.items()}, lr)
        if hooks is not None:
            hooks.after_step(epoch, step, steps)  # after the tally: a checkpoint here holds it
        reporter.step(n, tally.step_losses[-1], lr)
    finite.check_weights(model, epoch=epoch)
    return EpochStats(tally.means(), tally.seen, list(tally.step_losses), list(tally.step_lrs))


# ---------------------------------------------------------------------------- set-up


@dataclass
class _Run:
    """Everything one training run holds between epochs."""

    config: TrainConfig
    ctx: DistContext
    device: torch.device
    out: Path
    data: RunData
    schedule: Schedule
    source: EpochSource
    model: nn.Module  # the student itself: evaluated and checkpointed
    train_model: nn.Module  # what the steps run: ``model`` under DDP / torch.compile
    teacher: nn.Module | None  # online KD only
    teacher_topk: OnlineTopK | None  # online KD from the teacher's top-K rows (--teacher-topk)
    objective: Objective
    optim: Optimization  # optimiser, lr schedule, student EMA
    start_epoch: int = 0
    best: float = 0.0
    top1: float | None = None
    top5: float | None = None
    tensorboard: tracking.TensorBoardLog | None = None  # --tensorboard
    resumed: EpochTally | None = None  # the served steps of a checkpoint inside an epoch
    hooks: StepCheckpoints = field(init=False)  # lr schedule, EMA, --checkpoint-every
    evaluated: bool = False
    step_losses: list[float] = field(default_factory=list)


def _check_loss_vs_source(config: TrainConfig) -> None:
    if config.loss not in list_objectives():
        raise unknown_objective(config.loss)
    if config.loss != "ce" and not config.uses_teacher:
        raise ConfigError(
            f"loss {config.loss!r} needs a teacher signal: pass --cache, or "
            "--teacher with --teacher-weights; or use --loss ce"
        )


@contextlib.contextmanager
def _distributed(config: TrainConfig) -> Iterator[tuple[DistContext, torch.device]]:
    device = resolve_device(config.device)
    ctx = init_distributed(device)
    try:
        yield ctx, rank_device(device, ctx)
    finally:
        from kdcache.runtime import shutdown_distributed

        shutdown_distributed(ctx)


def _build_student(config: TrainConfig, data: RunData, device: torch.device) -> nn.Module:
    spec = data.train.spec
    torch.manual_seed(config.seed)  # the student's initialisation is part of the run's seed
    model = build_model(config.student, spec.num_classes, in_chans=spec.in_chans)
    data.student_input = resolve_preprocessing(model, spec, config.student_preprocessing)
    check_student_classes(model, data)
    model = model.to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def _build_teacher(config: TrainConfig, data: RunData, device: torch.device) -> nn.Module | None:
    if config.teacher is None:
        return None
    spec = data.train.spec
    teacher = build_model(
        config.teacher,
        spec.num_classes,
        in_chans=spec.in_chans,
        weights=config.teacher_weights,
        ema=config.teacher_ema,
    )
    data.teacher_input = resolve_preprocessing(teacher, spec, config.teacher_preprocessing)
    check_teacher_io(teacher, spec.in_chans, data.teacher_input.input_size, spec.num_classes,
                     "--teacher-preprocessing")  # fmt: skip
    return prepare_teacher(teacher, device)


def _stream_source(config: TrainConfig, data: RunData) -> EpochSource:
    """The stream's source; cached teacher rows wherever the cache has rows a loss can read."""
    teacher = None
    reader = data.reader
    if reader is not None and (
        reader.identity.storage.mode == "dense" or reader.identity.storage.exact_sparse
    ):
        capacity = chunk_capacity(config.window_blocks, data.allowed_views)
        teacher = CachedTeacher(reader, chunk_capacity=capacity)
    elif reader is not None and config.verify_replay != "off":
        # Only --loss ce gets here (run_data refuses a 1.0/1.1 sparse cache for the other losses).
        log.warning("1.0/1.1 sparse cache, loss ce: no rows are read, so no replay checks are made")
    return EpochSource(data.train, data.recipe, data.cache_seed, data.allowed_views,
                       data.block_rows, data.num_samples, teacher, data.student_input)  # fmt: skip


def _set_up(
    config: TrainConfig, ctx: DistContext, device: torch.device, reporter: TrainReporter
) -> _Run:
    """Data, schedule, student, teacher, objective, optimiser; restored state on --resume.

    Every setting is checked (the objective even runs once) before the run folder is touched, so
    a bad setting leaves nothing behind and the corrected command runs in the same folder."""
    out = Path(config.out)
    data = resolve_run_data(config)
    schedule = resolve_schedule(config, data.train.spec.name, data.num_samples)
    if schedule.batch_size % ctx.world_size:
        raise ConfigError(
            f"--batch-size {schedule.batch_size} must divide evenly over {ctx.world_size} ranks"
        )
    objective = build_objective(
        config.loss,
        warmup_epochs=schedule.warmup_epochs if config.loss != "ce" else None,
        ce_weight=config.ce_weight,
        distill_weight=config.distill_weight,
        sparse_approx=config.sparse_approx,
        label_smoothing=config.label_smoothing,
        **config.loss_params,
    ).to(device)
    teacher_topk = prepare_sparse_teacher(config, data, objective)
    model = _build_student(config, data, device)
    teacher = _build_teacher(config, data, device)
    run_state.check_objective(objective, data.train.spec.num_classes, config.uses_teacher)
    if config.tensorboard and ctx.is_main:
        tracking.require_tensorboard()
    if ctx.is_main:  # every setting is checked: only now touch the run folder
        outputs.prepare_run_dir(out, resume=config.resume, force=config.force)
        reporter.run_started(describe_run(config, schedule, objective))
    ctx.barrier()
    optim = build_optimization(model, schedule)
    start_epoch, best, resumed = 0, 0.0, None
    if config.resume:
        provenance.check_resume(out, config, data)
        start_epoch, best, resumed = run_state.restore(out, config, model, optim, schedule)
    train_model: nn.Module = model
    if ctx.enabled:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if config.compile:
        train_model = torch.compile(train_model)  # type: ignore[assignment]
    if ctx.is_main and not config.resume:
        run_state.write_run_json(out, config, schedule, data, ctx)
    tensorboard = None
    if config.tensorboard and ctx.is_main:
        served = resumed.served if resumed else 0
        tensorboard = tracking.TensorBoardLog(out, optim.update_index(start_epoch, served, 0))
    run = _Run(
        config=config,
        ctx=ctx,
        device=device,
        out=out,
        data=data,
        schedule=schedule,
        source=_stream_source(config, data),
        model=model,
        train_model=train_model,
        teacher=teacher,
        teacher_topk=teacher_topk,
        objective=objective,
        optim=optim,
        start_epoch=start_epoch,
        best=best,
        tensorboard=tensorboard,
        resumed=resumed,
    )
    save = (lambda e, k, t: _save_mid_epoch(run, e, k, t)) if ctx.is_main else None
    run.hooks = StepCheckpoints(optim, config.checkpoint_every, save)
    return run


def _save_mid_epoch(run: _Run, epoch: int, served: int, tally: EpochTally) -> None:
    """last.pt after ``served`` steps of 0-based ``epoch`` (``epoch`` epochs complete)."""
    state = run_state.checkpoint_state(run.config, run.data, run.model, run.optim, epoch,
                                       run.best)  # fmt: skip
    outputs.save_checkpoint(run.out / "last.pt", state | {"step": served, "tally": tally.to_dict()})


# ---------------------------------------------------------------------------- per epoch


def _epoch_batches(run: _Run, epoch: int) -> EpochBatches:
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
        workers=config.workers,
        device=run.device,
        verify_replay=config.verify_replay,
        channels_last=config.channels_last,
    )


def _evaluation_due(eval_every: int, epoch: int, epochs: int) -> bool:
    """Every ``eval_every``-th epoch and the last one; never with 0."""
    return eval_every > 0 and ((epoch + 1) % eval_every == 0 or epoch + 1 == epochs)


def _evaluate(run: _Run) -> dict[str, float]:
    """The student's (and its EMA's) test loss, top-1 and top-5: the record's ``test_*`` fields."""
    config = run.config
    models = {"": run.model}
    if run.optim.ema is not None:
        models["_ema"] = run.optim.ema.module
    fields: dict[str, float] = {}
    for suffix, model in models.items():
        m = evaluate_metrics(model, run.data.eval, config.eval_batch_size, config.workers,
                             run.device, config.channels_last, run.data.student_input)  # fmt: skip
        fields |= {f"test_loss{suffix}": m.loss, f"test_top1{suffix}": m.top1,
                   f"test_top5{suffix}": m.top5}  # fmt: skip
    return fields


def _end_epoch(
    run: _Run, epoch: int, stats: EpochStats, lr: float, seconds: float, reporter: TrainReporter
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


def run_train(config: TrainConfig, progress: ProgressFn | None = None) -> TrainResult:
    """Train a student; writes checkpoints, metrics.jsonl, steps.jsonl, run.json and
    curves.png under ``out``."""
    _check_loss_vs_source(config)
    reporter = as_reporter(progress)
    with _distributed(config) as (ctx, device):
        run = _set_up(config, ctx, device, reporter)
        for epoch in range(run.start_epoch, run.schedule.epochs):
            tally = run.hooks.begin(run.resumed if epoch == run.start_epoch and run.resumed
                                    else EpochTally())  # fmt: skip
            batches = skip_served(_epoch_batches(run, epoch), tally.served)
            started = time.perf_counter()
            reporter.epoch_started(epoch + 1, run.schedule.epochs, int(batches.plan.bounds[-1]))
            stats = train_one_epoch(run.train_model, run.objective, run.optim.optimizer, batches,
                                    epoch=epoch, teacher=run.teacher,
                                    teacher_input=run.data.teacher_input, amp=config.amp,
                                    progress=reporter, hooks=run.hooks, tally=tally,
                                    teacher_topk=run.teacher_topk)  # fmt: skip
            seconds = time.perf_counter() - started
            lr = run.optim.optimizer.param_groups[0]["lr"]  # of the epoch's last update
            run.step_losses += stats.step_losses
            stats = _reduce_stats(stats, ctx)
            if ctx.is_main:
                _end_epoch(run, epoch, stats, lr, seconds, reporter)
            ctx.barrier()
        if run.tensorboard is not None:
            run.tensorboard.close()
        return TrainResult(run.out, run.schedule.epochs, run.best if run.evaluated else None,
                           run.top1, run.top5, run.data.cache_fingerprint,
                           run.step_losses)  # fmt: skip


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
