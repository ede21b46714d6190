"""KD: classical knowledge distillation (Hinton, Vinyals & Dean 2015, arXiv:1503.02531).

    L_KD = T^2 * (1/B) sum_b KL( softmax(z^t_b / T) || softmax(z^s_b / T) )

Matches ``kd_loss`` of mdistiller (as forked in zju-SWJ/RLD), including its optional logit
standardisation (both logit sets z-scored per row first; the official ``--logit-stand`` runs use
T = 2). The CIFAR objective weights it 0.9 beside 0.1 x cross-entropy (see ``objective.py``).
"""

from __future__ import annotations

from torch import Tensor

from kdcache.errors import ConfigError
from kdcache.losses._checks import check_bool, check_positive
from kdcache.losses._common import (
    batch_mean_scaled,
    kl_rows,
    prepare_logits,
    prepare_target,
    standardize,
)
from kdcache.losses.base import DistillationLoss
from kdcache.losses.sparse import SparseTeacher, sparse_kd_loss


def kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor | None = None,
    *,
    temperature: float = 4.0,
    logit_stand: bool = False,
) -> Tensor:
    """Hinton KD loss, a 0-d tensor.

    Args:
        student_logits: ``[B, C]``.
        teacher_logits: ``[B, C]`` (float16 from a cache is fine: upcast here; never gets gradient).
        target: ``[B]`` labels; unused by KD, accepted for a uniform loss signature.
        temperature: T > 0.
        logit_stand: z-score both logit sets per row before the softmax (Sun et al. 2024).
    """
    check_positive("temperature", temperature)
    check_bool("logit_stand", logit_stand)
    s, t = prepare_logits(student_logits, teacher_logits)
    if target is not None:
        prepare_target(target, s)  # validated for a uniform contract, not used
    if logit_stand:
        s, t = standardize(s), standardize(t)
    return batch_mean_scaled(kl_rows(s / temperature, t / temperature), temperature)


class KDLoss(DistillationLoss):
    """Module wrapper of :func:`kd_loss`; hyper-parameters are validated at construction."""

    def __init__(self, temperature: float = 4.0, logit_stand: bool = False) -> None:
        super().__init__()
        self.temperature = check_positive("temperature", temperature)
        self.logit_stand = check_bool("logit_stand", logit_stand)

    def terms(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor | SparseTeacher,
        target: Tensor | None = None,
    ) -> dict[str, Tensor]:
        if isinstance(teacher_logits, SparseTeacher):
            if self.logit_stand:
                raise ConfigError(
                    "kd with logit_stand=true needs every teacher logit (standardising divides by "
                    "each row's std, a temperature the sparse cache did not record): train it "
                    "from a dense cache"
                )
            kd = sparse_kd_loss(
                student_logits, teacher_logits, target, temperature=self.temperature
            )
            return {"kd": kd}
        kd = kd_loss(
            student_logits,
            teacher_logits,
            target,
            temperature=self.temperature,
            logit_stand=self.logit_stand,
        )
        return {"kd": kd}

    def combine(self, terms: dict[str, Tensor]) -> Tensor:
        return terms["kd"]

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, logit_stand={self.logit_stand}"
