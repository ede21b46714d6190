"""Training throughput through the library's own ``run_train``: a student's images/s by teacher
mode (CE only, from a cache, online), step (eager, compiled) and stream (host, device).

Speeds are read back from the run's ``metrics.jsonl``: the images of the epochs after the first
over their ``epoch_seconds`` (so compilation, cuDNN's first calls and lazy set-up stay out; a run
of one epoch reports that epoch). ``profile_run`` times what one step costs the device itself:
the CUDA kernels' own time on a GPU (the floor that launches and host work add to), the torch
ops' time on the CPU.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from kdcache.runtime import resolve_device
from kdcache.training import outputs
from kdcache.training.config import TrainConfig
from kdcache.training.loop import ProgressFn, run_train

MODES = ("ce", "cached", "online")  # labels alone; KD from the cache; KD from the live teacher


@dataclass(frozen=True)
class Data:
    """Where a student's batches come from, per teacher mode."""

    dataset: str
    data_dir: str | None
    split: str
    student: str
    cache: str | None = None  # mode "cached"
    teacher: str | None = None  # mode "online"
    teacher_weights: str | None = None
    num_views: int = 1  # CE / online draw from as many views as the cache holds
    block_rows: int | None = None  # the cache's chunk rows: the cache's order
    recipe_params: dict[str, Any] = field(default_factory=dict)


def train_config(
    data: Data, mode: str, out: Path, *, batch_size: int, samples: int, epochs: int,
    stream: str = "auto", compiled: bool = False, workers: int = 0, device: str = "auto",
    seed: int = 0, eval_every: int = 0, loss: str = "kd",
) -> TrainConfig:  # fmt: skip
    """The run of ``mode`` (``loss``: the distillation loss of the cached / online modes)."""
    common: dict[str, Any] = dict(
        student=data.student, out=str(out), batch_size=batch_size, max_samples=samples,
        epochs=epochs, eval_every=eval_every, stream=stream, compile=compiled, workers=workers,
        device=device, seed=seed, force=True,
    )  # fmt: skip
    if mode == "cached":
        return TrainConfig(loss=loss, cache=data.cache, data_dir=data.data_dir, **common)
    views: dict[str, Any] = dict(dataset=data.dataset, data_dir=data.data_dir, split=data.split,
                                 num_views=data.num_views, block_rows=data.block_rows,
                                 recipe_params=dict(data.recipe_params))  # fmt: skip
    if mode == "online":
        return TrainConfig(loss=loss, teacher=data.teacher, teacher_weights=data.teacher_weights,
                           **views, **common)  # fmt: skip
    if mode == "ce":
        return TrainConfig(loss="ce", **views, **common)
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


@dataclass(frozen=True)
class Speed:
    images_per_s: float  # the epochs after the first
    first_epoch_s: float  # compilation and warm-up included
    epoch_s: float  # mean of the epochs after the first
    steps_per_epoch: int
    wall_s: float  # the whole run_train call
    step_losses: list[float] = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"images_per_s": self.images_per_s, "first_epoch_s": self.first_epoch_s,
                "epoch_s": self.epoch_s, "steps_per_epoch": self.steps_per_epoch,
                "wall_s": self.wall_s}  # fmt: skip


def read_speed(out: Path, step_losses: list[float], wall_s: float) -> Speed:
    """The speed of the run in ``out`` from its ``metrics.jsonl``."""
    metrics = outputs.read_metrics(out)
    later = metrics[1:] or metrics
    seconds = sum(m["epoch_seconds"] for m in later)
    images = sum(m["images_per_second"] * m["epoch_seconds"] for m in later)
    return Speed(images / seconds, metrics[0]["epoch_seconds"], seconds / len(later),
                 len(step_losses) // len(metrics), wall_s, list(step_losses))  # fmt: skip


def measure(config: TrainConfig, progress: ProgressFn | None = None) -> Speed:
    """Train ``config`` and read its speed back."""
    if config.compile:
        # Compile afresh, as a separate process would (the on-disk caches still serve): an
        # earlier run's compiled code must not count, nor dynamo's recompile limit be reached.
        torch._dynamo.reset()
    started = time.perf_counter()
    result = run_train(config, progress=progress)
    return read_speed(Path(config.out), result.step_losses, time.perf_counter() - started)


def _union_us(spans: list[tuple[float, float]]) -> float:
    """Microseconds covered by the ``(start, end)`` spans (overlaps counted once)."""
    total, end = 0.0, float("-inf")
    for start, stop in sorted(spans):
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total


def profile_run(config: TrainConfig, wait: int, warmup: int, active: int) -> dict[str, Any]:
    """Profile ``active`` steps of ``config`` after ``wait + warmup`` steps: per step, the time
    the device is busy (CUDA: kernels and copies; CPU: torch ops called by the loop) and the
    number of kernels (ops)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile, schedule

    cuda = resolve_device(config.device).type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    if config.compile:
        torch._dynamo.reset()
    with profile(activities=activities,
                 schedule=schedule(wait=wait, warmup=warmup, active=active, repeat=1)) as prof:
        run_train(config, progress=lambda n: prof.step())  # fmt: skip
    events = prof.events()
    if cuda:
        timed = [e for e in events if e.device_type != DeviceType.CPU]
        what = "CUDA kernels and copies"
    else:
        timed = [e for e in events if e.device_type == DeviceType.CPU and e.cpu_parent is not None
                 and e.cpu_parent.name.startswith("ProfilerStep")]  # fmt: skip
        what = "CPU torch ops"
    steps = [e for e in events if e.name.startswith("ProfilerStep")]
    spans = [(e.time_range.start, e.time_range.end) for e in timed]
    host = sum(e.time_range.elapsed_us() for e in steps) / max(len(steps), 1)
    return {
        "timed": what,
        "steps": active,
        "busy_ms_per_step": _union_us(spans) / active / 1e3,
        "summed_ms_per_step": sum(e.time_range.elapsed_us() for e in timed) / active / 1e3,
        "kernels_per_step": len(timed) / active,
        "host_ms_per_step_profiled": host / 1e3,
    }

