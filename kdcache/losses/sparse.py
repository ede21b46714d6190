"""Distillation from sparse (top-K) teacher rows: the exact KD over the kept classes + one tail.

A sparse cache (format >= 1.2, ``docs/cache-format.md`` §Sparse rows) keeps, per row, the K largest
teacher logits and, at each recorded temperature T, the log-sum-exp over all C classes and over the
C - K classes not kept. The teacher's distribution at T is then known exactly on K + 1 buckets:

    log p_c    = z_c / T - LSE(z / T)                      for each kept class c
    log p_tail = LSE_{c not kept}(z_c / T) - LSE(z / T)     (in log space: never 1 - sum p)

and the student's on the same buckets is ``log q_c`` and ``log q_tail = LSE_{not kept}(s / T) -
LSE(s / T)``. Sparse KD is ``T^2 * KL(p || q)`` over those K + 1 buckets, batch-averaged: exact given
the cache, equal to dense KD when K = C (no tail), and a lower bound of dense KD otherwise (the KL
inside the tail is what the cache does not know; its size is measured in ``docs/losses.md``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from kdcache.cache.sparse import SparseRows
from kdcache.errors import ConfigError


@dataclass(frozen=True)
class SparseTeacher:
    """A batch of sparse teacher rows as tensors (what a loss receives instead of ``[B, C]``)."""

    values: Tensor  # [B, K] kept logits, descending
    indices: Tensor  # [B, K] int64 class indices
    temperatures: tuple[float, ...]  # nT recorded temperatures
    lse: Tensor  # [B, nT] LSE(z / T) over all classes
    tail_lse: Tensor  # [B, nT] LSE(z / T) over the classes not kept (-inf when K = C)
    label_logit: Tensor  # [B] the teacher's logit at the true label
    num_classes: int

    @classmethod
    def from_rows(cls, rows: SparseRows, num_classes: int) -> SparseTeacher:
        """Tensors of ``rows`` (format >= 1.2; 1.0/1.1 sparse rows cannot distil exactly)."""
        if rows.tail_lse is None or rows.label_logit is None:
            raise ConfigError(
                "this sparse cache is of format 1.0/1.1: it stores the log-sum-exp at T = 1 only, "
                "so no loss at T != 1 is exact. Re-extract it with this kdcache (format 1.2)."
            )
        return cls(
            values=torch.from_numpy(np.ascontiguousarray(rows.values)),
            indices=torch.from_numpy(rows.indices.astype(np.int64)),
            temperatures=rows.temperatures,
            lse=torch.from_numpy(np.ascontiguousarray(rows.lse)),
            tail_lse=torch.from_numpy(np.ascontiguousarray(rows.tail_lse)),
            label_logit=torch.from_numpy(np.ascontiguousarray(rows.label_logit)),
            num_classes=num_classes,
        )

    @property
    def shape(self) -> tuple[int, int]:
        """``(B, C)``: the dense shape these rows stand for."""
        return (self.values.shape[0], self.num_classes)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> SparseTeacher:
        def move(t: Tensor) -> Tensor:
            return t.to(device, non_blocking=non_blocking)

        return SparseTeacher(
            values=move(self.values),
            indices=move(self.indices),
            temperatures=self.temperatures,
            lse=move(self.lse),
            tail_lse=move(self.tail_lse),
            label_logit=move(self.label_logit),
            num_classes=self.num_classes,
        )

    def column(self, temperature: float) -> int:
        """Column of ``lse`` for ``temperature``; a clear error naming what the cache holds."""
        for i, t in enumerate(self.temperatures):
            if t == float(temperature):
                return i
        held = ", ".join(f"{t:g}" for t in self.temperatures)
        raise ConfigError(
            f"the loss runs at temperature {temperature:g}, but this sparse cache stores the "
            f"log-sum-exp at T = {held} only. Use one of those temperatures, or re-extract with "
            f"`--sparse-temperature {temperature:g}`."
        )


def sparse_log_probs(teacher: SparseTeacher, temperature: float, dtype: torch.dtype) -> Tensor:
    """The teacher's log-probabilities on the K kept classes and the tail, ``[B, K + 1]``."""
    col = teacher.column(temperature)
    lse = teacher.lse[:, col : col + 1].to(dtype)  # [B, 1]
    kept = teacher.values.to(dtype) / temperature - lse  # [B, K]
    tail = teacher.tail_lse[:, col : col + 1].to(dtype) - lse  # [B, 1]
    return torch.cat([kept, tail], dim=1)


def student_bucket_log_probs(student_scaled: Tensor, indices: Tensor) -> Tensor:
    """The student's log-probabilities on the kept classes and the tail, ``[B, K + 1]``.

    ``student_scaled`` is ``s / T`` ``[B, C]``. The tail's log-mass is a log-sum-exp over the classes
    not kept (exact, differentiable); with no such class (K = C) it is -inf and carries no gradient.
    """
    log_q = torch.log_softmax(student_scaled, dim=1)  # [B, C]
    kept = log_q.gather(1, indices)  # [B, K]
    if indices.shape[1] == student_scaled.shape[1]:
        tail = torch.full_like(kept[:, :1], float("-inf"))
    else:
        others = log_q.scatter(1, indices, float("-inf"))  # [B, C], kept classes removed
        tail = torch.logsumexp(others, dim=1, keepdim=True)
    return torch.cat([kept, tail], dim=1)


def bucket_kl(log_p: Tensor, log_q: Tensor) -> Tensor:
    """Row-wise ``sum_j p_j (log p_j - log q_j)`` ``[B]``; a bucket with p_j = 0 adds exactly 0."""
    p = log_p.exp()
    present = p > 0
    diff = torch.where(present, log_p - log_q, torch.zeros_like(log_q))
    return (p * diff).sum(dim=1)


def sparse_kd_loss(
    student_logits: Tensor,
    teacher: SparseTeacher,
    target: Tensor | None = None,
    *,
    temperature: float = 4.0,
) -> Tensor:
    """KD from sparse rows: ``T^2 * mean_b KL(p || q)`` over the K kept classes and one tail, 0-d.

    Args:
        student_logits: ``[B, C]``.
        teacher: the batch's sparse rows; must record ``temperature``.
        target: unused (uniform signature).
        temperature: T > 0.
    """
    if student_logits.dim() != 2 or tuple(student_logits.shape) != teacher.shape:
        raise ValueError(
            f"expected student logits of shape {teacher.shape}, got {tuple(student_logits.shape)}"
        )
    dtype = torch.float64 if student_logits.dtype == torch.float64 else torch.float32
    s = student_logits.to(dtype) / temperature
    log_p = sparse_log_probs(teacher, temperature, dtype)  # [B, K + 1]
    log_q = student_bucket_log_probs(s, teacher.indices)  # [B, K + 1]
    return bucket_kl(log_p, log_q).mean() * (temperature * temperature)
