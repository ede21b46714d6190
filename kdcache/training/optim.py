"""The optimiser, the learning-rate schedule and the student's EMA, built with timm's factories.

- ``--opt sgd`` is the papers' SGD (mdistiller, CRD): classical momentum, weight decay on every
  parameter; timm's ``create_optimizer_v2(opt="momentum", filter_bias_and_bn=False)``. (timm's own
  ``sgd`` is Nesterov.) ``--opt adamw`` is ``create_optimizer_v2(opt="adamw")`` with timm's default
  of no weight decay on biases and norm layers.
- ``--sched step`` is ``timm.scheduler.MultiStepLRScheduler``, ``--sched cosine``
  ``timm.scheduler.CosineLRScheduler``, both counted in optimiser updates
  (``t_in_epochs=False``) and set before every update from ``epoch * updates_per_epoch + step``,
  so warm-up and cosine move every step while a milestone ``m`` takes effect at the first update
  of epoch ``m + 1`` (1-based), as mdistiller's ``epoch > m`` rule and torch's ``MultiStepLR``
  do. timm compares ``t + 1`` with its milestones, hence ``decay_t = m * U + 1``.
- ``--model-ema``: ``timm.utils.ModelEmaV3`` of the student, updated after every step with the
  update count (decay 0 on the first update, so it starts as a copy of the trained weights).
- On CUDA both optimisers are torch's fused implementations: their kernels read a ``found_inf``
  flag and skip a non-finite step on the device, without a host synchronisation. On the CPU they
  are torch's default kernels (bit for bit the papers' SGD), and the step reads the flag.

Everything here is a pure function of the settings and the update count, except the optimiser's
and the EMA's tensors, which the checkpoint stores; so a resumed run sets the same learning rates
and ends with the same bits as an uninterrupted one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler, MultiStepLRScheduler
from timm.scheduler.scheduler import Scheduler
from timm.utils import ModelEmaV3
from torch import nn

from kdcache.training.config import Schedule

log = logging.getLogger(__name__)

_TIMM_OPT = {"sgd": "momentum", "adamw": "adamw"}  # kdcache name -> timm registry name


@dataclass
class Optimization:
    """What the loop steps: the optimiser, its lr schedule and (optionally) the student's EMA."""

    optimizer: torch.optim.Optimizer
    scheduler: Scheduler
    ema: ModelEmaV3 | None
    updates_per_epoch: int
    model: nn.Module  # the student itself (not a DDP / compiled wrapper): what the EMA follows

    def update_index(self, epoch: int, step: int, steps: int) -> int:
        """The schedule's time of ``step`` (0-based) of ``steps`` in ``epoch`` (0-based).

        A single process runs ``updates_per_epoch`` steps every epoch and gets ``epoch * U +
        step``; under DDP an epoch can run a step more or less than ``U`` (the ranks' block
        shares vary), and its steps are spread over the epoch's ``U`` slots in order.
        """
        u = self.updates_per_epoch
        return epoch * u + (step if steps in (0, u) else step * u // steps)

    def set_lr(self, epoch: int, step: int, steps: int) -> None:
        """Set the learning rate of this update."""
        self.scheduler.step_update(self.update_index(epoch, step, steps))

    def update_ema(self, epoch: int, step: int, steps: int) -> None:
        """Fold the updated weights into the EMA (decay 0 on the run's first update)."""
        if self.ema is not None:
            self.ema.update(self.model, step=self.update_index(epoch, step, steps) + 1)

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
        }
        if self.ema is not None:
            state["model_ema"] = self.ema.module.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """The optimiser's and the EMA's tensors from a checkpoint.

        The scheduler is rebuilt from the settings rather than loaded: its lr is a function of
        the update count, and a run extended to more epochs must use the schedule of its new
        length (a checkpoint of kdcache before timm's schedulers holds torch's MultiStepLR
        state, which timm's could not read anyway).
        """
        self.optimizer.load_state_dict(state["optimizer"])
        if self.ema is not None:  # resume refuses a change of --model-ema: the run saved one
            self.ema.module.load_state_dict(state["model_ema"])


def build_optimization(model: nn.Module, schedule: Schedule) -> Optimization:
    """Optimiser, scheduler and EMA for ``model`` as ``schedule`` resolves them."""
    # On CUDA the fused kernels, which skip a non-finite step on the device without a host sync
    # (kdcache.training.step). On the CPU, where reading a flag costs nothing, torch's default
    # kernels: the papers' SGD bit for bit (the fused CPU kernel rounds differently).
    opt_args: dict[str, Any] = {}
    if any(p.device.type == "cuda" for p in model.parameters()):
        opt_args["fused"] = True
    if schedule.opt == "sgd":
        opt_args |= {"momentum": schedule.momentum, "filter_bias_and_bn": False}
    optimizer = create_optimizer_v2(
        model, opt=_TIMM_OPT[schedule.opt], lr=schedule.lr, weight_decay=schedule.weight_decay,
        **opt_args,
    )  # fmt: skip
    u = schedule.updates_per_epoch
    warmup: dict[str, Any] = {
        "warmup_t": schedule.lr_warmup_epochs * u,
        "warmup_lr_init": schedule.lr_warmup_init,
        "warmup_prefix": False,  # warm-up inside the run's epochs; milestones stay absolute
        "t_in_epochs": False,
    }
    scheduler: Scheduler
    if schedule.sched == "cosine":
        scheduler = CosineLRScheduler(
            optimizer, t_initial=schedule.epochs * u, lr_min=schedule.min_lr, **warmup
        )
    else:
        scheduler = MultiStepLRScheduler(
            optimizer,
            decay_t=[m * u + 1 for m in schedule.milestones],
            decay_rate=schedule.lr_decay,
            **warmup,
        )
    ema = None
    if schedule.model_ema_decay is not None:
        ema = ModelEmaV3(model, decay=schedule.model_ema_decay)
    return Optimization(optimizer, scheduler, ema, u, model)
