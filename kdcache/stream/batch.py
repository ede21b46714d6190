"""``Batch``: what one step of the stream hands to a training step (or to your own loop)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from kdcache.losses.mixed import MixedTarget, soft_targets
from kdcache.losses.sparse import SparseTeacher


@dataclass(frozen=True, slots=True)
class Batch:
    """One batch of distillation inputs (B rows; B <= the batch size)."""

    images: Tensor  # float32 [B, C, H, W] on the device: the student's normalised inputs
    labels: Tensor  # int64 [B] on the device
    # float32 [B, K] on the device (sparse rows from a sparse cache or a top-K live teacher); None
    # without a teacher (cross-entropy)
    teacher_logits: Tensor | SparseTeacher | None
    view: Tensor  # int64 [B] (CPU): the cached view each row is
    index: Tensor  # int64 [B] (CPU): the sample index of each row
    # uint8 [B, C, H, W] on the device: the augmented view itself, before any model's conversion
    # (what a live teacher converts its own way; the input hash covers these bytes)
    views_uint8: Tensor | None = None
    # Mixed views only (None otherwise), on the device: int64 [B] the partners' labels y', float32
    # [B] lambda, the weight of ``labels`` in the target lam * onehot(y) + (1 - lam) * onehot(y')
    partner_labels: Tensor | None = None
    lam: Tensor | None = None

    @property
    def mix(self) -> MixedTarget | None:
        """The mixed target's second half for the objective; None when the views are not mixed."""
        if self.partner_labels is None or self.lam is None:
            return None
        return MixedTarget(self.partner_labels, self.lam)

    def soft_targets(self, num_classes: int) -> Tensor:
        """float32 [B, C] label targets (one-hot, or mixed by lambda), for your own loss."""
        return soft_targets(self.labels, self.mix, num_classes)
