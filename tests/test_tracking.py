"""summary.csv, curves.png and TensorBoard: what a run leaves to look at, short or long."""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Any

import pytest

from kdcache.errors import ConfigError
from kdcache.training import outputs, tracking
from kdcache.training.config import TrainConfig
from kdcache.training.loop import run_train


def digits_config(out: Path, **overrides: Any) -> TrainConfig:
    """4 steps per epoch on 256 digits (CE unless overridden)."""
    settings: dict[str, Any] = dict(student="resnet8", out=str(out), dataset="digits", epochs=1,
                                    batch_size=64, max_samples=256, workers=0, device="cpu",
                                    seed=1)  # fmt: skip
    settings.update(overrides)
    return TrainConfig(**settings)


def read_summary(out: Path) -> list[dict[str, str]]:
    with open(out / "summary.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_summary_csv_has_timms_columns_and_the_distillation_terms(
    tmp_path: Path, digits_teacher_weights: Path
) -> None:
    out = tmp_path / "run"
    online = dict(teacher="resnet8", teacher_weights=str(digits_teacher_weights), loss="kd")
    run_train(digits_config(out, epochs=2, eval_every=2, max_samples=64, **online))
    rows = read_summary(out)
    header = next(csv.reader(open(out / "summary.csv")))
    assert header[:6] == ["epoch", "train_loss", "eval_loss", "eval_top1", "eval_top5", "lr"]
    assert {"train_ce", "train_distill", "train_kd", "train_warmup"} <= set(header)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert rows[0]["eval_top1"] == ""  # epoch 1 was not evaluated (--eval-every 2)
    metrics = outputs.read_metrics(out)
    assert float(rows[1]["eval_top1"]) == metrics[1]["test_top1"]
    assert float(rows[1]["eval_loss"]) == metrics[1]["test_loss"] > 0
    assert float(rows[0]["train_distill"]) == metrics[0]["train_distill"]


def test_a_resumed_run_lists_each_epoch_once(tmp_path: Path) -> None:
    out = tmp_path / "run"
    run_train(digits_config(out, eval_every=0, max_samples=64))
    run_train(digits_config(out, epochs=2, eval_every=0, max_samples=64, resume=True))
    assert [r["epoch"] for r in read_summary(out)] == ["1", "2"]


def one_epoch_records() -> tuple[list[dict], list[dict]]:
    record = {"epoch": 1, "lr": 0.05, "train_loss": 2.0, "train_ce": 1.5, "train_distill": 0.5,
              "test_loss": 1.9, "test_top1": 30.0, "test_top5": 70.0}  # fmt: skip
    step = {
        "epoch": 1,
        "loss": [2.3, 2.1, 2.0, 1.9],
        "lr": [1e-5, 0.02, 0.04, 0.05],
    }
    return [record], [step]


def test_curves_of_a_one_epoch_run_show_every_step_and_the_epoch_points() -> None:
    records, steps = one_epoch_records()
    ax_loss, ax_acc, ax_lr = tracking.curves_figure(records, steps).axes
    lines = {line.get_label(): line for line in ax_loss.lines}
    assert list(lines["step loss (total)"].get_ydata()) == [2.3, 2.1, 2.0, 1.9]
    assert list(lines["step loss (total)"].get_xdata()) == [0.25, 0.5, 0.75, 1.0]
    assert {"epoch mean (total)", "cross-entropy", "distillation", "test cross-entropy"} <= set(
        lines
    )
    assert [list(line.get_ydata()) for line in ax_acc.lines] == [[30.0], [70.0]]
    assert all(line.get_marker() == "o" for line in ax_acc.lines)  # one point is visible
    [lr] = ax_lr.lines
    assert list(lr.get_ydata()) == [1e-5, 0.02, 0.04, 0.05] and ax_lr.get_yscale() == "log"


def test_curves_of_a_240_epoch_run_stay_readable() -> None:
    records = [{"epoch": e, "lr": 0.05, "train_loss": 1.0, "train_ce": 1.0, "test_top1": 50.0,
                "test_top5": 80.0} for e in range(1, 241)]  # fmt: skip
    steps = [{"epoch": e, "loss": [1.0] * 782, "lr": [0.05] * 782} for e in range(1, 241)]
    ax_loss, _, ax_lr = tracking.curves_figure(records, steps).axes
    step_line = ax_loss.lines[0]
    assert len(step_line.get_xdata()) == tracking.MAX_POINTS  # binned, not 187,680 points
    assert 0 < min(step_line.get_xdata()) and max(step_line.get_xdata()) <= 240
    assert len(ax_lr.lines[0].get_xdata()) == tracking.MAX_POINTS
    assert "cross-entropy" not in {line.get_label() for line in ax_loss.lines}  # CE is the total


def test_curves_png_is_written_for_a_one_epoch_run(tmp_path: Path) -> None:
    run_train(digits_config(tmp_path / "run", eval_every=0, max_samples=64))
    assert (tmp_path / "run" / "curves.png").stat().st_size > 10_000


def test_tensorboard_logs_steps_and_epochs(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    run_train(digits_config(out, tensorboard=True, eval_every=0))
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/step_loss", "train/lr", "epoch/lr", "epoch/train_loss"} <= tags
    steps = [e.value for e in events.Scalars("train/step_loss")]
    assert steps == pytest.approx(outputs.read_metrics(out, outputs.STEP_LOSSES)[0]["loss"])


def test_tensorboard_requested_but_missing_is_one_clear_error_before_anything_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    with pytest.raises(ConfigError, match=r"pip install 'kdcache\[tensorboard\]'"):
        run_train(digits_config(tmp_path / "run", tensorboard=True))
    assert not (tmp_path / "run").exists()
