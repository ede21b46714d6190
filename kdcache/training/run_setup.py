"""One run's set-up, before its first step: what the runs over one stream share, and each run.

:func:`share_stream` builds what every run over the same data shares (the data and its fingerprint
check, the device-resident views and logits or the chunk reader, the live teacher, the test set's
stream); :func:`prepare` builds one run over it (schedule, objective, student, optimiser, step),
checking every setting and writing nothing; :func:`open_run` then makes (or reads back) its folder.
``run_train`` does the three for one run, :mod:`kdcache.training.array` for many.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from kdcache.errors import ConfigError
from kdcache.losses.objective import Objective, build_objective, list_objectives, unknown_objective
from kdcache.models import build_model
from kdcache.models.inference import prepare_teacher
from kdcache.models.preprocess import Preprocessing, resolve_preprocessing
from kdcache.models.probe import check_teacher_io
from kdcache.runtime import DistContext, init_distributed, rank_device, resolve_device
from kdcache.stream.epoch import EpochSource
from kdcache.stream.evaluation import EvaluationBatches
from kdcache.stream.live_teacher import LiveTeacher
from kdcache.training import outputs, provenance, run_state, tracking
from kdcache.training.config import Schedule, TrainConfig, resolve_schedule
from kdcache.training.optim import Optimization, build_optimization
from kdcache.training.progress import TrainReporter, describe_run
from kdcache.training.run_data import RunData, check_student_classes, resolve_run_data
from kdcache.training.sources import evaluation_source, stream_source
from kdcache.training.sparse_teacher import prepare_sparse_teacher
from kdcache.training.step import TrainStep
from kdcache.training.tally import EpochTally


@dataclass
class Run:
    """Everything one training run holds between epochs."""

    config: TrainConfig
    ctx: DistContext
    device: torch.device
    out: Path
    data: RunData  # frozen before the first step
    schedule: Schedule
    source: EpochSource
    eval_batches: EvaluationBatches
    model: nn.Module  # the student itself: evaluated and checkpointed
    train_model: nn.Module  # what the steps run: ``model``, or DDP of it
    step: TrainStep
    objective: Objective
    optim: Optimization  # optimiser, lr schedule, student EMA
    start_epoch: int = 0
    best: float = 0.0
    top1: float | None = None
    top5: float | None = None
    tensorboard: tracking.TensorBoardLog | None = None  # --tensorboard
    resumed: EpochTally | None = None  # the served steps of a checkpoint inside an epoch
    evaluated: bool = False
    step_losses: list[float] = field(default_factory=list)
    epochs_done: int = 0
    # The global RNG state the run continues from (an array's students take turns)
    rng: tuple[torch.Tensor, torch.Tensor | None] | None = None


def check_loss_vs_source(config: TrainConfig) -> None:
    if config.loss not in list_objectives():
        raise unknown_objective(config.loss)
    if config.loss != "ce" and not config.uses_teacher:
        raise ConfigError(
            f"loss {config.loss!r} needs a teacher signal: pass --cache, or "
            "--teacher with --teacher-weights; or use --loss ce"
        )


@contextlib.contextmanager
def distributed(config: TrainConfig) -> Iterator[tuple[DistContext, torch.device]]:
    device = resolve_device(config.device)
    ctx = init_distributed(device)
    try:
        yield ctx, rank_device(device, ctx)
    finally:
        from kdcache.runtime import shutdown_distributed

        shutdown_distributed(ctx)


def _build_student(
    config: TrainConfig, data: RunData, device: torch.device
) -> tuple[nn.Module, Preprocessing]:
    spec = data.train.spec
    torch.manual_seed(config.seed)  # the student's initialisation is part of the run's seed
    model = build_model(config.student, spec.num_classes, in_chans=spec.in_chans)
    student_input = resolve_preprocessing(model, spec, config.student_preprocessing)
    check_student_classes(model, replace(data, student_input=student_input))
    model = model.to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, student_input


def _build_teacher(
    config: TrainConfig, data: RunData, device: torch.device
) -> tuple[nn.Module | None, Preprocessing]:
    if config.teacher is None:
        return None, data.teacher_input
    spec = data.train.spec
    teacher = build_model(
        config.teacher,
        spec.num_classes,
        in_chans=spec.in_chans,
        weights=config.teacher_weights,
        ema=config.teacher_ema,
    )
    teacher_input = resolve_preprocessing(teacher, spec, config.teacher_preprocessing)
    check_teacher_io(teacher, spec.in_chans, teacher_input.input_size, spec.num_classes,
                     "`teacher_preprocessing`")  # fmt: skip
    return prepare_teacher(teacher, device), teacher_input


@dataclass(frozen=True)
class SharedStream:
    """What the runs of one stream share (one run, or every student of an array): the data, the
    resident views and logits or the chunk reader, the live teacher, the test set's decode."""

    data: RunData  # the students' own preprocessing is set per run
    source: EpochSource
    eval_batches: EvaluationBatches
    teacher: nn.Module | None  # the live teacher (online KD)


