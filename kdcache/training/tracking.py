"""A run's tracking files, rebuilt from metrics.jsonl and steps.jsonl after every epoch.

- ``summary.csv``: one row per epoch, timm's ``train.py`` columns where they apply (``epoch``,
  ``train_loss``, ``eval_loss``, ``eval_top1``, ``eval_top5``, ``lr``), then the loss terms
  (``train_ce``, ``train_distill``, the method's own terms, the warm-up factor), the student EMA's
  ``eval_*_ema`` and the epoch's time. Rewritten whole from metrics.jsonl, so a resumed run's
  file holds each epoch once.
- ``curves.png``: step losses (every optimiser step, binned to at most ``MAX_POINTS`` points on a
  long run) with the per-epoch means of the loss and its terms; test accuracy per epoch; the lr of
  every step. Epoch values carry markers, so a 1-epoch run shows points rather than an empty axis.
- TensorBoard (``--tensorboard``, optional dependency): every step's loss and lr, every epoch's
  record, under ``OUT/tensorboard``.
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kdcache.errors import ConfigError
from kdcache.training import outputs

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

SUMMARY = "summary.csv"
TENSORBOARD_DIR = "tensorboard"
MAX_POINTS = 2000  # step-level curves are binned to at most this many points
_TIMM_COLUMNS = ["epoch", "train_loss", "eval_loss", "eval_top1", "eval_top5", "lr"]


def summary_rows(records: list[dict[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:
    """metrics.jsonl records -> (columns, rows): ``test_*`` is named ``eval_*`` as in timm."""
    rows = [{k.replace("test_", "eval_", 1): v for k, v in r.items()} for r in records]
    extra: list[str] = []
    for row in rows:
        extra += [k for k in row if k not in _TIMM_COLUMNS and k not in extra]
    terms = [k for k in extra if k.startswith("train_")]
    rest = [k for k in extra if not k.startswith("train_")]
    return _TIMM_COLUMNS + terms + rest, rows


def write_summary(out: Path) -> None:
    """``out/summary.csv`` from ``out/metrics.jsonl`` (empty cells for epochs not evaluated)."""
    columns, rows = summary_rows(outputs.read_metrics(out))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows([{k: ("" if v is None else v) for k, v in row.items()} for row in rows])
    outputs.atomic_write_bytes(out / SUMMARY, text.getvalue().encode())


def _binned(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """At most MAX_POINTS (x, mean y) pairs: a long run's step curve without 10^5 points."""
    if len(x) <= MAX_POINTS:
        return x, y
    edges = np.linspace(0, len(x), MAX_POINTS + 1).astype(int)
    return (
        np.array([x[a:b].mean() for a, b in zip(edges[:-1], edges[1:], strict=True)]),
        np.array([y[a:b].mean() for a, b in zip(edges[:-1], edges[1:], strict=True)]),
    )


