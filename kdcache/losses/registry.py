"""Registry of distillation losses: ``create_loss`` / ``list_losses`` / ``loss_info`` (timm style).

Each entry records the loss module, the paper, the official code, and the objective defaults that
the paper's CIFAR runs used (cross-entropy weight, weight of the distillation term, warm-up). The
hyper-parameter defaults are read from the module's ``__init__`` signature, so they live in one
place. The CLI (``kdcache losses``), the objective and the loss contract tests are all driven from
here.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

from kdcache.errors import ConfigError, UnknownNameError
from kdcache.losses.base import DistillationLoss
from kdcache.losses.dkd import DKDLoss
from kdcache.losses.kd import KDLoss
from kdcache.losses.ldrld import LDRLDLoss
from kdcache.losses.rld import RLDLoss


@dataclass(frozen=True)
class LossInfo:
    """What a registered loss is, where it comes from, and how the objective uses it by default."""

    name: str
    title: str
    formula: str
    reference: str
    code: str
    module: type[DistillationLoss]
    terms: tuple[str, ...]
    ce_weight: float
    distill_weight: float
    warmup_epochs: float  # linear warm-up min(epoch / warmup_epochs, 1); 0 = none
    needs_dense_teacher: bool  # True: a top-K sparse cache cannot give this loss exactly
    notes: str = ""

    @property
    def defaults(self) -> dict[str, Any]:
        """Hyper-parameter defaults, from the module's constructor signature."""
        params = inspect.signature(self.module.__init__).parameters
        return {n: p.default for n, p in params.items() if n != "self"}


_REGISTRY: dict[str, LossInfo] = {
    info.name: info
    for info in (
        LossInfo(
            name="kd",
            title="Knowledge distillation",
            formula="T^2 KL(softmax(t/T) || softmax(s/T))",
            reference="Hinton, Vinyals & Dean, 'Distilling the Knowledge in a Neural Network', "
            "arXiv:1503.02531, 2015",
            code="https://github.com/megvii-research/mdistiller (mdistiller/distillers/KD.py)",
            module=KDLoss,
            terms=("kd",),
            ce_weight=0.1,
            distill_weight=0.9,
            warmup_epochs=0.0,
            needs_dense_teacher=False,
        ),
        LossInfo(
            name="dkd",
            title="Decoupled knowledge distillation",
            formula="alpha*TCKD + beta*NCKD (target / non-target split of KD), each T^2-scaled",
            reference="Zhao, Cui, Song, Qiu & Liang, 'Decoupled Knowledge Distillation', "
            "CVPR 2022, arXiv:2203.08679",
            code="https://github.com/megvii-research/mdistiller (mdistiller/distillers/DKD.py)",
            module=DKDLoss,
            terms=("tckd", "nckd"),
            ce_weight=1.0,
            distill_weight=1.0,
            warmup_epochs=20.0,
            needs_dense_teacher=True,
            notes="warm-up 20 epochs on CIFAR, 1 on ImageNet (pass warmup_epochs=1)",
        ),
        LossInfo(
            name="rld",
            title="Refined logit distillation",
            formula="alpha*SCD(tau) + beta*MCD(T); SCD: teacher argmax vs student true class; "
            "MCD: classes the teacher ranks strictly below the true class",
            reference="Sun, Chen, Lyu, Chen, Chen & Wang, 'Knowledge Distillation with Refined "
            "Logits', arXiv:2408.07703, 2024 (ICCV 2025)",
            code="https://github.com/zju-SWJ/RLD (mdistiller/distillers/RLD.py)",
            module=RLDLoss,
            terms=("scd", "mcd"),
            ce_weight=1.0,
            distill_weight=1.0,
            warmup_epochs=20.0,
            needs_dense_teacher=True,
            notes="alpha_temperature=None means tau = T (the published runs); warm-up 20 epochs "
            "on CIFAR, 1 on ImageNet",
        ),
        LossInfo(
            name="ldrld",
            title="Local dense relational logit distillation",
            formula="alpha*L_LDR + beta*L_RNTK; L_LDR: ADW-weighted 2-class KLs over every pair of "
            "the top-k plus the top-k group, / (C(k,2)+1); L_RNTK: KL outside the top-k",
            reference="Xu, Liu, Liu, Wang, Xu & Cheng, 'Local Dense Logit Relations for Enhanced "
            "Knowledge Distillation', ICCV 2025, arXiv:2507.15911",
            code="https://github.com/yema-web/LDRLD (distiller_zoo/LDRLD.py)",
            module=LDRLDLoss,
            terms=("ldr", "rntk"),
            ce_weight=1.0,
            distill_weight=1.0,
            warmup_epochs=0.0,
            needs_dense_teacher=True,
            notes="top-k ranked by the student logits as in the official code (rank_by='teacher' "
            "is an option); ADW weight a*exp(-gamma*(r_i+r_j))/(b+|r_i-r_j|)",
        ),
    )
}

CE_TITLE = (
    "Cross-entropy only (no teacher): how teachers are trained and the no-distillation baseline"
)


def list_losses() -> list[str]:
    """Names of the registered distillation losses, sorted."""
    return sorted(_REGISTRY)


def loss_info(name: str) -> LossInfo:
    """The registry entry of ``name``; :class:`UnknownNameError` lists the known names."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownNameError(
            f"unknown loss {name!r}; known losses: {', '.join(list_losses())}"
        ) from None


def default_temperatures() -> set[float]:
    """Every temperature a registered loss uses with its default hyper-parameters."""
    temps: set[float] = set()
    for info in _REGISTRY.values():
        for name in ("temperature", "alpha_temperature"):
            value = info.defaults.get(name)
            if isinstance(value, int | float) and not isinstance(value, bool):
                temps.add(float(value))
    return temps


def sparse_temperatures(extra: tuple[float, ...] = ()) -> tuple[float, ...]:
    """Temperatures a sparse cache records: T = 1, each registered loss's default T, ``extra``.

    Kept with the losses because it is their registry that decides which temperatures a sparse
    teacher must carry for each loss to be exact; extraction and the online top-K both read it.
    """
    return tuple(sorted({1.0, *default_temperatures(), *(float(t) for t in extra)}))


def check_hparams(name: str, hparams: dict[str, Any]) -> None:
    """Raise :class:`ConfigError` for a hyper-parameter that loss ``name`` does not take."""
    allowed = loss_info(name).defaults
    unknown = sorted(set(hparams) - set(allowed))
    if unknown:
        raise ConfigError(
            f"unknown hyper-parameter(s) {', '.join(unknown)} for loss {name!r}; "
            f"allowed: {', '.join(allowed)}"
        )


def create_loss(name: str, **hparams: Any) -> DistillationLoss:
    """Build the loss module ``name`` with ``hparams`` over its defaults (validated here)."""
    info = loss_info(name)
    check_hparams(name, hparams)
    return info.module(**hparams)
