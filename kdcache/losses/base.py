"""The module interface of every distillation loss (the registry and the objective rely on it)."""

from __future__ import annotations

from torch import Tensor, nn

from kdcache.losses.sparse import SparseTeacher


class DistillationLoss(nn.Module):
    """A loss over ``(student_logits [B, C], teacher_logits [B, C], target [B])``.

    Subclasses validate their hyper-parameters in ``__init__`` and implement:

    - :meth:`terms`: the loss's unweighted named terms (each already T^2-scaled and batch-averaged),
      e.g. ``{"tckd": ..., "nckd": ...}`` for DKD;
    - :meth:`combine`: the weighted scalar from those terms (e.g. ``alpha*tckd + beta*nckd``).

    ``forward`` is ``combine(terms(...))``, so the objective can log the terms and backpropagate the
    scalar from a single evaluation.
    """

    def terms(
        self, student_logits: Tensor, teacher_logits: Tensor | SparseTeacher, target: Tensor
    ) -> dict[str, Tensor]:
        """Named terms; ``teacher_logits`` may be sparse rows only where the loss says so (KD)."""
        raise NotImplementedError

    def combine(self, terms: dict[str, Tensor]) -> Tensor:
        raise NotImplementedError

    def forward(
        self, student_logits: Tensor, teacher_logits: Tensor | SparseTeacher, target: Tensor
    ) -> Tensor:
        return self.combine(self.terms(student_logits, teacher_logits, target))