def _step_series(steps: list[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(fractional epoch, value) of every step's ``key``: step i of n in epoch e at e - 1 + i/n."""
    xs: list[float] = []
    ys: list[float] = []
    for record in steps:
        values = record.get(key) or []
        n = len(values)
        xs += [record["epoch"] - 1 + (i + 1) / n for i in range(n)]
        ys += values
    return np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)


def curves_figure(records: list[dict[str, Any]], steps: list[dict[str, Any]]) -> Figure:
    """The figure of :func:`plot_curves` from metrics.jsonl ``records`` and steps.jsonl ``steps``:
    axes loss, accuracy, learning rate."""
    from matplotlib.figure import Figure

    epochs = [r["epoch"] for r in records]
    fig = Figure(figsize=(15, 4))
    ax_loss, ax_acc, ax_lr = fig.subplots(1, 3)

    x, y = _binned(*_step_series(steps, "loss"))
    if len(x):
        ax_loss.plot(x, y, lw=0.8, alpha=0.5, color="tab:gray", label="step loss (total)")
    names = {"train_loss": "epoch mean (total)", "test_loss": "test cross-entropy"}
    if any("train_distill" in r for r in records):  # else the CE is the total
        names |= {"train_ce": "cross-entropy", "train_distill": "distillation"}
    for key, label in names.items():
        points = [(r["epoch"], r[key]) for r in records if r.get(key) is not None]
        if points:
            ax_loss.plot(*zip(*points, strict=True), "o-", ms=4, label=label)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_loss.legend(fontsize="small")

    for key, label in (("test_top1", "top-1"), ("test_top5", "top-5"),
                       ("test_top1_ema", "EMA top-1"), ("test_top5_ema", "EMA top-5")):  # fmt: skip
        points = [(r["epoch"], r[key]) for r in records if r.get(key) is not None]
        if points:
            ax_acc.plot(*zip(*points, strict=True), "o-", ms=4, label=label)
    ax_acc.set(xlabel="epoch", ylabel="test accuracy (%)", title="accuracy")
    if ax_acc.lines:
        ax_acc.legend(fontsize="small")
    else:
        ax_acc.text(0.5, 0.5, "not evaluated yet", ha="center", transform=ax_acc.transAxes)

    x, y = _binned(*_step_series(steps, "lr"))
    if len(x):  # every step's lr (runs before kdcache recorded it: the epochs')
        ax_lr.plot(x, y, lw=1.2, label="lr per step")
    else:
        x, y = np.asarray(epochs, dtype=float), np.asarray([r["lr"] for r in records])
        ax_lr.plot(x, y, "o-", ms=4, label="lr per epoch")
    ax_lr.set(xlabel="epoch", ylabel="learning rate", title="learning rate")
    positive = y[y > 0]
    if len(positive) and positive.max() / positive.min() > 20:
        ax_lr.set_yscale("log")  # step decays and warm-ups span decades
    for ax in (ax_loss, ax_acc, ax_lr):
        ax.set_xlim(0, max(epochs) * 1.05)
    fig.tight_layout()
    return fig


def plot_curves(out: Path) -> None:
    """``out/curves.png``: losses (steps and epochs), test accuracy, learning rate."""
    records = outputs.read_metrics(out)
    if not records:
        return
    fig = curves_figure(records, outputs.read_metrics(out, outputs.STEP_LOSSES))
    outputs.atomic_write(out / "curves.png", lambda f: fig.savefig(f, format="png", dpi=100))


def require_tensorboard() -> None:
    """Raise ConfigError with the install command when TensorBoard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            "`tensorboard` needs the tensorboard package, which is not installed: "
            "pip install 'kdcache[tensorboard]' (or drop `tensorboard`; summary.csv and "
            "curves.png are written either way)"
        ) from exc


class TensorBoardLog:
    """Every step's loss and lr (``train/step_loss``, ``train/lr``) and every epoch's record
    (``epoch/<field>``, at the epoch's last update) in ``out/tensorboard``; the x axis counts
    optimiser updates throughout.

    ``purge_step``: on resume, the first update of the resumed epoch: TensorBoard drops what the
    interrupted run had logged from there on, so no step appears twice.
    """

    def __init__(self, out: Path, purge_step: int | None = None) -> None:
        require_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(out / TENSORBOARD_DIR), purge_step=purge_step)

    def log_epoch(
        self,
        record: dict[str, Any],
        step_losses: list[float],
        step_lrs: list[float],
        *,
        first_update: int,
    ) -> None:
        for i, loss in enumerate(step_losses):
            self.writer.add_scalar("train/step_loss", loss, first_update + i)
        for i, lr in enumerate(step_lrs):
            self.writer.add_scalar("train/lr", lr, first_update + i)
        end = first_update + max(len(step_losses), 1) - 1
        for key, value in record.items():
            if isinstance(value, int | float):
                self.writer.add_scalar(f"epoch/{key}", value, end)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
