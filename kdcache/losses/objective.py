"""The training objective: cross-entropy plus a weighted, warmed-up distillation term.

    total = ce_weight * CE(s, y) + warmup(epoch) * distill_weight * L_method(s, t, y)
    warmup(epoch) = min(epoch / warmup_epochs, 1)       (1 when warmup_epochs = 0)

Defaults per method (the papers' CIFAR-100 runs; see ``docs/losses.md``):

========  =========  ==============  =======================================
method    ce_weight  distill_weight  warmup_epochs
========  =========  ==============  =======================================
ce        1          -               - (no teacher)
kd        0.1        0.9             0
dkd       1          1               20 (CIFAR; the ImageNet configs use 1)
rld       1          1               20 (CIFAR; the ImageNet configs use 1)
ldrld     1          1               0
========  =========  ==============  =======================================

The method's own weights (DKD/RLD ``alpha``/``beta``, LDRLD ``alpha`` 10.5 / ``beta`` 7) live in the
loss. ``epoch`` counts from 1 during the first epoch, as in mdistiller (whose trainer passes
``epoch = 1, 2, ...``), so the DKD/RLD factor is 1/20 in the first epoch; a fractional epoch
(``epoch - 1 + step / steps_per_epoch`` ...) gives a per-step ramp if the caller wants one.
"""

from __future__ import annotations

import difflib
import logging
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdcache.errors import ConfigError, UnknownNameError
from kdcache.losses._checks import check_non_negative
from kdcache.losses._common import prepare_target
from kdcache.losses.base import DistillationLoss
from kdcache.losses.mixed import MIXABLE_LOSSES, MixedTarget, mixed_cross_entropy, refuse_mixed
from kdcache.losses.registry import check_hparams, create_loss, list_losses, loss_info
from kdcache.losses.sparse import (
    APPROXIMATIONS,
    SparseTeacher,
    refuse_sparse,
    uniform_tail_teacher,
)

log = logging.getLogger(__name__)

CE_ONLY = "ce"


def list_objectives() -> list[str]:
    """``"ce"`` (no teacher) followed by every registered distillation loss."""
    return [CE_ONLY, *list_losses()]


def unknown_objective(name: str) -> UnknownNameError:
    """The error for a ``--loss`` nothing knows: every choice, ``ce`` included, and close ones."""
    choices = list_objectives()
    close = difflib.get_close_matches(name.lower(), choices, n=2, cutoff=0.5)
    hint = f" Did you mean {' or '.join(close)}?" if close else ""
    return UnknownNameError(f"unknown loss {name!r}; choose one of {', '.join(choices)}.{hint}")


