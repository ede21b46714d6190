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
from kdcache.losses.sparse import SparseTeacher


def check_step(
    loss: torch.Tensor,
    teacher: torch.Tensor | SparseTeacher | None,
    view: torch.Tensor,
    index: torch.Tensor,
    *,
    epoch: int,
    step: int,
    from_cache: bool,
    cached_rows: int | None = None,
) -> None:
    """Raise :class:`NonFiniteError` naming the rows or the step if anything is NaN/Inf.

    ``loss``: the step's scalar loss; ``teacher``: ``[B, C]`` logits, sparse rows (their kept
    values and normalisers are checked) or None (plain CE); ``view``, ``index`` ``[B]`` name the
    rows; ``epoch`` and ``step``: 0-based; ``from_cache``: the logits came from a cache, whose
    rows per chunk ``cached_rows`` (when known) name the chunk too.
    """
    teacher_logits = (
        torch.cat([teacher.values, teacher.lse], dim=1) if isinstance(teacher, SparseTeacher)
        else teacher
    )  # fmt: skip
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
            v, i = int(view[r]), int(index[r])
            if from_cache:
                block = (
                    f", in the chunk (view {v}, block {i // cached_rows})," if cached_rows else ""
                )
                origin = f"the cached teacher logits of (view {v}, sample {i}){block}"
                fix = "run `kdcache verify` on the cache and fetch an intact copy"
            else:
                origin = f"the online teacher's logits for (view {v}, sample {i})"
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
