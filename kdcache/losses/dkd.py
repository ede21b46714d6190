"""DKD: decoupled knowledge distillation (Zhao, Cui, Song, Qiu & Liang, CVPR 2022,
arXiv:2203.08679).

KD split into the target-class and the non-target-class parts, re-weighted::

    b_b    = [p_{b,y}, sum_{c != y} p_{b,c}]                         (binary, p = softmax(z / T))
    TCKD   = T^2 (1/B) sum_b KL(b^t_b || b^s_b)
    NCKD   = T^2 (1/B) sum_b KL(softmax_{c != y}(z^t_b / T) || softmax_{c != y}(z^s_b / T))
    L_DKD  = alpha * TCKD + beta * NCKD

Matches ``dkd_loss`` of mdistiller / zju-SWJ/RLD. Two deliberate differences, both exact rewrites:
the official code takes ``log`` of summed probabilities (``-inf``/NaN in float32 at large margins)
and removes the target from NCKD by subtracting 1000; here ``log p_y`` and ``log(1 - p_y)`` come
from the log-sum-exp of the non-target classes and the target is excluded exactly.
Defaults alpha 1, beta 8, T 4 (CIFAR); the objective adds CE x 1 and a linear 20-epoch warm-up.

Both terms share one softmax per side over the non-target classes, and the backward is closed
form. With ``u = z^s / T``, ``q = softmax(u)``, ``r`` / ``r^t`` the student / teacher softmaxes over
``c != y`` and ``p_y`` the teacher's target probability::

    d TCKD_b / d u_c = q_y - p_y                 (c = y)      r_c (p_y - q_y)   (c != y)
    d NCKD_b / d u_c = 0                         (c = y)      r_c - r^t_c       (c != y)
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from kdcache.losses._checks import check_bool, check_non_negative, check_positive
from kdcache.losses._common import (
    MASK_FILL,
    batch_mean_scaled,
    binary_kl,
    prepare_logits,
    prepare_target,
    softmax_lse,
    split_log_probs,
    standardize,
)
from kdcache.losses.base import DistillationLoss
from kdcache.losses.sparse import SparseTeacher, refuse_sparse


class _DKDRows(torch.autograd.Function):
    """Per-row ``(TCKD, NCKD)`` (not T^2-scaled) with the closed-form backward above."""

    @staticmethod
    def forward(
        ctx: Any, student: Tensor, teacher: Tensor, target: Tensor, temperature: float
    ) -> tuple[Tensor, Tensor]:
        index = target.unsqueeze(1)  # [B, 1]
        u = student / temperature  # [B, C], a fresh tensor: scattered in place below
        v = teacher / temperature
        u_y = u.gather(1, index).squeeze(1)  # [B]
        v_y = v.gather(1, index).squeeze(1)
        u.scatter_(1, index, MASK_FILL)  # now the non-target logits
        v.scatter_(1, index, MASK_FILL)
        r_s, lse_s_rest = softmax_lse(u)  # [B, C] (0 at y), [B]
        r_t, lse_t_rest = softmax_lse(v)
        log_r_s = F.log_softmax(u, dim=1)
        log_r_t = F.log_softmax(v, dim=1)
        nckd = (r_t * (log_r_t - log_r_s)).sum(dim=1)  # [B]; the y terms are 0 * finite

        ls_in, ls_out = split_log_probs(u_y, lse_s_rest)  # log q_y, log(1 - q_y)
        lt_in, lt_out = split_log_probs(v_y, lse_t_rest)
        tckd = binary_kl(lt_in, lt_out, ls_in, ls_out)  # [B]

        ctx.save_for_backward(r_s, r_t, index, ls_in.exp(), lt_in.exp())
        ctx.temperature = temperature
        return tckd, nckd

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, g_tckd: Tensor, g_nckd: Tensor) -> tuple[Tensor | None, ...]:
        r_s, r_t, index, q_y, p_y = ctx.saved_tensors
        inv_t = 1.0 / ctx.temperature
        on_r_s = ((g_nckd + g_tckd * (p_y - q_y)) * inv_t).unsqueeze(1)  # [B, 1]
        on_r_t = (g_nckd * inv_t).unsqueeze(1)
        grad = torch.addcmul(r_s * on_r_s, r_t, on_r_t, value=-1.0)  # [B, C], 0 at y so far
        grad.scatter_(1, index, (g_tckd * (q_y - p_y) * inv_t).unsqueeze(1))
        return grad, None, None, None


def dkd_terms(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor,
    *,
    temperature: float = 4.0,
    logit_stand: bool = False,
) -> dict[str, Tensor]:
    """The unweighted ``{"tckd": ..., "nckd": ...}`` terms (each T^2-scaled, batch-mean, 0-d)."""
    check_positive("temperature", temperature)
    check_bool("logit_stand", logit_stand)
    s, t = prepare_logits(student_logits, teacher_logits)
    target = prepare_target(target, s)
    if logit_stand:
        s, t = standardize(s), standardize(t)
    tckd, nckd = _DKDRows.apply(s, t, target, temperature)
    return {
        "tckd": batch_mean_scaled(tckd, temperature),
        "nckd": batch_mean_scaled(nckd, temperature),
    }


def dkd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor,
    *,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
    logit_stand: bool = False,
) -> Tensor:
    """``alpha * TCKD + beta * NCKD``, a 0-d tensor (no CE, no warm-up: see ``objective.py``).

    The functional form of :class:`DKDLoss`, which holds the checks and the combination."""
    loss = DKDLoss(alpha=alpha, beta=beta, temperature=temperature, logit_stand=logit_stand)
    return loss(student_logits, teacher_logits, target)


class DKDLoss(DistillationLoss):
    """Module wrapper of :func:`dkd_loss`; hyper-parameters are validated at construction."""

    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 8.0,
        temperature: float = 4.0,
        logit_stand: bool = False,
    ) -> None:
        super().__init__()
        self.alpha = check_non_negative("alpha", alpha)
        self.beta = check_non_negative("beta", beta)
        self.temperature = check_positive("temperature", temperature)
        self.logit_stand = check_bool("logit_stand", logit_stand)

    def terms(
        self, student_logits: Tensor, teacher_logits: Tensor | SparseTeacher, target: Tensor
    ) -> dict[str, Tensor]:
        if isinstance(teacher_logits, SparseTeacher):
            raise refuse_sparse("dkd")  # the objective completes them under --sparse-approx
        return dkd_terms(
            student_logits,
            teacher_logits,
            target,
            temperature=self.temperature,
            logit_stand=self.logit_stand,
        )

    def combine(self, terms: dict[str, Tensor]) -> Tensor:
        return self.alpha * terms["tckd"] + self.beta * terms["nckd"]

    def extra_repr(self) -> str:
        return (
            f"alpha={self.alpha}, beta={self.beta}, temperature={self.temperature}, "
            f"logit_stand={self.logit_stand}"
        )
