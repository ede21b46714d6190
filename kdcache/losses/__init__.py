"""Distillation losses (KD, DKD, RLD, LDRLD), their registry and the training objective.

Each loss is a pure function ``xxx_loss(student_logits [B, C], teacher_logits [B, C], target [B],
*, hparams) -> 0-d tensor`` beside a thin module (``create_loss(name, **hparams)``). Formulas,
papers and published settings: ``docs/losses.md``.
"""

from kdcache.losses.base import DistillationLoss
from kdcache.losses.dkd import DKDLoss, dkd_loss, dkd_terms
from kdcache.losses.kd import KDLoss, kd_loss
from kdcache.losses.ldrld import LDRLDLoss, ldrld_loss, ldrld_terms
from kdcache.losses.objective import Objective, build_objective, list_objectives
from kdcache.losses.registry import LossInfo, create_loss, list_losses, loss_info
from kdcache.losses.rld import RLDLoss, rld_loss, rld_terms

__all__ = [
    "DKDLoss",
    "DistillationLoss",
    "KDLoss",
    "LDRLDLoss",
    "LossInfo",
    "Objective",
    "RLDLoss",
    "build_objective",
    "create_loss",
    "dkd_loss",
    "dkd_terms",
    "kd_loss",
    "ldrld_loss",
    "ldrld_terms",
    "list_losses",
    "list_objectives",
    "loss_info",
    "rld_loss",
    "rld_terms",
]
