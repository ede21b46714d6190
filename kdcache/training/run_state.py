"""What a run records about itself: checkpoint contents, resume (and extension), and run.json."""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdcache.errors import ConfigError
from kdcache.losses.objective import Objective
from kdcache.models.names import resolve_model_name
from kdcache.runtime import DistContext, library_versions
from kdcache.training import outputs, provenance
from kdcache.training.config import Schedule, TrainConfig
from kdcache.training.optim import Optimization
from kdcache.training.run_data import RunData
from kdcache.training.tally import EpochTally

log = logging.getLogger(__name__)

# Settings that may change between a run and its --resume (they do not change the result).
_RESUME_FREE = {"resume", "force", "workers", "device", "out", "data_dir", "cache", "eval_every",
                "tensorboard", "checkpoint_every", "remote_cache_dir"}  # fmt: skip
# ... and those that may change to extend a run: the schedule is recomputed for the new length.
_EXTENDABLE = {"epochs"}


def check_objective(objective: Objective, num_classes: int, with_teacher: bool) -> None:
    """Run the objective once on a dummy 2-row batch, so that a hyper-parameter that only fails
    against the data (LDRLD ``k`` above the class count ...) fails before the run writes a file.

    Raises:
        ConfigError: the loss refuses its settings for ``num_classes`` classes.
    """
    logits = torch.zeros(2, num_classes)  # [2, C]
    target = torch.arange(2) % num_classes  # [2]
    device = next(iter(objective.buffers()), logits).device
    with torch.no_grad():
        objective(
            logits.to(device),
            logits.to(device) if with_teacher else None,
            target.to(device),
            epoch=1,
        )


def checkpoint_state(
    config: TrainConfig,
    data: RunData,
    model: nn.Module,
    optim: Optimization,
    epoch: int,
    best: float,
) -> dict[str, Any]:
    """What ``last.pt`` / ``best.pt`` hold: the student (``model``), the optimiser, scheduler and
    student EMA (``model_ema``, the key ``--ema`` / ``--teacher-ema`` read) and the run's record."""
    spec = data.train.spec
    return {
        "model": model.state_dict(),
        **optim.state_dict(),
        "epoch": epoch,
        "best_top1": best,
        "student": resolve_model_name(config.student).spec,
        "student_model": resolve_model_name(config.student).to_dict(),
        "num_classes": spec.num_classes,
        "in_chans": spec.in_chans,
        "dataset": spec.name,
        "dataset_spec": spec.to_dict(),
        "preprocessing": data.student_input.to_dict(),  # what eval must feed this model
        **provenance.run_sources(config, data),
        "config": config.to_dict(),
    }


def restore(
    out: Path,
    config: TrainConfig,
    model: nn.Module,
    optim: Optimization,
    schedule: Schedule,
) -> tuple[int, float, EpochTally | None]:
    """Load ``out/last.pt`` into the model, the optimiser and the student EMA; returns (epochs
    complete, best top-1, the tally of the next epoch's served steps when the checkpoint was
    written inside it). The lr schedule is a function of the update count
    (kdcache.training.optim).

    A larger ``--epochs`` than the run's extends it: the schedule (milestones, cosine length,
    warm-up) is the one computed for the new length, so the next update gets that schedule's lr,
    and run.json records the change.

    Raises:
        ConfigError: other settings differ from the run's, or ``--epochs`` is below the epochs
            already trained.
    """
    state = outputs.load_checkpoint(out / "last.pt")
    old = state.get("config", {})
    new = config.to_dict()
    # A setting added after the run started reads as its default (e.g. *_preprocessing: auto).
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    changed = sorted(
        k
        for k in new
        if k not in _RESUME_FREE | _EXTENDABLE and old.get(k, defaults.get(k)) != new[k]
    )
    if changed:
        raise ConfigError(
            f"`resume` with settings that differ from the run in {out}: "
            + ", ".join(f"{k} {old.get(k)!r} -> {new[k]!r}" for k in changed)
            + "; give the run's settings (see its run.json), or use `force` or another `out` "
            "to start a new run"
        )
    epoch = int(state["epoch"])
    if schedule.epochs < epoch:
        raise ConfigError(
            f"`resume` `epochs` {schedule.epochs}: the run in {out} already trained {epoch} "
            "epochs; give `epochs` of at least that"
        )
    model.load_state_dict(state["model"])
    optim.load_state_dict(state)
    if old.get("epochs") != new["epochs"]:
        _record_extension(out, schedule, from_epochs=old.get("epochs"), at_epoch=epoch)
    outputs.truncate_metrics(out, epoch)
    tally = EpochTally.from_dict(state["tally"]) if state.get("step") else None
    log.info("resumed %s at epoch %d of %d%s", out, epoch, schedule.epochs,
             f", step {tally.served}" if tally else "")  # fmt: skip
    return epoch, float(state["best_top1"]), tally


def _record_extension(
    out: Path, schedule: Schedule, *, from_epochs: int | None, at_epoch: int
) -> None:
    path = out / "run.json"
    record = json.loads(path.read_text()) if path.is_file() else {}
    record.setdefault("extensions", []).append(
        {
            "at_epoch": at_epoch,
            "from_epochs": from_epochs,
            "to_epochs": schedule.epochs,
            "previous_schedule": record.get("schedule"),
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
        }
    )
    record["schedule"] = asdict(schedule)
    if isinstance(record.get("config"), dict):
        record["config"]["epochs"] = schedule.epochs
    outputs.atomic_write_bytes(path, json.dumps(record, indent=2).encode())
    log.info("extended %s to %d epochs (schedule %s)", out, schedule.epochs, asdict(schedule))


def _teacher_record(config: TrainConfig, data: RunData) -> dict[str, Any] | None:
    """The live teacher as resolved, or the cache's teacher as the cache records it."""
    if config.teacher is not None:
        return resolve_model_name(config.teacher).to_dict()
    if data.reader is None:
        return None
    meta = data.reader.meta
    # Caches before format 1.2 record only the name the user gave.
    return dict(meta.teacher_model or {"spec": meta.identity.teacher.name}) | {"from": "cache"}


def write_run_json(
    out: Path, config: TrainConfig, schedule: Schedule, data: RunData, ctx: DistContext
) -> None:

    record = {
        "config": config.to_dict(),
        "models": {
            "student": resolve_model_name(config.student).to_dict(),
            "teacher": _teacher_record(config, data),
        },
        "schedule": asdict(schedule),
        **provenance.run_sources(config, data),
        "cache": data.reader.location if data.reader else None,
        "dataset": {
            "name": data.train.spec.name,
            "split": data.train.split,
            "fingerprint": data.train.fingerprint(),
        },
        "world_size": ctx.world_size,
        "versions": library_versions(),
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    outputs.atomic_write_bytes(out / "run.json", json.dumps(record, indent=2).encode())
