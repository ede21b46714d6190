"""Losses on mixed views (``<base>+mixup`` / ``+cutmix``): the mixed label target, and which
distillation losses have a definition for it.

A mixed view of sample i with partner j and effective lambda ``lam`` (kdcache.augment.mix) has the
label target ``lam * onehot(y_i) + (1 - lam) * onehot(y_j)`` (Zhang et al. 2018; Yun et al. 2019;
timm's ``mixup_target``), so the cross-entropy is ``lam * CE(s, y_i) + (1 - lam) * CE(s, y_j)``
per row, batch-averaged. The teacher's logits are those of the mixed image itself, so a
distillation term that reads only the two logit vectors is unchanged:

- **KD** (``T^2 KL(p_t || p_s)``) and **LDRLD** (pairs and RNTK over classes ranked by the logits)
  never read the label: unchanged.
- **DKD** and **RLD** read the label *inside* their distillation terms (DKD splits the classes into
  the target class and the rest; RLD's SCD takes the student's probability at the label and its MCD
  masks the classes the teacher ranks at or above the label). A mixed view has two labels with
  weights, and neither paper defines the split for it; the variants suggested since (e.g. a
  lambda-weighted TCKD over both labels) have no published results to check an implementation
  against. So they are **refused** on mixed views, with a message, rather than silently given a
  definition nobody has validated.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from kdcache.errors import ConfigError

# Distillation losses whose terms never read the label, so mixed views change nothing in them.
MIXABLE_LOSSES = frozenset({"kd", "ldrld"})
# Losses that read the label inside their distillation terms: no mixed-target definition.
LABEL_BOUND_LOSSES = frozenset({"dkd", "rld"})


class MixedTarget(NamedTuple):
    """The second half of a mixed label target, on the loss's device."""

    partner_labels: Tensor  # int64 [B]: y_j
    lam: Tensor  # float32 [B]: the weight of y_i (the batch's own labels)


def refuse_mixed(loss: str, recipe: str = "a mixed recipe") -> ConfigError:
    return ConfigError(
        f"loss {loss!r} has no definition for mixed views ({recipe}): its distillation terms "
        "split the classes by the one true label, and a mixed view has two. Use kd or ldrld "
        "(or ce), or a recipe without +mixup/+cutmix."
    )


def check_mixed_loss(loss: str, recipe: str) -> None:
    """Refuse, before a run starts, a loss that has no mixed-target definition."""
    if "+" in recipe and loss != "ce" and loss not in MIXABLE_LOSSES:
        raise refuse_mixed(loss, recipe)


def mixed_cross_entropy(
    student_logits: Tensor, labels: Tensor, mix: MixedTarget, label_smoothing: float = 0.0
) -> Tensor:
    """``mean_b(lam_b * CE(s_b, y_b) + (1 - lam_b) * CE(s_b, y'_b))``: the cross-entropy against
    the soft target ``lam * onehot(y) + (1 - lam) * onehot(y')``. ``student_logits`` [B, C].

    With ``label_smoothing`` e, each label's target is smoothed first, as ``F.cross_entropy``
    does it (``(1 - e) * onehot + e / C``), then mixed (timm's order); since the smoothing is linear
    this is ``(1 - e) * mixed CE + e * mean_c(-log p_c)``."""
    logp = F.log_softmax(student_logits, dim=1)  # [B, C]
    lam = mix.lam.to(logp.dtype)
    own = logp.gather(1, labels.long()[:, None])[:, 0]
    other = logp.gather(1, mix.partner_labels.long()[:, None])[:, 0]
    per_row = -(lam * own + (1 - lam) * other)  # [B]
    if label_smoothing:
        per_row = (1 - label_smoothing) * per_row - label_smoothing * logp.mean(dim=1)
    return per_row.mean()


def soft_targets(labels: Tensor, mix: MixedTarget | None, num_classes: int) -> Tensor:
    """float32 [B, C] label targets: one-hot of ``labels``, mixed with the partners' by lambda."""
    own = F.one_hot(labels.long(), num_classes).to(torch.float32)
    if mix is None:
        return own
    lam = mix.lam.to(torch.float32)[:, None]
    other = F.one_hot(mix.partner_labels.long(), num_classes).to(torch.float32)
    return lam * own + (1 - lam) * other
