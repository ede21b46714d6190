"""A run's stream, built once before the first step: its image source and its teacher source.

``--stream``: ``device`` keeps the dataset's uint8 images (and a dense cache's logits) on the
training device and cuts each batch's views there; ``host`` makes the views in DataLoader workers;
``auto`` takes ``device`` wherever the data, the recipe and the device's memory allow
(:func:`kdcache.stream.images.choose_images`). The teacher source is the cache's rows (resident on
the device with the device stream and a dense cache, else streamed chunk by chunk), the live
teacher, or none.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from kdcache.stream.cached_teacher import CachedTeacher
from kdcache.stream.epoch import EpochSource, chunk_capacity
from kdcache.stream.evaluation import EvaluationBatches
from kdcache.stream.images import DeviceImages, choose_images
from kdcache.stream.live_teacher import LiveTeacher, OnlineTopK
from kdcache.stream.teacher_source import TeacherSource
from kdcache.training.config import TrainConfig
from kdcache.training.run_data import RunData

log = logging.getLogger(__name__)


def _cached_teacher(
    config: TrainConfig, data: RunData, device: torch.device, resident: bool
) -> TeacherSource | None:
    reader = data.reader
    if reader is None:
        return None
    storage = reader.identity.storage
    if storage.mode == "dense" and resident:
        from kdcache.stream.resident_teacher import ResidentTeacher

        return ResidentTeacher(reader, data.allowed_views, data.num_samples, device)
    if storage.mode == "dense" or storage.exact_sparse:
        capacity = chunk_capacity(config.window_blocks, data.allowed_views)
        return CachedTeacher(reader, chunk_capacity=capacity)
    if config.verify_replay != "off":
        # Only --loss ce gets here (run_data refuses a 1.0/1.1 sparse cache for the other losses).
        log.warning("1.0/1.1 sparse cache, loss ce: no rows are read, so no replay checks are made")
    return None


def _resident_logit_bytes(data: RunData) -> int:
    reader = data.reader
    if reader is None or reader.identity.storage.mode != "dense":
        return 0
    from kdcache.stream.resident_teacher import ResidentTeacher

    return ResidentTeacher.nbytes(reader, data.allowed_views, data.num_samples)


def stream_source(
    config: TrainConfig, data: RunData, device: torch.device, teacher: nn.Module | None,
    teacher_topk: OnlineTopK | None,
) -> EpochSource:  # fmt: skip
    """The run's stream source; ``teacher``: the live teacher (online KD), else None."""
    images = choose_images(config.stream, data.train, data.recipe, data.cache_seed,
                           workers=config.workers, device=device,
                           extra_bytes=_resident_logit_bytes(data))  # fmt: skip
    resident = isinstance(images, DeviceImages)
    source: TeacherSource | None
    if teacher is not None:
        source = LiveTeacher(teacher, data.teacher_input, teacher_topk)
    else:
        source = _cached_teacher(config, data, device, resident)
    log.info("stream: %s images, teacher %s", images.kind,
             type(source).__name__ if source else "none")  # fmt: skip
    return EpochSource(data.train, data.recipe, data.cache_seed, data.allowed_views,
                       data.block_rows, data.num_samples, images, source,
                       data.student_input)  # fmt: skip


def evaluation_source(
    config: TrainConfig, data: RunData, device: torch.device
) -> EvaluationBatches:
    """The run's evaluation stream: resident on the device when the training stream is."""
    return EvaluationBatches(data.eval, batch_size=config.eval_batch_size, workers=config.workers,
                             device=device, channels_last=config.channels_last,
                             student_input=data.student_input,
                             resident=config.stream != "host")  # fmt: skip
