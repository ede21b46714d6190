"""The experiment's run folders: what each holds (method, seed, epochs done of planned), and the
small text files that are kept for committing.

A run folder is whatever ``kdcache train`` wrote (``run.json``, ``metrics.jsonl`` ...): a single
run's ``--out``, or one student's folder inside an array's ``--out``. The method and seed are read
from ``run.json``, never from folder names, so the array's naming is free to change.

Kept layout: ``RUNS/<card>/seed<S>/<method>/{run.json,metrics.jsonl,summary.csv}``, plus per
card ``runner.json`` (the card, the cache, the teacher) and ``commands.jsonl`` (every command the
runner ran, with its wall time).
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdcache.training import outputs

KEPT = ("run.json", outputs.METRICS, "summary.csv")  # small text; steps.jsonl and *.pt stay behind
RUNNER = "runner.json"
COMMANDS = "commands.jsonl"


@dataclass(frozen=True)
class RunRecord:
    """One student run, as its folder records it."""

    path: Path
    method: str
    seed: int
    planned_epochs: int
    metrics: list[dict[str, Any]]
    run: dict[str, Any]

    @property
    def epochs_done(self) -> int:
        return int(self.metrics[-1]["epoch"]) if self.metrics else 0

    @property
    def finished(self) -> bool:
        # A run cut short (by --time-limit, or a kill) has fewer epochs than its schedule.
        return self.epochs_done >= self.planned_epochs

    def _top1(self) -> list[float]:
        return [float(r["test_top1"]) for r in self.metrics if r.get("test_top1") is not None]

    @property
    def last_top1(self) -> float | None:
        scores = self._top1()
        return scores[-1] if scores else None

    @property
    def best_top1(self) -> float | None:
        scores = self._top1()
        return max(scores) if scores else None

    @property
    def train_seconds(self) -> float:
        """The training loops' time (evaluation excluded), as the run recorded it per epoch."""
        return float(sum(r.get("epoch_seconds", 0.0) for r in self.metrics))

    @property
    def setup(self) -> tuple[str, str, str, int]:
        """What makes runs comparable: dataset, teacher, student, planned epochs."""
        teacher = (self.run.get("models", {}).get("teacher") or {}).get("architecture") or "none"
        student = self.run["models"]["student"]["architecture"]
        return (self.run["dataset"]["name"], teacher, student, self.planned_epochs)


def read_run(path: Path) -> RunRecord:
    run = json.loads((path / "run.json").read_text())
    return RunRecord(
        path=path,
        method=str(run["config"]["loss"]),
        seed=int(run["config"]["seed"]),
        planned_epochs=int(run["schedule"]["epochs"]),
        metrics=outputs.read_metrics(path),
        run=run,
    )


def find_runs(root: Path) -> list[RunRecord]:
    """Every run folder under ``root`` (at any depth), sorted by path.

    A ``run.json`` that is not one student's (an array's own record, say: several losses, or
    none of a run's fields) is not a run folder and is passed over."""
    if not root.is_dir():
        return []
    found = []
    for path in sorted(root.rglob("run.json")):
        try:
            record = read_run(path.parent)
        except (KeyError, TypeError, ValueError):
            continue
        if "," not in record.method:
            found.append(record)
    return found


def card_slug(name: str) -> str:
    """A folder name for a device: 'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3'."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown"


def kept_folder(runs: Path, card: str, seed: int, method: str) -> Path:
    return runs / card_slug(card) / f"seed{seed}" / method


def keep(record: RunRecord, dest: Path) -> None:
    """Copy the run's small text files to ``dest`` (replacing an older copy of the same run)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in KEPT:
        if (record.path / name).is_file():
            shutil.copyfile(record.path / name, dest / name)
        else:
            (dest / name).unlink(missing_ok=True)


def kept_runs(runs: Path) -> list[tuple[str, RunRecord]]:
    """Every kept run under ``runs`` with its card folder's name."""
    return [(r.path.relative_to(runs).parts[0], r) for r in find_runs(runs)]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
