"""Distillation from sparse (top-K) teacher rows: the exact KD over the kept classes + one tail.

A sparse cache (format >= 1.2, ``docs/cache-format.md`` §Sparse rows) keeps, per row, the K largest
teacher logits and, at each recorded temperature T, the log-sum-exp over all C classes and over the
C - K classes not kept. The teacher's distribution at T is then known exactly on K + 1 buckets:

    log p_c    = z_c / T - LSE(z / T)                      for each kept class c
    log p_tail = LSE_{c not kept}(z_c / T) - LSE(z / T)     (in log space: never 1 - sum p)

and the student's on the same buckets is ``log q_c`` and
``log q_tail = LSE_{not kept}(s / T) - LSE(s / T)``. Sparse KD is ``T^2 * KL(p || q)`` over those
K + 1 buckets, batch-averaged: exact given the cache, equal to dense KD when K = C (no tail), and a
lower bound of dense KD otherwise (the KL inside the tail is what the cache does not know; its size
is measured in ``docs/losses.md``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from kdcache.errors import ConfigError


class SparseRowArrays(Protocol):
    """Sparse teacher rows as numpy arrays, as a cache stores them (the cache's ``SparseRows``
    is one). Declared here, not imported, so the losses need only tensors and arrays."""

    @property
    def values(self) -> np.ndarray: ...  # [R, K]
    @property
    def indices(self) -> np.ndarray: ...  # [R, K]
    @property
    def temperatures(self) -> tuple[float, ...]: ...
    @property
    def lse(self) -> np.ndarray: ...  # [R, nT]
    @property
    def tail_lse(self) -> np.ndarray | None: ...  # [R, nT]; None for format 1.0/1.1
    @property
    def label_logit(self) -> np.ndarray | None: ...  # [R]


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
    def from_rows(cls, rows: SparseRowArrays, num_classes: int) -> SparseTeacher:
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

    ``student_scaled`` is ``s / T`` ``[B, C]``. The tail's log-mass is a log-sum-exp over the
    classes not kept (exact, differentiable); with no such class (K = C) it is -inf and carries no
    gradient.
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


# What each loss approximates when trained from sparse rows through the uniform-tail completion
# (`kdcache train --sparse-approx`, `build_objective(..., sparse_approx=True)`). The warning and
# docs/losses.md quote these lines; the measured errors are in docs/losses.md.
APPROXIMATIONS: dict[str, str] = {
    "dkd": "TCKD is exact; NCKD's distribution over the teacher's non-kept classes is taken as "
    "uniform (their total mass is exact)",
    "rld": "SCD is exact at alpha_temperature = T; MCD's non-kept classes are taken as one uniform "
    "block (their total mass is exact, their order against the true class is not known)",
    "ldrld": "pairs among the teacher's kept classes are exact; pairs and the RNTK term that touch "
    "non-kept classes see them as uniform (their total mass is exact)",
}


def refuse_sparse(loss_name: str) -> ConfigError:
    """The error for a loss that cannot be exact from sparse rows and was not allowed to guess."""
    return ConfigError(
        f"loss {loss_name!r} needs every class's teacher logit, and this cache is sparse (top-K): "
        f"from it, {APPROXIMATIONS.get(loss_name, 'some terms are not determined')}. Train with "
        "`sparse_approx` to accept that approximation, use loss 'kd' (exact from a sparse cache), "
        "or extract a dense cache (without `topk`)."
    )


def uniform_tail_teacher(teacher: SparseTeacher, target: Tensor, temperature: float) -> Tensor:
    """A dense ``[B, C]`` completion of sparse rows, exact wherever the cache determines it.

    Kept classes keep their logits and the true class its logit; every other class gets the same
    logit ``z_fill``, chosen so that at ``temperature`` their total mass equals the stored tail mass
    (less the true class's when it is not kept). So at that temperature the completion has the
    teacher's exact probabilities on the kept classes and the true class, and the exact total on
    the rest, spread uniformly (the maximum-entropy choice). ``z_fill`` is at most the smallest
    kept logit, so no filled class outranks a kept one.
    """
    b, c = teacher.shape
    col = teacher.column(temperature)
    dtype = teacher.lse.dtype if teacher.lse.dtype == torch.float64 else torch.float32
    values = teacher.values.to(dtype)
    tail = teacher.tail_lse[:, col].to(dtype)  # [B] log-mass of the non-kept classes at T (x LSE)
    target = target.to(teacher.indices.device).long()
    label_kept = (teacher.indices == target[:, None]).any(dim=1)  # [B]
    label_scaled = teacher.label_logit.to(dtype) / temperature  # [B]
    # Mass of the non-kept classes other than the label: tail - [label not kept] * e^{z_y / T},
    # in log space; log1mexp(x) = log(1 - e^x) for x <= 0.
    gap = torch.clamp(label_scaled - tail, max=0.0)
    log1mexp = torch.where(
        gap > -0.6931, torch.log(-torch.expm1(gap)), torch.log1p(-torch.exp(gap))
    )
    rest = torch.where(label_kept, tail, tail + log1mexp)
    n_rest = c - teacher.values.shape[1] - (~label_kept).to(dtype)  # classes that share `rest`
    fill = temperature * (rest - torch.log(torch.clamp(n_rest, min=1.0)))  # [B]
    # rest = -inf: nothing left to spread (no such class, or a mass below float rounding next to
    # the label's): any logit far below the others stands for it without breaking the losses.
    floor = torch.minimum(values[:, -1], teacher.label_logit.to(dtype)) - 40.0 * temperature
    fill = torch.where(torch.isfinite(fill), fill, floor)
    fill = torch.minimum(fill, values[:, -1])
    dense = fill[:, None].expand(b, c).clone()
    dense.scatter_(1, teacher.indices, values)
    return dense.scatter(1, target[:, None], teacher.label_logit.to(dtype)[:, None])