def share_stream(config: TrainConfig, device: torch.device) -> SharedStream:
    """The stream of ``config``'s data, built once (the data's fingerprint is checked here)."""
    data = resolve_run_data(config)
    with torch.random.fork_rng(devices=[]):  # the teacher's init never moves the student's RNG
        teacher, teacher_input = _build_teacher(config, data, device)
    data = replace(data, teacher_input=teacher_input)
    source = stream_source(config, data, device, teacher, None)
    return SharedStream(data, source, evaluation_source(config, data, device), teacher)


def prepare(
    config: TrainConfig, ctx: DistContext, device: torch.device, shared: SharedStream
) -> Run:
    """Schedule, objective, student, optimiser and step of one run over ``shared``: every setting
    is checked (the objective even runs once) and nothing is written."""
    data = shared.data
    schedule = resolve_schedule(config, data.train.spec.name, data.num_samples)
    if schedule.batch_size % ctx.world_size:
        raise ConfigError(
            f"`batch_size` {schedule.batch_size} must divide evenly over {ctx.world_size} ranks"
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
    model, student_input = _build_student(config, data, device)
    data = replace(data, student_input=student_input)  # frozen from here on
    run_state.check_objective(objective, data.train.spec.num_classes, config.uses_teacher)
    if config.tensorboard and ctx.is_main:
        tracking.require_tensorboard()
    teacher = shared.source.teacher
    if shared.teacher is not None:
        teacher = LiveTeacher(shared.teacher, data.teacher_input, teacher_topk)
    source = replace(shared.source, student_input=student_input, teacher=teacher)
    optim = build_optimization(model, schedule)
    train_model: nn.Module = model
    if ctx.enabled:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    step = TrainStep(train_model, objective, optim.optimizer, amp=config.amp,
                     compile=config.compile)  # fmt: skip
    return Run(config=config, ctx=ctx, device=device, out=Path(config.out), data=data,
                schedule=schedule, source=source,
                eval_batches=shared.eval_batches.with_input(student_input), model=model,
                train_model=train_model, step=step, objective=objective, optim=optim,
                rng=rng_state(device))  # fmt: skip


def open_run(run: Run, reporter: TrainReporter) -> None:
    """The run's folder: made (or, with --resume, read back: weights, optimiser, served steps),
    run.json written, TensorBoard opened."""
    config, ctx, out = run.config, run.ctx, run.out
    if ctx.is_main:  # every setting is checked: only now touch the run folder
        outputs.prepare_run_dir(out, resume=config.resume, force=config.force)
        reporter.run_started(describe_run(config, run.schedule, run.objective))
    ctx.barrier()
    if config.resume:
        provenance.check_resume(out, config, run.data)
        restored = run_state.restore(out, config, run.model, run.optim, run.schedule)
        run.start_epoch, run.best, run.resumed = restored
    run.epochs_done = run.start_epoch
    if ctx.is_main and not config.resume:
        run_state.write_run_json(out, config, run.schedule, run.data, ctx)
    if config.tensorboard and ctx.is_main:
        served = run.resumed.served if run.resumed else 0
        first = run.optim.update_index(run.start_epoch, served, 0)
        run.tensorboard = tracking.TensorBoardLog(out, first)


def rng_state(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The global RNG state a run continues from (CPU, and the device's on CUDA)."""
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.random.get_rng_state(), cuda


def restore_rng(run: Run) -> None:
    """Continue the global RNG where ``run`` left it (an array's students take turns)."""
    assert run.rng is not None
    cpu, cuda = run.rng
    torch.random.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state(cuda, run.device)
