"""What a run records about itself: checkpoint contents, resume, and run.json."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdcache.errors import ConfigError
from kdcache.runtime import DistContext
from kdcache.training import outputs, provenance
from kdcache.training.config import Schedule, TrainConfig
from kdcache.training.sources import RunData

log = logging.getLogger(__name__)

# Settings that may change between a run and its --resume (they do not change the result).
_RESUME_FREE = {"resume", "force", "workers", "device", "out", "data_dir", "cache"}


def checkpoint_state(
    config: TrainConfig,
    data: RunData,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    epoch: int,
    best: float,
) -> dict[str, Any]:
    spec = data.train.spec
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "epoch": epoch,
        "best_top1": best,
        "student": config.student,
        "num_classes": spec.num_classes,
        "in_chans": spec.in_chans,
        "dataset": spec.name,
        "dataset_spec": spec.to_dict(),
        **provenance.run_sources(config, data),
        "config": config.to_dict(),
    }


def restore(
    out: Path,
    config: TrainConfig,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
) -> tuple[int, float]:
    state = outputs.load_checkpoint(out / "last.pt")
    old = state.get("config", {})
    new = config.to_dict()
    changed = sorted(k for k in new if k not in _RESUME_FREE and old.get(k) != new[k])
    if changed:
        raise ConfigError(
            f"--resume with settings that differ from the run in {out}: "
            + ", ".join(f"{k} {old.get(k)!r} -> {new[k]!r}" for k in changed)
        )
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    outputs.truncate_metrics(out, state["epoch"])
    log.info("resumed %s at epoch %d", out, state["epoch"])
    return int(state["epoch"]), float(state["best_top1"])


def write_run_json(
    out: Path, config: TrainConfig, schedule: Schedule, data: RunData, ctx: DistContext
) -> None:

    from kdcache.extract import library_versions

    record = {
        "config": config.to_dict(),
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
