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

With ``alpha_temperature == temperature`` the rows are computed from one softmax per side
(``_RLDSharedRows``, docs/losses.md); otherwise from four (``_RLDRows``).

Closed-form backward, with ``r`` the student softmax over ``c != y`` at tau, ``P = q^t_m``
and ``q_y = q^s_y``::

    d SCD_b / d(z^s_c / tau) = q_y - P  (c = y),   r_c (P - q_y)  (c != y)
    d MCD_b / d(z^s_c / T)   = softmax_S(z^s/T)_c - softmax_S(z^t/T)_c  (c in S_b),  0  (otherwise)
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
    exclusion_offset,
    offset_kl_forward,
    prepare_logits,
    prepare_target,
    softmax_lse,
    split_log_probs,
    standardize,
)
from kdcache.losses.base import DistillationLoss
from kdcache.losses.sparse import SparseTeacher, refuse_sparse

# Below this, the teacher's mass outside its arg-max, taken as ``sum - max``, has lost too many
# digits to cancellation (float32: ~1e-5 relative at 1e-2); such rows are recomputed exactly.
REST_MIN = 1e-2


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


class _RLDSharedRows(torch.autograd.Function):
    """``_RLDRows`` for ``alpha_temperature == temperature`` (the published setting), faster.

    With one temperature both terms come from one full softmax per side, ``q^s = softmax(s/T)``
    and ``q^t = softmax(t/T)``: SCD needs ``q^s_y``, ``q^t_m`` and the masses of the other
    classes, and MCD's softmaxes over ``S`` are the full ones renormalised,
    ``softmax_S(z/T) = q * 1_S / sum_S q``, since ``y`` and ``m`` are never in ``S``. That is two
    softmaxes instead of four plus a log-sum-exp, and no arg-max: ``q^t_m`` is the largest
    probability, and the teacher's other mass is ``sum_c q^t_c - q^t_m``.

    These shortcuts lose precision in rare rows, which are recomputed exactly (the ``_RLDRows``
    way, on those rows only): where ``sum - q^t_m`` cancels (``< REST_MIN``: a teacher sure of its
    arg-max), and where a probability the shortcuts divide by or take the log of is too small to
    be accurate (``q^s_y``, the student's other mass, or either side's mass on ``S``: the logit
    scale of 100+ that the contract tests use).
    """

    @staticmethod
    def forward(
        ctx: Any, student: Tensor, teacher: Tensor, target: Tensor, temperature: float
    ) -> tuple[Tensor, Tensor]:
        index = target.unsqueeze(1)  # [B, 1]
        # 1 on S = {c : t_c < t_y}, else 0; arithmetic because bool compares are slow on CPU.
        keep = (teacher.gather(1, index) - teacher).sign_().clamp_(min=0.0)  # [B, C]
        has_support = keep.sum(dim=1, keepdim=True) > 0  # [B, 1]
        u = student / temperature  # [B, C]
        v = teacher / temperature
        qs = F.softmax(u, dim=1)
        qt = F.softmax(v, dim=1)
        # Teacher (SCD): log q^t_m, log(1 - q^t_m), and lse(v) for MCD.
        p_top = qt.amax(dim=1, keepdim=True)  # [B, 1]; the fused kernel's exp(0) / sum, exact
        lt_in = p_top.log()
        rest_t = qt.sum(dim=1, keepdim=True) - p_top  # cancels when p_top ~ 1: see REST_MIN
        lt_out = rest_t.log()
        lse_t = v.amax(dim=1, keepdim=True) - lt_in
        # Student (SCD): q^s_y, the mass of the others (exact: summed with y zeroed), and the log
        # of qs's normaliser, lse(u); qs then holds the student probabilities of c != y.
        q_y = qs.gather(1, index)
        qs.scatter_(1, index, 0.0)
        rest_s = qs.sum(dim=1, keepdim=True)
        ls_in, ls_out = q_y.log(), rest_s.log()
        lse_s = u.gather(1, index) - ls_in

        tiny = _underflow_floor(student.dtype, student.shape[1])
        redo_teacher = (rest_t < REST_MIN).squeeze(1).nonzero().squeeze(1)
        if redo_teacher.numel():
            lt_in[redo_teacher], lt_out[redo_teacher] = _exact_binary_logs(
                v[redo_teacher], v[redo_teacher].argmax(dim=1, keepdim=True)
            )
        redo_student = ((q_y < tiny) | (rest_s < tiny)).squeeze(1).nonzero().squeeze(1)
        if redo_student.numel():
            # qs becomes the softmax over c != y, normalised by lse_s = lse_{c != y}(u).
            rows, at = redo_student, index[redo_student]
            r, lse_rest = softmax_lse(u[rows].scatter(1, at, MASK_FILL))
            qs[rows], rest_s[rows] = r, 1.0
            log_in, log_out = split_log_probs(u[rows].gather(1, at).squeeze(1), lse_rest)
            ls_in[rows], ls_out[rows] = log_in.unsqueeze(1), log_out.unsqueeze(1)
            lse_s[rows], q_y[rows] = lse_rest.unsqueeze(1), log_in.exp().unsqueeze(1)
        scd = binary_kl(lt_in, lt_out, ls_in, ls_out).squeeze(1)  # [B]

        # MCD = sum_S p^t (v - u) - lse_S(v) + lse_S(u), lse_S(z) = lse(z) + log(mass of q on S).
        ws = qs * keep  # [B, C]; unnormalised softmax_S(u)
        wt = qt.mul_(keep)  # unnormalised softmax_S(v)
        # An empty S (no support) has zero masses: 1 instead keeps 0 / 0 out of the gradient.
        zs = ws.sum(dim=1, keepdim=True).masked_fill_(~has_support, 1.0)  # [B, 1]
        zt = wt.sum(dim=1, keepdim=True).masked_fill_(~has_support, 1.0)
        cross = v.sub_(u).mul_(wt).sum(dim=1, keepdim=True)
        mcd = cross / zt + (lse_s - lse_t) + (zs / zt).log()  # [B, 1]
        redo_mcd = ((zs < tiny) | (zt < tiny)).squeeze(1).nonzero().squeeze(1)
        if redo_mcd.numel():
            rows = redo_mcd
            offset = exclusion_offset(keep[rows], student.dtype)
            kl, ws[rows], wt[rows] = offset_kl_forward(
                student[rows], teacher[rows], offset, temperature
            )
            mcd[rows], zs[rows], zt[rows] = kl.unsqueeze(1), 1.0, 1.0
        mcd = mcd.masked_fill_(~has_support, 0.0).squeeze(1)

        ctx.save_for_backward(ws, wt, qs, index, zs, zt, rest_s, q_y, p_top, has_support)
        ctx.temperature = temperature
        return scd, mcd

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, g_scd: Tensor, g_mcd: Tensor) -> tuple[Tensor | None, ...]:
        ws, wt, qs, index, zs, zt, rest_s, q_y, p_top, has_support = ctx.saved_tensors
        temperature = ctx.temperature
        on_mcd = (g_mcd.unsqueeze(1) / temperature).masked_fill_(~has_support, 0.0)  # [B, 1]
        on_y = g_scd.unsqueeze(1) * (p_top - q_y) / temperature
        # (softmax_S(u) - softmax_S(v)) on_mcd + r (P - q_y) / T, with r = qs / rest_s.
        grad = torch.mul(ws, on_mcd / zs).addcmul_(wt, -on_mcd / zt).addcmul_(qs, on_y / rest_s)
        return grad.scatter_(1, index, -on_y), None, None, None


