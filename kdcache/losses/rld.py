"""RLD: refined logit distillation (Sun, Chen, Lyu, Chen, Chen & Wang, "Knowledge Distillation with
Refined Logits", arXiv:2408.07703, 2024; ICCV 2025; code zju-SWJ/RLD).

Two terms, each a KL, so that a wrong teacher never pushes the student away from the label::

    SCD = tau^2 (1/B) sum_b KL([q^t_{m_b}, 1 - q^t_{m_b}] || [q^s_{y_b}, 1 - q^s_{y_b}])
          q = softmax(z / tau), m_b = argmax_c z^t_{b,c} (first on ties), tau = alpha_temperature
    MCD = T^2 (1/B) sum_b KL(softmax_{S_b}(z^t_b / T) || softmax_{S_b}(z^s_b / T))
          S_b = {c : z^t_{b,c} < z^t_{b,y_b}}   (the label and every class the teacher ranks at or
                                                 above it, ties included, are removed)
    L_RLD = alpha * SCD + beta * MCD

A row with an empty ``S_b`` (the teacher's lowest logit is the label's) adds exactly 0 to MCD.
Matches ``rld_loss`` of zju-SWJ/RLD, whose ``masked_fill(-1e9)`` is replaced by exact masking.
Defaults alpha 1, beta 8, T 4 and ``alpha_temperature = T`` (the published runs; the repo's config
default is 1.0). Optional logit standardisation z-scores both logit sets first (then argmax and the
mask are taken on the standardised teacher, as in the official code).

Closed-form backward, with ``r`` the student softmax over ``c != y`` at tau, ``P = q^t_m``
and ``q_y = q^s_y``::

    d SCD_b / d(z^s_c / tau) = q_y - P  (c = y),   r_c (P - q_y)  (c != y)
    d MCD_b / d(z^s_c / T)   = softmax_S(z^s/T)_c - softmax_S(z^t/T)_c  (c in S_b),  0  (otherwise)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from kdcache.losses._checks import check_bool, check_non_negative, check_positive
from kdcache.losses._common import (
    MASK_FILL,
    batch_mean_scaled,
    binary_kl,
    offset_kl_forward,
    prepare_logits,
    prepare_target,
    softmax_lse,
    split_log_probs,
    standardize,
)
from kdcache.losses.base import DistillationLoss


class _RLDRows(torch.autograd.Function):
    """Per-row ``(SCD, MCD)`` (not tau^2 / T^2-scaled) with the closed-form backward above."""

    @staticmethod
    def forward(
        ctx: Any, student: Tensor, teacher: Tensor, target: Tensor, temperature: float, tau: float
    ) -> tuple[Tensor, Tensor]:
        index = target.unsqueeze(1)  # [B, 1]
        t_y = teacher.gather(1, index)  # [B, 1]
        # MCD support: classes strictly below the true class's teacher logit (on unscaled logits,
        # like the official mask). offset = 0 there, MASK_FILL elsewhere; built arithmetically
        # because bool compare + where/masked_fill is several times slower on CPU.
        offset = (teacher - t_y).sign_().add_(1.0).clamp_(max=1.0).mul_(MASK_FILL)  # [B, C]
        has_support = (offset.amax(dim=1) == 0).to(student.dtype)  # [B]
        mcd, ps, pt = offset_kl_forward(student, teacher, offset, temperature)

        top = teacher.max(dim=1).indices.unsqueeze(1)  # [B, 1], first index on ties
        v = teacher / tau  # [B, C], fresh: scattered in place
        v_m = v.gather(1, top).squeeze(1)
        lse_t_rest = torch.logsumexp(v.scatter_(1, top, MASK_FILL), dim=1)
        u = student / tau
        u_y = u.gather(1, index).squeeze(1)
        r, lse_s_rest = softmax_lse(u.scatter_(1, index, MASK_FILL))  # r: 0 at y
        lt_in, lt_out = split_log_probs(v_m, lse_t_rest)  # log P, log(1 - P)
        ls_in, ls_out = split_log_probs(u_y, lse_s_rest)  # log q_y, log(1 - q_y)
        scd = binary_kl(lt_in, lt_out, ls_in, ls_out)  # [B]

        ctx.save_for_backward(ps, pt, has_support, r, index, ls_in.exp(), lt_in.exp())
        ctx.temperatures = (temperature, tau)
        return scd, mcd * has_support

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, g_scd: Tensor, g_mcd: Tensor) -> tuple[Tensor | None, ...]:
        ps, pt, has_support, r, index, q_y, p_top = ctx.saved_tensors
        temperature, tau = ctx.temperatures
        on_mcd = (g_mcd * has_support / temperature).unsqueeze(1)  # [B, 1]
        on_r = (g_scd * (p_top - q_y) / tau).unsqueeze(1)
        grad = torch.addcmul((ps - pt) * on_mcd, r, on_r)  # [B, C]; ps, pt, r are 0 at y
        grad.scatter_(1, index, (g_scd * (q_y - p_top) / tau).unsqueeze(1))
        return grad, None, None, None, None


def rld_terms(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor,
    *,
    temperature: float = 4.0,
    alpha_temperature: float | None = None,
    logit_stand: bool = False,
) -> dict[str, Tensor]:
    """The unweighted ``{"scd": ..., "mcd": ...}`` terms (each tau^2 / T^2-scaled, batch-mean).

    ``alpha_temperature=None`` means "same as ``temperature``".
    """
    check_positive("temperature", temperature)
    tau = temperature if alpha_temperature is None else alpha_temperature
    check_positive("alpha_temperature", tau)
    check_bool("logit_stand", logit_stand)
    s, t = prepare_logits(student_logits, teacher_logits)
    target = prepare_target(target, s)
    if logit_stand:
        s, t = standardize(s), standardize(t)
    scd, mcd = _RLDRows.apply(s, t, target, temperature, tau)
    return {"scd": batch_mean_scaled(scd, tau), "mcd": batch_mean_scaled(mcd, temperature)}


def rld_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor,
    *,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
    alpha_temperature: float | None = None,
    logit_stand: bool = False,
) -> Tensor:
    """``alpha * SCD + beta * MCD``, a 0-d tensor (no CE, no warm-up: see ``objective.py``)."""
    check_non_negative("alpha", alpha)
    check_non_negative("beta", beta)
    terms = rld_terms(
        student_logits,
        teacher_logits,
        target,
        temperature=temperature,
        alpha_temperature=alpha_temperature,
        logit_stand=logit_stand,
    )
    return alpha * terms["scd"] + beta * terms["mcd"]


class RLDLoss(DistillationLoss):
    """Module wrapper of :func:`rld_loss`; hyper-parameters are validated at construction."""

    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 8.0,
        temperature: float = 4.0,
        alpha_temperature: float | None = None,
        logit_stand: bool = False,
    ) -> None:
        super().__init__()
        self.alpha = check_non_negative("alpha", alpha)
        self.beta = check_non_negative("beta", beta)
        self.temperature = check_positive("temperature", temperature)
        self.alpha_temperature = (
            None
            if alpha_temperature is None
            else check_positive("alpha_temperature", alpha_temperature)
        )
        self.logit_stand = check_bool("logit_stand", logit_stand)

    def terms(
        self, student_logits: Tensor, teacher_logits: Tensor, target: Tensor
    ) -> dict[str, Tensor]:
        return rld_terms(
            student_logits,
            teacher_logits,
            target,
            temperature=self.temperature,
            alpha_temperature=self.alpha_temperature,
            logit_stand=self.logit_stand,
        )

    def combine(self, terms: dict[str, Tensor]) -> Tensor:
        return self.alpha * terms["scd"] + self.beta * terms["mcd"]

    def extra_repr(self) -> str:
        tau = self.temperature if self.alpha_temperature is None else self.alpha_temperature
        return (
            f"alpha={self.alpha}, beta={self.beta}, temperature={self.temperature}, "
            f"alpha_temperature={tau}, logit_stand={self.logit_stand}"
        )
