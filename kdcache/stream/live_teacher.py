"""The live teacher as a teacher source: online KD, the teacher run on each batch's uint8 views.

Each batch's views are converted the teacher's way and run through the extract forward
(:func:`kdcache.models.inference.teacher_forward`), so online logits equal a float32 cache's bits;
with ``topk`` they are sparsified exactly as the cache writer does
(:func:`kdcache.cache.sparse.sparse_rows_from_logits`), so a top-K online run equals a float32
top-K cached run step for step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from kdcache.cache.sparse import sparse_rows_from_logits
from kdcache.losses.sparse import SparseTeacher
from kdcache.models.inference import teacher_forward, teacher_inference
from kdcache.models.preprocess import Preprocessing
from kdcache.stream.plan import EpochPlan
from kdcache.stream.teacher_source import Origin, TeacherInput


@dataclass(frozen=True)
class OnlineTopK:
    """Sparsifies live teacher logits exactly as the cache writer does (float32 rows)."""

    k: int
    temperatures: tuple[float, ...]  # ascending, as a cache records them
    num_classes: int

    def __call__(self, logits: Tensor, labels: Tensor) -> SparseTeacher:
        """The sparse rows of ``logits`` float32 ``[B, C]`` with true ``labels`` int64 ``[B]``,
        on the logits' device."""
        rows = sparse_rows_from_logits(
            logits.detach().float().cpu().numpy(),
            labels.detach().cpu().numpy(),
            self.k,
            self.temperatures,
        )
        return SparseTeacher.from_rows(rows, self.num_classes).to(logits.device)


def sparsify_online(logits: Tensor, labels: Tensor, topk: OnlineTopK | None) -> TeacherInput:
    """``logits`` ``[B, C]`` as the loss's teacher input: unchanged, or their top-K rows."""
    return logits if topk is None else topk(logits, labels)


def online_logits(teacher: nn.Module, views: Tensor, teacher_input: Preprocessing) -> Tensor:
    """float32 [B, C] of the uint8 ``views`` converted the teacher's way: the extract forward, so
    that online logits equal a float32 cache's bits."""
    with teacher_inference(views.device):
        logits = teacher_forward(teacher, teacher_input(views))
    # An inference-mode tensor cannot be saved for backward: a plain copy for the loss.
    return logits.clone()


class LiveTeacher:
    """A :class:`~kdcache.stream.teacher_source.TeacherSource` running ``model`` (already on the
    stream's device, in eval mode) on every batch."""

    origin: Origin = "live"
    chunk_rows: int | None = None

    def __init__(
        self, model: nn.Module, preprocessing: Preprocessing, topk: OnlineTopK | None = None
    ) -> None:
        self.model = model
        self.preprocessing = preprocessing
        self.topk = topk
        self.versions: dict[str, str] = {}

    def feed(self, plan: EpochPlan, device: torch.device) -> LiveTeacher:
        return self

    def next(
        self, items: np.ndarray, views: Tensor, labels: Tensor
    ) -> tuple[TeacherInput, None]:
        logits = online_logits(self.model, views, self.preprocessing)
        return sparsify_online(logits, labels, self.topk), None

    def close(self) -> None:
        pass