class Objective(nn.Module):
    """``forward(student_logits, teacher_logits | None, target, epoch) -> (total, parts)``.

    ``parts`` maps ``"ce"`` (unweighted cross-entropy), each of the loss's unweighted terms (e.g.
    ``"tckd"``, ``"nckd"``), ``"distill"`` (the weighted, warmed-up distillation term) and
    ``"warmup"`` (the factor) to detached 0-d tensors, for logging. ``total`` carries the graph.
    """

    def __init__(
        self,
        name: str,
        loss: DistillationLoss | None,
        *,
        ce_weight: float,
        distill_weight: float,
        warmup_epochs: float,
        sparse_approx: bool = False,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        self.name = name
        self.loss = loss
        # Sparse (top-K) teacher rows: KD is exact from them; the other losses only through the
        # named uniform-tail approximation, and only when asked for (never silently).
        self.sparse_approx = sparse_approx
        self._warned_approx = False
        self.ce_weight = check_non_negative("ce_weight", ce_weight)
        self.distill_weight = check_non_negative("distill_weight", distill_weight)
        self.warmup_epochs = check_non_negative("warmup_epochs", warmup_epochs)
        if not 0 <= label_smoothing < 1:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        # Of the CE term only (timm's --smoothing): the distillation term keeps the teacher's
        # distribution as its target.
        self.label_smoothing = float(label_smoothing)

    @property
    def requires_teacher(self) -> bool:
        """False only for the plain cross-entropy objective."""
        return self.loss is not None

    def warmup_factor(self, epoch: float) -> float:
        """``min(epoch / warmup_epochs, 1)``, or 1 without warm-up."""
        if not math.isfinite(epoch) or epoch < 0:
            raise ValueError(f"epoch must be a finite number >= 0, got {epoch!r}")
        if self.warmup_epochs == 0:
            return 1.0
        return min(epoch / self.warmup_epochs, 1.0)

    def forward(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor | SparseTeacher | None,
        target: Tensor,
        epoch: float | None = None,
        mix: MixedTarget | None = None,
        *,
        warmup: float | Tensor | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """``warmup``: the distillation term's warm-up factor (a float, or a 0-d tensor on the
        logits' device, which a compiled step takes without recompiling); or give ``epoch`` (1
        during the first epoch) and the factor is :meth:`warmup_factor` of it; neither: 1.
        ``mix``: mixed views' partner labels and lambdas (cross-entropy against the mixed
        target, :mod:`kdcache.losses.mixed`); losses without a mixed-target definition refuse."""
        if warmup is not None and epoch is not None:
            raise ConfigError("give the objective warmup= or epoch=, not both")
        dtype = torch.float64 if student_logits.dtype == torch.float64 else torch.float32
        student = student_logits.to(dtype)  # [B, C]
        target = prepare_target(target, student)
        if mix is None:
            ce = F.cross_entropy(student, target, label_smoothing=self.label_smoothing)
        else:
            if self.loss is not None and self.name not in MIXABLE_LOSSES:
                raise refuse_mixed(self.name)
            ce = mixed_cross_entropy(student, target, mix, self.label_smoothing)
        total = self.ce_weight * ce
        parts = {"ce": ce.detach()}
        if self.loss is None:
            return total, parts
        if teacher_logits is None:
            raise ConfigError(
                f"loss {self.name!r} needs teacher logits (a cache or a live teacher); "
                f"use loss {CE_ONLY!r} to train without a teacher"
            )
        if isinstance(teacher_logits, SparseTeacher) and loss_info(self.name).needs_dense_teacher:
            teacher_logits = self._complete_sparse(teacher_logits, target)
        terms = self.loss.terms(student, teacher_logits, target)
        factor = self.warmup_factor(1.0 if epoch is None else epoch) if warmup is None else warmup
        distill = (factor * self.distill_weight) * self.loss.combine(terms)
        parts.update({key: value.detach() for key, value in terms.items()})
        parts["distill"] = distill.detach()
        # Made on the logits' device: no host-to-device copy per step.
        parts["warmup"] = (
            factor.detach().to(dtype) if isinstance(factor, Tensor)
            else torch.full((), factor, dtype=dtype, device=student.device)
        )  # fmt: skip
        return total + distill, parts

    def _complete_sparse(self, teacher: SparseTeacher, target: Tensor) -> Tensor:
        if not self.sparse_approx:
            raise refuse_sparse(self.name)
        if getattr(self.loss, "logit_stand", False):
            raise ConfigError(
                f"{self.name} with logit_stand=true cannot train from a sparse cache, even "
                "approximately: standardising needs every logit. Use a dense cache."
            )
        if not self._warned_approx:
            log.warning("sparse-approx %s: %s", self.name, APPROXIMATIONS[self.name])
            self._warned_approx = True
        temperature = float(getattr(self.loss, "temperature", 1.0))
        return uniform_tail_teacher(teacher, target, temperature)

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, ce_weight={self.ce_weight}, "
            f"distill_weight={self.distill_weight}, warmup_epochs={self.warmup_epochs}, "
            f"label_smoothing={self.label_smoothing}"
        )


def build_objective(
    loss_name: str,
    warmup_epochs: float | None = None,
    *,
    ce_weight: float | None = None,
    distill_weight: float | None = None,
    sparse_approx: bool = False,
    label_smoothing: float = 0.0,
    **hparams: Any,
) -> Objective:
    """The objective of ``loss_name`` (``"ce"`` or a registered loss) with the method's defaults.

    Args:
        loss_name: ``"ce"``, ``"kd"``, ``"dkd"``, ``"rld"`` or ``"ldrld"``.
        warmup_epochs: linear warm-up length of the distillation term; None = the method's default
            (20 for DKD/RLD, the CIFAR setting; pass 1 for their ImageNet setting; 0 = none).
        ce_weight: weight of the cross-entropy term; None = the method's default.
        distill_weight: outer weight of the distillation term; None = the method's default
            (0.9 for KD, 1 otherwise).
        sparse_approx: allow DKD, RLD and LDRLD to train from sparse (top-K) teacher rows through
            the uniform-tail completion (:func:`kdcache.losses.sparse.uniform_tail_teacher`);
            without it they refuse sparse rows. KD is exact from sparse rows either way.
        label_smoothing: label smoothing of the cross-entropy term (``F.cross_entropy``'s).
        **hparams: the loss's own hyper-parameters (``temperature``, ``alpha``, ``k`` ...).

    Raises:
        UnknownNameError: unknown ``loss_name``.
        ConfigError: unknown or invalid hyper-parameter, naming it and the allowed range.
    """
    if loss_name == CE_ONLY:
        if hparams or distill_weight is not None:
            extra = sorted(hparams) + (["distill_weight"] if distill_weight is not None else [])
            raise ConfigError(
                f"loss 'ce' takes no distillation hyper-parameters, got {', '.join(extra)}"
            )
        return Objective(
            CE_ONLY,
            None,
            ce_weight=1.0 if ce_weight is None else ce_weight,
            distill_weight=0.0,
            warmup_epochs=0.0 if warmup_epochs is None else warmup_epochs,
            label_smoothing=label_smoothing,
        )
    if loss_name not in list_objectives():
        raise unknown_objective(loss_name)
    info = loss_info(loss_name)
    check_hparams(loss_name, hparams)
    return Objective(
        loss_name,
        create_loss(loss_name, **hparams),
        ce_weight=info.ce_weight if ce_weight is None else ce_weight,
        distill_weight=info.distill_weight if distill_weight is None else distill_weight,
        warmup_epochs=info.warmup_epochs if warmup_epochs is None else warmup_epochs,
        sparse_approx=sparse_approx,
        label_smoothing=label_smoothing,
    )
