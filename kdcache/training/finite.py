"""Guards that stop a training run on NaN/Inf before it can write a checkpoint.

A non-finite teacher logit (a damaged cache, an unstable online teacher) or a non-finite loss (an
invalid learning rate, a diverging run) would otherwise train to the end, write NaN metrics and a
``best.pt``, and exit 0. The loop calls :func:`check_step` once per step, before ``backward``: one
device synchronisation for the loss and the teacher logits together, and a diagnosis only when
something is wrong; and :func:`check_weights` once per epoch, before anything is saved.
"""

from __future__ import annotations

import torch
from torch import nn

from kdcache.errors import NonFiniteError


def check_step(
    loss: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    batch: dict[str, torch.Tensor],
    *,
    epoch: int,
    step: int,
    cached_rows: int | None = None,
) -> None:
    """Raise :class:`NonFiniteError` naming the rows or the step if anything is NaN/Inf.

    ``loss``: the step's scalar loss; ``teacher_logits``: ``[B, C]`` or None (plain CE);
    ``batch``: the loader's batch (its ``view`` and ``index`` ``[B]`` name the rows);
    ``epoch`` and ``step``: 0-based; ``cached_rows``: the cache's rows per chunk when the logits
    came from a cache (then the chunk is named too), None for an online teacher.
    """
    ok = torch.isfinite(loss.detach()).all()
    if teacher_logits is not None:
        ok = ok & torch.isfinite(teacher_logits).all()
    if bool(ok):  # the one synchronisation
        return
    where = f"epoch {epoch + 1}, step {step + 1}"
    if teacher_logits is not None:
        bad_rows = (~torch.isfinite(teacher_logits).all(dim=1)).nonzero().flatten().tolist()
        if bad_rows:
            r = bad_rows[0]
            view, index = int(batch["view"][r]), int(batch["index"][r])
            if cached_rows is not None:
                origin = (
                    f"the cached teacher logits of (view {view}, sample {index}), in the logits "
                    f"chunk (view {view}, block {index // cached_rows}),"
                )
                fix = "run `kdcache verify` on the cache and fetch an intact copy"
            else:
                origin = f"the online teacher's logits for (view {view}, sample {index})"
                fix = "check the teacher weights and its input normalisation"
            raise NonFiniteError(
                f"{origin} are NaN/Inf ({len(bad_rows)} rows of this batch, {where}): "
                f"stopped before the update; no checkpoint was written for this epoch. {fix}"
            )
    raise NonFiniteError(
        f"the training loss is {float(loss.detach())} at {where}: the run diverged (check --lr, "
        "--weight-decay and the loss weights); stopped before the update, no checkpoint was "
        "written for this epoch"
    )


def check_weights(model: nn.Module, *, epoch: int) -> None:
    """Raise :class:`NonFiniteError` if any parameter or buffer is NaN/Inf (``epoch``: 0-based)."""
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise NonFiniteError(
                f"the student's {name} holds NaN/Inf after epoch {epoch + 1}: the run diverged "
                "(check --lr, --weight-decay and the loss weights); no checkpoint was written "
                "for this epoch"
            )
