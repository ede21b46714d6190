"""Shared math of the distillation losses: exact masked softmax / KL, written once.

Every loss here is a sum of KL divergences between temperature-scaled softmaxes of the teacher
``t`` and the student ``s``, sometimes *renormalised over a subset* ``S`` of the classes::

    softmax_S(z)_c = exp(z_c) / sum_{c' in S} exp(z_c')      (c in S; exactly 0 outside S)
    KL_S(t || s)   = sum_{c in S} p^t_c (log p^t_c - log p^s_c)
    d KL_S / d(s_c / T) = softmax_S(s/T)_c - softmax_S(t/T)_c            (0 outside S)

The official codes exclude classes by subtracting 1000 from the logits (DKD, LDRLD) or by
``masked_fill(-1e9)`` (RLD). Here an excluded class's temperature-scaled logit is set to
``MASK_FILL = -1e30``: its exponential underflows to exactly 0 in float32 and float64, so the kept
classes' probabilities are exact at any realistic logit scale (``-1000`` is overwhelmed by logits
of magnitude 1000*T). A row whose support is empty contributes exactly 0, with zero gradient.

The masked KL has a closed-form backward (the line above): :func:`masked_kl` and the DKD / RLD
terms use hand-written ``autograd.Function``\\ s so that a training step costs one softmax per side
and term, not autograd's chain of log-softmax / subtract / multiply / scatter backwards. Their
gradients are checked against autograd (``gradcheck``) and against the official code's.

Precision policy: losses compute in float32, or float64 when either input is float64; float16 /
bfloat16 inputs (e.g. a float16 logit cache) are upcast here, at the boundary.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

# z-scoring epsilon of the logit-standardisation code (Sun et al. 2024, and zju-SWJ/RLD `normalize`)
STANDARDIZE_EPS = 1e-7

# What an excluded class's temperature-scaled logit is set to. Finite rather than -inf: no
# -inf - -inf NaN can enter a graph, and the fused softmax kernels stay on their fast path (a
# plain exp() of -inf or of an underflowing input is ~10x slower on CPU).
MASK_FILL = -1e30


# --------------------------------------------------------------------------------------- inputs
def prepare_logits(student: Tensor, teacher: Tensor) -> tuple[Tensor, Tensor]:
    """Check shapes and upcast: float64 if either input is float64, else float32.

    The teacher is detached: no loss may send gradient into teacher logits, live or cached.
    """
    if student.dim() != 2 or teacher.shape != student.shape:
        raise ValueError(
            f"expected student and teacher logits of the same shape [B, C], got "
            f"{tuple(student.shape)} and {tuple(teacher.shape)}"
        )
    if student.shape[1] < 2:
        raise ValueError(f"distillation needs at least 2 classes, got C = {student.shape[1]}")
    wide = torch.float64 in (student.dtype, teacher.dtype)
    dtype = torch.float64 if wide else torch.float32
    return student.to(dtype), teacher.detach().to(dtype)


def prepare_target(target: Tensor, logits: Tensor) -> Tensor:
    """Check that ``target`` is ``[B]`` class indices for ``logits [B, C]``; return it as int64."""
    if target.dim() != 1 or target.shape[0] != logits.shape[0]:
        raise ValueError(f"expected target of shape [{logits.shape[0]}], got {tuple(target.shape)}")
    if target.dtype.is_floating_point or target.dtype == torch.bool:
        raise ValueError(f"target must hold integer class indices, got dtype {target.dtype}")
    return target.to(device=logits.device, dtype=torch.long)


def standardize(logits: Tensor) -> Tensor:
    """Per-row z-score ``(z - mean) / (1e-7 + std)``, std with Bessel's correction (N - 1).

    "Logit standardisation" of Sun et al., *Logit Standardization in Knowledge Distillation*,
    CVPR 2024 (arXiv:2403.01427), exactly as the zju-SWJ/RLD code applies it (``--logit-stand``).
    """
    mean = logits.mean(dim=1, keepdim=True)  # [B, 1]
    std = logits.std(dim=1, keepdim=True)  # [B, 1], unbiased
    return (logits - mean) / (STANDARDIZE_EPS + std)


# ------------------------------------------------------------------ softmax pieces (no autograd)
def softmax_lse(z: Tensor) -> tuple[Tensor, Tensor]:
    """``(softmax(z), logsumexp(z))`` of rows ``[B, C]`` from one fused softmax.

    At the row's arg-max the fused kernel computes ``p = exp(0) / sum = 1 / sum`` exactly, so
    ``lse = max(z) - log(max(p))`` is the log-sum-exp to rounding, without ``torch.logsumexp``'s
    four passes (or an ``argmax``, which is slower than ``amax`` on CPU).
    """
    p = F.softmax(z, dim=1)  # [B, C]
    return p, z.amax(dim=1) - p.amax(dim=1).log()


def split_log_probs(z_in: Tensor, lse_rest: Tensor) -> tuple[Tensor, Tensor]:
    """``(log p_in, log(1 - p_in))`` from the logit of one class and the log-sum-exp of the rest.

    Both come from log-sum-exps, never from ``log(1 - p)``, so they stay finite and accurate when
    ``p_in`` rounds to 1 (logit margins of 100+ in float32), where the official
    ``torch.log(summed probabilities)`` gives ``-inf``.
    """
    lse_all = torch.logaddexp(z_in, lse_rest)  # [B]
    return z_in - lse_all, lse_rest - lse_all


def exclusion_offset(keep: Tensor, dtype: torch.dtype) -> Tensor:
    """``0`` where ``keep`` (bool or 0/1) holds, else ``MASK_FILL``: add it to scaled logits."""
    return (keep.to(dtype) - 1.0) * -MASK_FILL


def offset_kl_forward(
    student: Tensor, teacher: Tensor, offset: Tensor, temperature: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-row KL over the classes where ``offset == 0``: ``(kl [B], p^s [B, C], p^t [B, C])``.

    ``p^s`` and ``p^t`` are the masked softmaxes (exactly 0 outside the support), kept for the
    closed-form backward ``p^s - p^t``. No autograd. An empty row yields a finite value that the
    caller discards.
    """
    zs = torch.add(offset, student, alpha=1.0 / temperature)  # [B, C], s / T + offset in one pass
    zt = torch.add(offset, teacher, alpha=1.0 / temperature)  # [B, C]
    ps, lse_s = softmax_lse(zs)
    pt, lse_t = softmax_lse(zt)
    # KL = sum_S p^t (log p^t - log p^s) = sum_S p^t (z^t - z^s) - lse_t + lse_s, and z^t - z^s =
    # (t - s) / T because the offset cancels; p^t = 0 outside S. Two exponential passes, not four.
    cross = (teacher - student).mul_(pt).sum(dim=1)  # [B]
    return cross / temperature - lse_t + lse_s, ps, pt