def _underflow_floor(dtype: torch.dtype, classes: int) -> float:
    """Masses below this may hold subnormal probabilities (relative error above eps): redo."""
    info = torch.finfo(dtype)
    return info.tiny * classes / info.eps


def _exact_binary_logs(v: Tensor, top: Tensor) -> tuple[Tensor, Tensor]:
    """``(log q_top, log(1 - q_top))`` [R, 1] of ``softmax(v)`` from log-sum-exps (no cancel)."""
    v_top = v.gather(1, top).squeeze(1)
    lse_rest = torch.logsumexp(v.scatter(1, top, MASK_FILL), dim=1)
    log_in, log_out = split_log_probs(v_top, lse_rest)
    return log_in.unsqueeze(1), log_out.unsqueeze(1)


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
    if tau == temperature:
        scd, mcd = _RLDSharedRows.apply(s, t, target, temperature)
    else:
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
    """``alpha * SCD + beta * MCD``, a 0-d tensor (no CE, no warm-up: see ``objective.py``).

    The functional form of :class:`RLDLoss`, which holds the checks and the combination."""
    loss = RLDLoss(alpha=alpha, beta=beta, temperature=temperature,
                   alpha_temperature=alpha_temperature, logit_stand=logit_stand)  # fmt: skip
    return loss(student_logits, teacher_logits, target)


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
        self, student_logits: Tensor, teacher_logits: Tensor | SparseTeacher, target: Tensor
    ) -> dict[str, Tensor]:
        if isinstance(teacher_logits, SparseTeacher):
            raise refuse_sparse("rld")  # the objective completes them under --sparse-approx
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
