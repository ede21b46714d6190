"""A straightforward per-group loop form of LDRLD, written from the definition in the official code
(yema-web/LDRLD ``selective_softmax_loss``): one full-width ``[B, C]`` softmax per group, classes
outside the group removed by subtracting 1000 from ``z / T``.

Used as an independent cross-check of the vectorised :func:`kdcache.losses.ldrld.ldrld_terms` for
values of k the golden file does not cover, and as the baseline of ``benchmarks/bench_losses.py``.
Not part of the package on purpose: it is the slow form the package replaces.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import Tensor


def adw(i: int, j: int, gamma: float = 0.05) -> float:
    """The official ADW on 0-based positions: 2 exp(-gamma (i+1 + j+1)) / (1.5 + |i - j|)."""
    return 1.0 / (1.5 + abs(i - j)) * 2.0 * math.exp(-gamma * ((i + 1) + (j + 1)))


def _group_kl(student: Tensor, teacher: Tensor, outside: Tensor, temperature: float) -> Tensor:
    """T^2 (1/B) sum_b KL over the classes where ``outside`` is 0 (additive -1000 mask)."""
    log_ps = F.log_softmax(student / temperature - 1000.0 * outside, dim=1)  # [B, C]
    pt = F.softmax(teacher / temperature - 1000.0 * outside, dim=1)  # [B, C]
    kl = F.kl_div(log_ps, pt, reduction="sum")
    return kl * temperature**2 / student.shape[0]


def ldrld_loop(
    student: Tensor, teacher: Tensor, k: int, temperature: float = 4.0, rank_by: str = "student"
) -> tuple[Tensor, Tensor]:
    """``(L_LDR, L_RNTK)`` by looping over the C(k,2) pairs and the full top-k group.

    ``rank_by="student"`` is the official ranking; ``"teacher"`` is kdcache's option.
    """
    ranker = student if rank_by == "student" else teacher
    top = ranker.detach().topk(k, 1, True, True).indices  # [B, k]
    groups = list(itertools.combinations(range(k), 2)) + [tuple(range(k))]
    total = student.new_zeros(())
    for group in groups:
        outside = torch.ones_like(student).scatter_(1, top[:, list(group)], 0.0)  # [B, C]
        weight = adw(group[0], group[1]) if len(group) == 2 else 1.0
        total = total + weight * _group_kl(student, teacher, outside, temperature)
    ldr = total / len(groups)
    inside = torch.zeros_like(student).scatter_(1, top, 1.0)  # [B, C]
    rntk = _group_kl(student, teacher, inside, temperature)
    return ldr, rntk
