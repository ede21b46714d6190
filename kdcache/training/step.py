"""One optimiser update per batch, without making the host wait for the device.

A step is: the student's forward, the objective, the finite check, the backward and the update.
Nothing in it reads a device value on the host:

- the finite check is made on the device: the step's loss, its loss parts and the batch's teacher
  rows give one flag, and a non-finite step is *skipped on the device* by the optimiser itself
  (the fused SGD / AdamW kernels read ``found_inf``, the way AMP's gradient scaler skips a step),
  so no weight ever takes its update; once a step is bad every later step of the epoch is
  skipped too, so the weights stay as they were before it;
- the first bad step (its number, whether the teacher rows or the loss were bad, and the first bad
  row) is recorded on the device by :class:`StepGuard`;
- the loss and its parts are kept on the device (:class:`~kdcache.training.tally.EpochTally`)
  until the host reads them: at the log interval, before a checkpoint and at the epoch's end. The
  guard is read then too, and a bad step stops the run with the same
  :class:`~kdcache.errors.NonFiniteError` as a per-step check would have raised (epoch, step,
  view, sample and chunk named).

``compile=True`` captures forward, objective, finite flags and backward (``torch.compile`` of the
loss function; AOTAutograd compiles its backward); the update is the fused optimiser's kernel on
CUDA. A batch of another size (the epoch's last, shorter one) compiles once more, then is reused.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from kdcache.losses.objective import Objective
from kdcache.losses.sparse import SparseTeacher
from kdcache.stream.batch import Batch

BAD_TEACHER, BAD_LOSS = 0, 1  # what StepGuard records as the kind of a bad step


def amp_context(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bfloat16 autocast for the student's forward on CUDA; nothing elsewhere."""
    if device.type == "cuda" and enabled:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def skips_on_device(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer.step()`` skips itself when ``optimizer.found_inf`` is 1 (the fused
    torch optimisers); others are guarded with a host read of the flag (one sync per step)."""
    return bool(getattr(optimizer, "_step_supports_amp_scaling", False))


def teacher_rows(teacher: Tensor | SparseTeacher | None) -> Tensor | None:
    """[B, K] of what the finite check reads from the teacher input (None: no teacher)."""
    if isinstance(teacher, SparseTeacher):
        return torch.cat([teacher.values, teacher.lse], dim=1)
    return teacher


@dataclass
class StepRecord:
    """What one step leaves on the device: its loss and parts (``values`` [1 + P], in the order
    ``("loss", *keys)``), for the tally."""

    values: Tensor
    keys: tuple[str, ...]


class StepGuard:
    """The first non-finite step of an epoch, on the device: ``[step, kind, row, bad rows]``
    (step -1: none yet)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.count = torch.zeros((), dtype=torch.int64, device=device)  # steps seen
        self.first = torch.full((4,), -1, dtype=torch.int64, device=device)
        self.tripped = torch.zeros((), dtype=torch.bool, device=device)

    def check(self, loss_ok: Tensor, rows_ok: Tensor | None) -> Tensor:
        """Record this step; the 0-d bool "apply the update" flag: this step is finite and no
        earlier one of the epoch was not."""
        if rows_ok is None:
            ok = loss_ok
            kind = torch.full_like(self.count, BAD_LOSS)
            row = bad_rows = torch.zeros_like(self.count)
        else:
            teacher_ok = rows_ok.all()
            ok = loss_ok & teacher_ok
            kind = torch.where(teacher_ok, BAD_LOSS, BAD_TEACHER)
            row = (~rows_ok).to(torch.int8).argmax()
            bad_rows = (~rows_ok).sum()
        earlier = self.tripped
        self.first = torch.where(~ok & ~earlier, torch.stack([self.count, kind, row, bad_rows]),
                                 self.first)  # fmt: skip
        self.tripped = earlier | ~ok
        self.count = self.count + 1
        return ok & ~earlier

    def first_bad(self) -> tuple[int, int, int, int] | None:
        """(step among those seen, kind, row, bad rows) of the first bad step, read on the host."""
        step, kind, row, bad_rows = self.first.tolist()
        return None if step < 0 else (step, kind, row, bad_rows)


class TrainStep:
    """Forward, objective, finite check, backward and guarded update of ``model`` on a batch."""

    def __init__(
        self, model: nn.Module, objective: Objective, optimizer: torch.optim.Optimizer, *,
        amp: bool = True, compile: bool = False,
    ) -> None:  # fmt: skip
        self.model, self.objective, self.optimizer = model, objective, optimizer
        self.amp = amp
        self.on_device = skips_on_device(optimizer)
        # The update is not compiled: on CUDA it is already one fused multi-tensor kernel per
        # parameter group (that reads the skip flag on the device), on the CPU a host branch.
        self._loss = torch.compile(self._forward_loss) if compile else self._forward_loss
        self.compiled = compile

    def _forward_loss(
        self, batch: Batch, warmup: float | Tensor
    ) -> tuple[Tensor, Tensor, tuple[str, ...], Tensor, Tensor | None]:
        with amp_context(batch.images.device, self.amp):
            student_logits = self.model(batch.images)  # [B, C]
        # Losses in float32 whatever the autocast dtype (docs/design.md, "Exactness").
        loss, parts = self.objective(student_logits.float(), batch.teacher_logits, batch.labels,
                                     warmup=warmup, mix=batch.mix)  # fmt: skip
        finite = [torch.isfinite(loss.detach())]
        finite += [torch.isfinite(v).all() for v in parts.values()]
        rows = teacher_rows(batch.teacher_logits)
        rows_ok = torch.isfinite(rows).all(dim=1) if rows is not None else None
        # The record is stacked here, inside the compiled region: returning the detached parts
        # themselves lets the compiler alias an output with the loss (cross-entropy alone:
        # ``1.0 * ce`` and ``ce.detach()``), and the loss comes back without its graph.
        keys = tuple(parts)
        values = torch.stack([loss.detach().float(), *(parts[k].float() for k in keys)])
        return loss, values, keys, torch.stack(finite).all(), rows_ok

    def _apply_update(self, ok: Tensor) -> None:
        if self.on_device:
            self.optimizer.found_inf = (~ok).float()  # type: ignore[attr-defined]
            self.optimizer.step()
        elif bool(ok):  # a user's optimiser without on-device skipping: one host read
            self.optimizer.step()

    def __call__(self, batch: Batch, warmup: float | Tensor, guard: StepGuard) -> StepRecord:
        if self.compiled and not isinstance(warmup, Tensor):
            # A float changing with the epoch (the DKD/RLD warm-up) would recompile every epoch;
            # a 0-d device tensor is an input of the one graph (filled on the device: no copy).
            warmup = torch.full((), float(warmup), device=batch.images.device)
        loss, values, keys, loss_ok, rows_ok = self._loss(batch, warmup)
        ok = guard.check(loss_ok, rows_ok)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self._apply_update(ok)
        return StepRecord(values, keys)
