"""The errors that stop a training run on NaN/Inf before it can write a checkpoint.

A non-finite teacher logit (a damaged cache, an unstable online teacher) or a non-finite loss (an
invalid learning rate, a diverging run) would otherwise train to the end, write NaN metrics and a
``best.pt``, and exit 0. The step detects and skips such a step on the device
(:mod:`kdcache.training.step`); the host raises the errors below when it next reads the step's
record; :func:`check_weights` runs once per epoch, before anything is saved.
"""

from __future__ import annotations

import torch
from torch import nn

from kdcache.errors import NonFiniteError

_NO_CHECKPOINT = "stopped before the update; no checkpoint was written for this epoch"


def non_finite_teacher(
    origin: str, view: int, index: int, bad_rows: int, *, epoch: int, step: int,
    chunk_rows: int | None = None,
) -> NonFiniteError:  # fmt: skip
    """The error for ``bad_rows`` NaN/Inf teacher rows at 0-based ``epoch``/``step``, the first
    being (``view``, ``index``); ``origin`` ``"cache"`` (whose ``chunk_rows`` name the chunk),
    ``"live"``, or anything else for batches of unknown origin."""
    where = f"epoch {epoch + 1}, step {step + 1}"
    if origin == "cache":
        block = f", in the chunk (view {view}, block {index // chunk_rows})," if chunk_rows else ""
        what = f"the cached teacher logits of (view {view}, sample {index}){block}"
        fix = "run `kdcache verify` on the cache and fetch an intact copy"
    elif origin == "live":
        what = f"the online teacher's logits for (view {view}, sample {index})"
        fix = "check the teacher weights and its input normalisation"
    else:  # batches of the caller's own
        what = f"the teacher logits of (view {view}, sample {index})"
        fix = "check where the batches' teacher logits come from"
    return NonFiniteError(
        f"{what} are NaN/Inf ({bad_rows} rows of this batch, {where}): {_NO_CHECKPOINT}. {fix}"
    )


def non_finite_loss(value: float, part: str | None, *, epoch: int, step: int) -> NonFiniteError:
    """The error for a NaN/Inf loss (``part``: the loss part that is, when the total is not)."""
    what = f"the training loss is {value}" if part is None else f"the loss part {part!r} is NaN/Inf"
    return NonFiniteError(
        f"{what} at epoch {epoch + 1}, step {step + 1}: the run diverged (check `lr`, "
        f"`weight_decay` and the loss weights); {_NO_CHECKPOINT}"
    )


def check_weights(model: nn.Module, *, epoch: int) -> None:
    """Raise :class:`NonFiniteError` if any parameter or buffer is NaN/Inf (``epoch``: 0-based)."""
    tensors = [t for _, t in [*model.named_parameters(), *model.named_buffers()]
               if t.is_floating_point()]  # fmt: skip
    if not tensors or bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()):
        return  # one synchronisation for the whole model
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise NonFiniteError(
                f"the student's {name} holds NaN/Inf after epoch {epoch + 1}: the run diverged "
                "(check `lr`, `weight_decay` and the loss weights); no checkpoint was written "
                "for this epoch"
            )
