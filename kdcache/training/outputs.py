"""A run's directory: atomic checkpoints, metrics.jsonl, steps.jsonl, run.json, curves PNG.

Files written here are replaced atomically (write to a temporary file in the same directory, then
``os.replace``), so a crash never leaves a half-written checkpoint where a good one was.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from kdcache.errors import ConfigError, WeightsError

METRICS = "metrics.jsonl"  # one record per epoch
STEP_LOSSES = "steps.jsonl"  # one record per epoch: every optimiser step's loss (main process)
RUN_FILES = ("run.json", METRICS, STEP_LOSSES, "last.pt", "best.pt", "curves.png")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path) -> dict[str, Any]:
    # Our own checkpoints hold plain containers, tensors and numbers: weights_only is safe.
    import pickle

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise  # missing, unreadable: the path's own error
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, KeyError, TypeError) as exc:
        raise WeightsError(
            f"{path} is not a readable PyTorch checkpoint ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); it is damaged, truncated or "
            "another kind of file"
        ) from exc


def prepare_run_dir(out: Path, *, resume: bool, force: bool) -> None:
    """Refuse to clobber an existing run unless told; --force removes only kdcache's run files."""
    existing = [name for name in RUN_FILES if (out / name).exists()]
    if resume:
        if not (out / "last.pt").is_file():
            raise ConfigError(f"--resume: no checkpoint {out / 'last.pt'} to resume from")
        return
    if existing and not force:
        raise ConfigError(
            f"{out} already holds a training run ({', '.join(existing)}); pass --resume to "
            "continue it, --force to replace it, or choose another --out"
        )
    out.mkdir(parents=True, exist_ok=True)
    for name in existing:
        (out / name).unlink()


def append_metrics(out: Path, record: dict[str, Any], name: str = METRICS) -> None:
    """Append one epoch's record (it carries an ``epoch`` key) to the run's ``name`` file."""
    with open(out / name, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_metrics(out: Path, name: str = METRICS) -> list[dict[str, Any]]:
    path = out / name
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_metrics(out: Path, last_epoch: int) -> None:
    """On resume, drop records of epochs after the checkpoint (they will be redone)."""
    for name in (METRICS, STEP_LOSSES):
        kept = [r for r in read_metrics(out, name) if r["epoch"] <= last_epoch]
        atomic_write_bytes(out / name, "".join(json.dumps(r) + "\n" for r in kept).encode())


def plot_curves(out: Path) -> None:
    """curves.png: training loss and test top-1 per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(out)
    if not records:
        return
    epochs = [r["epoch"] for r in records]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r["train_loss"] for r in records], label="total")
    ax_loss.plot(epochs, [r["train_ce"] for r in records], label="cross-entropy")
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="loss")
    ax_loss.legend()
    tested = [r for r in records if r.get("test_top1") is not None]  # --eval-every skips some
    ax_acc.plot([r["epoch"] for r in tested], [r["test_top1"] for r in tested], label="top-1")
    ax_acc.plot([r["epoch"] for r in tested], [r["test_top5"] for r in tested], label="top-5")
    ax_acc.set(xlabel="epoch", ylabel="test accuracy (%)", title="accuracy")
    ax_acc.legend()
    fig.tight_layout()
    tmp = out / ".curves.png.tmp"
    fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    os.replace(tmp, out / "curves.png")