class _MaskedKL(torch.autograd.Function):
    """Per-row masked KL with the closed-form backward ``(p^s - p^t) / T`` (0 outside S)."""

    @staticmethod
    def forward(
        ctx: Any, student: Tensor, teacher: Tensor, offset: Tensor, temperature: float
    ) -> Tensor:
        kl, ps, pt = offset_kl_forward(student, teacher, offset, temperature)
        has_support = (offset.amax(dim=1) == 0).to(kl.dtype)  # [B], 0 for an empty row
        ctx.save_for_backward(ps, pt, has_support)
        ctx.temperature = temperature
        return kl * has_support

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        ps, pt, has_support = ctx.saved_tensors
        scale = (grad * has_support / ctx.temperature).unsqueeze(1)  # [B, 1]
        return (ps - pt) * scale, None, None, None


# ------------------------------------------------------------------------------------------ KL
def masked_kl(student: Tensor, teacher: Tensor, keep: Tensor, temperature: float) -> Tensor:
    """Per-row ``KL(softmax_S(t/T) || softmax_S(s/T))``, ``S = {c: keep[b, c]}``, not T^2-scaled.

    Args:
        student: ``[B, C]`` student logits (float32/float64); the gradient flows to it.
        teacher: ``[B, C]`` teacher logits, same dtype; treated as a constant.
        keep: ``[B, C]`` bool (or 0/1 float) mask of the classes each row keeps. Excluded classes
            get probability exactly 0 on both sides.
        temperature: T > 0.

    Returns:
        ``[B]`` KL per row. A row with an empty support is exactly 0 with zero gradient; a row
        with a single kept class is 0 as well (both distributions are a point mass).
    """
    offset = exclusion_offset(keep, student.dtype)  # [B, C]
    return _MaskedKL.apply(student, teacher.detach(), offset, temperature)


def kl_rows(student_scaled: Tensor, teacher_scaled: Tensor) -> Tensor:
    """Row-wise ``KL(softmax(t) || softmax(s))`` of temperature-scaled logits ``[B, C]`` -> ``[B]``.

    Plain autograd (the form of the official KD code); used by KD and LDRLD's small top-k group.
    """
    log_ps = F.log_softmax(student_scaled, dim=1)  # [B, C]
    log_pt = F.log_softmax(teacher_scaled, dim=1)  # [B, C]
    pt = F.softmax(teacher_scaled, dim=1)  # [B, C]; fused, unlike log_pt.exp()
    return (pt * (log_pt - log_ps)).sum(dim=1)


def binary_kl(
    log_pt_in: Tensor, log_pt_out: Tensor, log_ps_in: Tensor, log_ps_out: Tensor
) -> Tensor:
    """``KL([p^t, 1-p^t] || [p^s, 1-p^s])`` per row from four log-probabilities, each ``[B]``."""
    return log_pt_in.exp() * (log_pt_in - log_ps_in) + log_pt_out.exp() * (log_pt_out - log_ps_out)


def batch_mean_scaled(per_row: Tensor, temperature: float) -> Tensor:
    """``T^2 * mean_b per_row[b]``: the batch-mean, temperature-squared reduction of every term."""
    return per_row.mean() * (temperature * temperature)
