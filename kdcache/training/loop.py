"""``run_train``: a flat loop (``train_one_epoch``, ``evaluate``) in the timm ``train.py`` style."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from kdcache.data import SeededViews, SourceDataset, normalize
from kdcache.errors import ConfigError, ReplayMismatchError
from kdcache.losses.objective import Objective, build_objective
from kdcache.models import build_model
from kdcache.models.inference import prepare_teacher, teacher_inference
from kdcache.models.inference import teacher_logits as teacher_forward
from kdcache.runtime import DistContext, init_distributed, rank_device, resolve_device
from kdcache.training import finite, outputs, provenance, run_state
from kdcache.training.config import Schedule, TrainConfig, resolve_schedule
from kdcache.training.evaluation import evaluate
from kdcache.training.plan import plan_epoch
from kdcache.training.sources import RunData, check_student_classes, resolve_run_data
from kdcache.training.teacher_stream import CachedTeacher

log = logging.getLogger(__name__)
ProgressFn = Callable[[int], None]
SAMPLE_REPLAY_EVERY = 16  # --verify-replay sample: compare rows whose index % 16 == 0


@dataclass(frozen=True)
class TrainResult:
    out: Path
    epochs: int
    best_top1: float
    final_top1: float
    final_top5: float
    cache_fingerprint: str | None
    step_losses: list[float]  # every optimiser step's total loss, this process (for tests)


def _amp_context(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    if device.type == "cuda" and enabled:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _loader(
    source: SourceDataset,
    data: RunData,
    items: np.ndarray,
    recipe: Any,
    seed: int,
    batch_size: int,
    workers: int,
    device: torch.device,
) -> DataLoader:
    return DataLoader(
        SeededViews(source, recipe, seed, items),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        drop_last=False,
        prefetch_factor=4 if workers > 0 else None,
        persistent_workers=False,
    )


def _check_replay(
    batch: dict[str, torch.Tensor], cached_hashes: np.ndarray, mode: str, data: RunData
) -> None:
    got = batch["input_hash"].numpy()
    rows = np.arange(len(got))
    if mode == "sample":
        rows = rows[(batch["index"].numpy() % SAMPLE_REPLAY_EVERY == 0) | (rows == 0)]
    bad = rows[got[rows] != cached_hashes[rows]]
    if len(bad):
        r = int(bad[0])
        versions = data.reader.meta.versions if data.reader else {}
        raise ReplayMismatchError(
            f"the regenerated image of (view {int(batch['view'][r])}, sample "
            f"{int(batch['index'][r])}) differs from the one the teacher saw ({len(bad)} of "
            f"{len(rows)} checked rows in this batch): the augmentation does not replay on this "
            f"machine. The cache was written with {versions}; install those versions, or "
            "re-extract "
            "the cache here. (--verify-replay off skips this check at your own risk.)"
        )


def train_one_epoch(
    model: nn.Module,
    objective: Objective,
    optimizer: torch.optim.Optimizer,
    data: RunData,
    plan_items: np.ndarray,
    steps: int,
    batch_size: int,
    epoch: int,
    config: TrainConfig,
    schedule: Schedule,
    device: torch.device,
    teacher: nn.Module | None,
    cached: CachedTeacher | None,
    progress: ProgressFn | None,
    step_losses: list[float],
) -> dict[str, float]:
    model.train()
    loader = _loader(
        data.train, data, plan_items, data.recipe, data.aug_seed, batch_size, config.workers, device
    )
    stream = cached.batches(plan_items, batch_size) if cached is not None else None
    sums: dict[str, float] = {}
    seen = 0
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    for step, batch in enumerate(loader):
        if step >= steps:
            break
        images = batch["image"].to(device, non_blocking=True)  # uint8 [B, C, H, W]
        x = normalize(images, data.train.spec).contiguous(memory_format=memory_format)
        target = batch["label"].to(device, non_blocking=True)
        teacher_logits = None
        if stream is not None:
            logits_np, hashes = next(stream)
            if config.verify_replay != "off":
                _check_replay(batch, hashes, config.verify_replay, data)
            teacher_logits = torch.from_numpy(logits_np).to(device, non_blocking=True)  # [B, C]
        elif teacher is not None:
            # The extract forward, so that online logits equal a float32 cache's bit for bit.
            with teacher_inference(device):
                teacher_logits = teacher_forward(teacher, x)
            # An inference-mode tensor cannot be saved for backward: a plain copy for the loss.
            teacher_logits = teacher_logits.clone()
        with _amp_context(device, config.amp):
            student_logits = model(x)
        # Losses in float32 whatever the autocast dtype (DESIGN.md §4).
        loss, parts = objective(student_logits.float(), teacher_logits, target, epoch=epoch + 1)
        rows = data.block_rows if cached is not None else None
        finite.check_step(loss, teacher_logits, batch, epoch=epoch, step=step, cached_rows=rows)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        n = len(target)
        step_losses.append(float(loss.detach()))
        sums["loss"] = sums.get("loss", 0.0) + float(loss.detach()) * n
        for key, value in parts.items():
            sums[key] = sums.get(key, 0.0) + float(value) * n
        seen += n
        if progress is not None:
            progress(n)
    if stream is not None:
        stream.close()  # type: ignore[attr-defined]
    finite.check_weights(model, epoch=epoch)
    return {key: value / max(seen, 1) for key, value in sums.items()} | {"samples": seen}


def _build_student(config: TrainConfig, data: RunData, device: torch.device) -> nn.Module:
    spec = data.train.spec
    torch.manual_seed(config.seed)  # the student's initialisation is part of the run's seed
    model = build_model(config.student, spec.num_classes, in_chans=spec.in_chans)
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
        config.teacher, spec.num_classes, in_chans=spec.in_chans, weights=config.teacher_weights
    )
    return prepare_teacher(teacher, device)


def _check_loss_vs_source(config: TrainConfig) -> None:
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


def run_train(config: TrainConfig, progress: ProgressFn | None = None) -> TrainResult:
    """Train a student; writes checkpoints, metrics.jsonl, steps.jsonl, run.json and
    curves.png under ``out``."""
    _check_loss_vs_source(config)
    out = Path(config.out)
    with _distributed(config) as (ctx, device):
        if ctx.is_main:
            outputs.prepare_run_dir(out, resume=config.resume, force=config.force)
        ctx.barrier()
        data = resolve_run_data(config)
        schedule = resolve_schedule(config, data.train.spec.name)
        if schedule.batch_size % ctx.world_size:
            raise ConfigError(
                f"--batch-size {schedule.batch_size} must divide evenly over {ctx.world_size} ranks"
            )
        per_rank_batch = schedule.batch_size // ctx.world_size
        objective = build_objective(
            config.loss,
            warmup_epochs=schedule.warmup_epochs if config.loss != "ce" else None,
            ce_weight=config.ce_weight,
            distill_weight=config.distill_weight,
            **config.loss_params,
        ).to(device)
        model = _build_student(config, data, device)
        teacher = _build_teacher(config, data, device)
        optimizer = torch.optim.SGD(
            model.parameters(),
            lr=schedule.lr,
            momentum=config.momentum,
            weight_decay=schedule.weight_decay,
        )
        scheduler = torch.optim.lr_scheduler.MultiStepLR(
            optimizer, milestones=list(schedule.milestones), gamma=schedule.lr_decay
        )
        start_epoch, best = 0, 0.0
        if config.resume:
            provenance.check_resume(out, config, data)
            start_epoch, best = run_state.restore(out, config, model, optimizer, scheduler)
        train_model: nn.Module = model
        if ctx.enabled:
            train_model = nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None
            )
        if config.compile:
            train_model = torch.compile(train_model)  # type: ignore[assignment]
        cached = None
        if data.reader is not None:
            cached = CachedTeacher(
                data.reader, chunk_capacity=2 * config.window_blocks * len(data.allowed_views)
            )
        if ctx.is_main and not config.resume:
            run_state.write_run_json(out, config, schedule, data, ctx)
        step_losses: list[float] = []
        top1 = top5 = 0.0
        for epoch in range(start_epoch, schedule.epochs):
            plan = plan_epoch(
                seed=config.seed,
                epoch=epoch,
                num_samples=data.num_samples,
                block_rows=data.block_rows,
                window_blocks=config.window_blocks,
                allowed_views=data.allowed_views,
                batch_size=per_rank_batch,
                rank=ctx.rank,
                world=ctx.world_size,
            )
            started = time.perf_counter()
            steps_before = len(step_losses)
            stats = train_one_epoch(
                train_model,
                objective,
                optimizer,
                data,
                plan.items,
                plan.steps,
                per_rank_batch,
                epoch,
                config,
                schedule,
                device,
                teacher,
                cached,
                progress,
                step_losses,
            )
            seconds = time.perf_counter() - started
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step()
            stats = _reduce_stats(stats, ctx)
            if ctx.is_main:
                top1, top5 = evaluate(
                    model,
                    data.eval,
                    config.eval_batch_size,
                    config.workers,
                    device,
                    config.channels_last,
                )
                best = max(best, top1)
                record = {
                    "epoch": epoch + 1,
                    "lr": lr,
                    "train_loss": stats["loss"],
                    "train_ce": stats["ce"],
                    "test_top1": top1,
                    "test_top5": top5,
                    "epoch_seconds": seconds,
                    "images_per_second": stats["samples"] / seconds,
                    **{
                        f"train_{k}": v
                        for k, v in stats.items()
                        if k not in ("loss", "ce", "samples")
                    },
                }
                outputs.append_metrics(out, record)
                epoch_losses = step_losses[steps_before:]
                outputs.append_metrics(
                    out, {"epoch": epoch + 1, "loss": epoch_losses}, outputs.STEP_LOSSES
                )
                state = run_state.checkpoint_state(
                    config, data, model, optimizer, scheduler, epoch + 1, best
                )
                outputs.save_checkpoint(out / "last.pt", state)
                if top1 >= best:
                    outputs.save_checkpoint(out / "best.pt", state)
                outputs.plot_curves(out)
                log.info("epoch %d: loss %.4f top-1 %.2f%%", epoch + 1, stats["loss"], top1)
            ctx.barrier()
        return TrainResult(
            out, schedule.epochs, best, top1, top5, data.cache_fingerprint, step_losses
        )


def _reduce_stats(stats: dict[str, float], ctx: DistContext) -> dict[str, float]:
    """Sample-weighted means over ranks."""
    if not ctx.enabled:
        return stats
    import torch.distributed as dist

    keys = sorted(k for k in stats if k != "samples")
    n = stats["samples"]
    t = torch.tensor([stats[k] * n for k in keys] + [n], dtype=torch.float64)
    dist.all_reduce(t)
    total = float(t[-1])
    return {k: float(v) / total for k, v in zip(keys, t[:-1], strict=True)} | {"samples": total}
