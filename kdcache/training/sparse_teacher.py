"""A run's sparse (top-K) teacher signal: what a sparse cache can serve, and top-K online KD.

From a sparse cache: KD is exact, DKD/RLD/LDRLD only under ``--sparse-approx``, and only at a
temperature whose log-sum-exp the cache stored; refused before the first step otherwise.

Online with ``--teacher-topk K``: each batch's live teacher logits are turned into the sparse rows
a top-K cache of the same teacher would store, by the cache writer's own function
(:func:`kdcache.cache.sparse.sparse_rows_from_logits`), at the temperatures a cache records by
default plus the loss's. The loss then receives the same :class:`SparseTeacher` as from a float32
top-K cache of the same views, so the two runs give the same per-step losses bit for bit: the
proof that training from a sparse cache is training from its teacher, sparsified.
"""

from __future__ import annotations

import logging

from kdcache.cache.reader import CacheReader
from kdcache.errors import ConfigError
from kdcache.losses.objective import Objective
from kdcache.losses.registry import loss_info
from kdcache.losses.sparse import refuse_sparse
from kdcache.stream.live_teacher import OnlineTopK
from kdcache.training.config import TrainConfig
from kdcache.training.run_data import RunData, require_exact_sparse

log = logging.getLogger(__name__)


def loss_temperature(objective: Objective) -> float:
    """The temperature the objective's loss reads sparse rows at (1 for a loss without one)."""
    return float(getattr(objective.loss, "temperature", 1.0))


def check_sparse_objective(
    where: str, objective: Objective, temperatures: tuple[float, ...]
) -> None:
    """Refuse an objective that sparse rows holding ``temperatures`` cannot serve as asked.

    ``where`` names the sparse source in the message ("... is a sparse top-10 cache"). Uses the
    objective's own loss module (built once, by the loop), never a second copy.
    """
    if objective.loss is None:  # cross-entropy reads no teacher rows
        return
    name = objective.name
    if loss_info(name).needs_dense_teacher and not objective.sparse_approx:
        raise refuse_sparse(name)
    if getattr(objective.loss, "logit_stand", False):
        raise ConfigError(
            f"{where}: loss {name!r} with logit_stand=true needs every teacher logit "
            "(standardising divides by each row's std). Use a dense cache."
        )
    temperature = loss_temperature(objective)
    if temperature not in temperatures:
        raise ConfigError(
            f"{where} storing the log-sum-exp at T = {', '.join(f'{t:g}' for t in temperatures)}; "
            f"loss {name!r} runs at temperature {temperature:g}. Use one of those, or re-extract "
            f"with `--sparse-temperature {temperature:g}`."
        )


def check_sparse_training(reader: CacheReader, objective: Objective) -> None:
    """Refuse, before anything runs, an objective that a sparse cache cannot serve as asked."""
    storage = reader.identity.storage
    if storage.mode != "sparse" or objective.loss is None:
        return
    require_exact_sparse(reader)
    check_sparse_objective(
        f"{reader.location} is a sparse top-{storage.topk} cache",
        objective,
        tuple(storage.temperatures or ()),
    )


def online_topk(config: TrainConfig, objective: Objective, num_classes: int) -> OnlineTopK | None:
    """The sparsifier of ``--teacher-topk`` (None without it), checked against the loss."""
    k = config.teacher_topk
    if k is None:
        return None
    if objective.loss is None:
        raise ConfigError(
            "`teacher_topk` sparsifies the teacher for a distillation loss; loss 'ce' uses no "
            "teacher: give `loss` kd (or another loss), or drop `teacher_topk`"
        )
    if k > num_classes:
        raise ConfigError(
            f"`teacher_topk` {k} exceeds the {num_classes} classes: give K <= {num_classes}"
        )
    from kdcache.losses.registry import sparse_temperatures  # the temperatures a cache records

    temperatures = sparse_temperatures((loss_temperature(objective),))
    check_sparse_objective(f"`teacher_topk` {k} keeps a sparse top-{k} teacher", objective,
                           temperatures)  # fmt: skip
    log.info("online teacher sparsified to its top-%d logits per row (as a top-%d cache)", k, k)
    return OnlineTopK(k, temperatures, num_classes)


def prepare_sparse_teacher(
    config: TrainConfig, data: RunData, objective: Objective
) -> OnlineTopK | None:
    """Check the run's sparse teacher signal; the online sparsifier when ``--teacher-topk``."""
    if data.reader is not None:
        check_sparse_training(data.reader, objective)
    return online_topk(config, objective, data.train.spec.num_classes)
