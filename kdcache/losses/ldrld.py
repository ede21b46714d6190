"""LDRLD: local dense relational logit distillation (Xu, Liu, Liu, Wang, Xu & Cheng, "Local Dense
Logit Relations for Enhanced Knowledge Distillation", ICCV 2025, arXiv:2507.15911; code
yema-web/LDRLD, ``selective_softmax_loss``).

Take the top-k classes ``pi_b`` of each row, ranked by the **student** logits (what the official
code does and what produced the paper's numbers; ``rank_by="teacher"`` is an option). With
``KL_I = T^2 (1/B) sum_b KL(softmax_I(z^t_b / T) || softmax_I(z^s_b / T))`` over a class set ``I``::

    w_ij  = a exp(-gamma (r_i + r_j)) / (b + |r_i - r_j|)     ADW on 1-based ranks r = i + 1
    L_LDR = ( sum_{i<j} w_ij KL_{pi_i, pi_j} + w_full KL_{pi} ) / (C(k,2) + 1)
    L_RNTK = KL over the classes outside the top-k          (not divided by C(k,2) + 1)
    L_LDRLD = alpha * L_LDR + beta * L_RNTK

``w_full = 1``, except at k = 2 where the official "full group" is itself the pair (0, 1) and gets
``w_01``. The official code loops over C(k,2) + 1 full-width ``[B, C]`` softmaxes with a ``-1000``
mask; here every pair is a 2-class softmax of the gathered ``[B, k]`` logits, i.e. a sigmoid of a
logit difference, computed for all pairs at once (``[B, C(k,2)]``). The labels are never used.
Published CIFAR setting (resnet32x4 -> resnet8x4): k 7, T 4, alpha 10.5, beta 7, CE 1, no warm-up.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from kdcache.errors import ConfigError
from kdcache.losses._checks import check_non_negative, check_positive
from kdcache.losses._common import (
    batch_mean_scaled,
    binary_kl,
    kl_rows,
    masked_kl,
    prepare_logits,
    prepare_target,
)
from kdcache.losses.base import DistillationLoss
from kdcache.losses.sparse import SparseTeacher, refuse_sparse

RANK_BY = ("student", "teacher")


def adw_weight(i: int, j: int, *, a: float = 2.0, b: float = 1.5, gamma: float = 0.05) -> float:
    """Adaptive decay weight of the 0-based rank positions (i, j); the ranks are ``i+1, j+1``."""
    return a * math.exp(-gamma * ((i + 1) + (j + 1))) / (b + abs(i - j))


@functools.lru_cache(maxsize=64)
def _pair_table(
    k: int, a: float, b: float, gamma: float, dtype: torch.dtype, device: torch.device
) -> tuple[Tensor, Tensor, Tensor, float]:
    """Pair positions ``i [P]``, ``j [P]`` (lexicographic, i < j), weights ``w [P]``, ``w_full``."""
    ij = torch.triu_indices(k, k, offset=1)  # [2, P], row-major = itertools.combinations order
    weights = [adw_weight(i, j, a=a, b=b, gamma=gamma) for i, j in ij.t().tolist()]
    w_full = weights[0] if k == 2 else 1.0
    return (
        ij[0].to(device),
        ij[1].to(device),
        torch.tensor(weights, dtype=dtype, device=device),
        w_full,
    )


def check_k(k: int) -> int:
    """Raise :class:`ConfigError` unless ``k`` is an integer >= 2."""
    if not isinstance(k, int) or isinstance(k, bool) or k < 2:
        raise ConfigError(f"k must be an integer >= 2 (and <= the number of classes), got {k!r}")
    return k


def check_rank_by(rank_by: str) -> str:
    """Raise :class:`ConfigError` unless ``rank_by`` names a ranking side."""
    if rank_by not in RANK_BY:
        raise ConfigError(f"rank_by must be one of {', '.join(RANK_BY)}; got {rank_by!r}")
    return rank_by


def ldrld_terms(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor | None = None,
    *,
    k: int = 7,
    temperature: float = 4.0,
    rank_by: str = "student",
    a: float = 2.0,
    b: float = 1.5,
    gamma: float = 0.05,
) -> dict[str, Tensor]:
    """The unweighted ``{"ldr": L_LDR, "rntk": L_RNTK}`` terms (T^2-scaled, batch-mean, 0-d).

    Raises:
        ConfigError: invalid hyper-parameters, or ``k`` larger than the number of classes.
    """
    check_k(k)
    check_positive("temperature", temperature)
    check_rank_by(rank_by)
    check_positive("a", a)
    check_positive("b", b)
    check_non_negative("gamma", gamma)
    s, t = prepare_logits(student_logits, teacher_logits)
    if target is not None:
        prepare_target(target, s)  # validated for a uniform contract; LDRLD ignores labels
    num_classes = s.shape[1]
    if k > num_classes:
        raise ConfigError(f"k must be <= the number of classes ({num_classes}), got k = {k}")

    ranker = s if rank_by == "student" else t
    top = ranker.detach().topk(k, dim=1, largest=True, sorted=True).indices  # [B, k]
    zs = s.gather(1, top) / temperature  # [B, k]
    zt = t.gather(1, top) / temperature  # [B, k]

    # All pairs at once: softmax(z_i, z_j) = (sigmoid(d), sigmoid(-d)) with d = z_i - z_j.
    pos_i, pos_j, w_pairs, w_full = _pair_table(k, a, b, gamma, s.dtype, s.device)
    ds = zs[:, pos_i] - zs[:, pos_j]  # [B, P]
    dt = zt[:, pos_i] - zt[:, pos_j]  # [B, P]
    pair_kl = binary_kl(F.logsigmoid(dt), F.logsigmoid(-dt), F.logsigmoid(ds), F.logsigmoid(-ds))
    full_kl = kl_rows(zs, zt)  # [B]
    groups = w_pairs.shape[0] + 1
    ldr_rows = (pair_kl @ w_pairs + w_full * full_kl) / groups  # [B]

    outside = torch.ones_like(s).scatter_(1, top, 0.0)  # [B, C], 1 outside the top-k
    rntk_rows = masked_kl(s, t, outside, temperature)  # [B]; k = C leaves nothing: exactly 0

    return {
        "ldr": batch_mean_scaled(ldr_rows, temperature),
        "rntk": batch_mean_scaled(rntk_rows, temperature),
    }


def ldrld_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor | None = None,
    *,
    alpha: float = 10.5,
    beta: float = 7.0,
    k: int = 7,
    temperature: float = 4.0,
    rank_by: str = "student",
    a: float = 2.0,
    b: float = 1.5,
    gamma: float = 0.05,
) -> Tensor:
    """``alpha * L_LDR + beta * L_RNTK``, a 0-d tensor (no CE: see ``objective.py``).

    The functional form of :class:`LDRLDLoss`, which holds the checks and the combination."""
    loss = LDRLDLoss(alpha=alpha, beta=beta, k=k, temperature=temperature, rank_by=rank_by,
                     a=a, b=b, gamma=gamma)  # fmt: skip
    return loss(student_logits, teacher_logits, target)


class LDRLDLoss(DistillationLoss):
    """Module wrapper of :func:`ldrld_loss`; hyper-parameters are validated at construction
    (``k`` against the class count at the first call)."""

    def __init__(
        self,
        alpha: float = 10.5,
        beta: float = 7.0,
        k: int = 7,
        temperature: float = 4.0,
        rank_by: str = "student",
        a: float = 2.0,
        b: float = 1.5,
        gamma: float = 0.05,
    ) -> None:
        super().__init__()
        self.alpha = check_non_negative("alpha", alpha)
        self.beta = check_non_negative("beta", beta)
        self.k = check_k(k)
        self.temperature = check_positive("temperature", temperature)
        self.rank_by = check_rank_by(rank_by)
        self.a = check_positive("a", a)
        self.b = check_positive("b", b)
        self.gamma = check_non_negative("gamma", gamma)

    def terms(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor | SparseTeacher,
        target: Tensor | None = None,
    ) -> dict[str, Tensor]:
        if isinstance(teacher_logits, SparseTeacher):
            raise refuse_sparse("ldrld")  # the objective completes them under --sparse-approx
        return ldrld_terms(
            student_logits,
            teacher_logits,
            target,
            k=self.k,
            temperature=self.temperature,
            rank_by=self.rank_by,
            a=self.a,
            b=self.b,
            gamma=self.gamma,
        )

    def combine(self, terms: dict[str, Tensor]) -> Tensor:
        return self.alpha * terms["ldr"] + self.beta * terms["rntk"]

    def extra_repr(self) -> str:
        return (
            f"alpha={self.alpha}, beta={self.beta}, k={self.k}, temperature={self.temperature}, "
            f"rank_by={self.rank_by!r}, a={self.a}, b={self.b}, gamma={self.gamma}"
        )
