"""Where a batch's teacher signal comes from: one interface for the cache and the live teacher.

A :class:`TeacherSource` lives for the whole run; each epoch it opens a :class:`TeacherFeed` over
that epoch's plan, which the stream asks once per batch for the rows' teacher input. The step never
knows which source it was: it gets ``Batch.teacher_logits`` either way.

- :class:`~kdcache.stream.cached_teacher.CachedTeacher`: a cache's rows, decoded chunk by chunk
  in a background thread (dense or sparse caches);
- :class:`~kdcache.stream.resident_teacher.ResidentTeacher`: a dense cache's rows held on the
  device for the whole run (the device-resident stream);
- :class:`~kdcache.stream.live_teacher.LiveTeacher`: the teacher network itself, run on the
  batch's uint8 views (online KD).
"""

from __future__ import annotations

from typing import Literal, Protocol

import numpy as np
import torch
from torch import Tensor

from kdcache.losses.sparse import SparseTeacher
from kdcache.stream.plan import EpochPlan

TeacherInput = Tensor | SparseTeacher  # what the objective's loss reads: [B, C] or sparse rows
Origin = Literal["cache", "live"]


class TeacherFeed(Protocol):
    """One epoch of teacher rows, asked for batch by batch in the plan's order."""

    def next(
        self, items: np.ndarray, views: Tensor, labels: Tensor
    ) -> tuple[TeacherInput, np.ndarray | None]:
        """The rows of the batch ``items`` [B, 2] (view, index) on the stream's device, and the
        input hashes [B] the cache recorded for them (None from a live teacher). ``views`` (uint8
        [B, C, H, W]) and ``labels`` [B] are the batch's, on the device."""
        ...

    def close(self) -> None:
        """Stop any background work (an epoch left early)."""
        ...


class TeacherSource(Protocol):
    """A run's teacher signal (see the module's docstring)."""

    origin: Origin
    #: rows per cache chunk, to name the chunk of a bad row (None: not a cache)
    chunk_rows: int | None
    #: the library versions that made the cache (for the replay error); {} for a live teacher
    versions: dict[str, str]

    def feed(self, plan: EpochPlan, device: torch.device) -> TeacherFeed:
        """The teacher rows of ``plan``'s batches, in order."""
        ...
