"""Optimiser, lr schedule, label smoothing and student EMA (timm's factories), and their resume."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdcache.errors import ConfigError
from kdcache.losses.objective import build_objective
from kdcache.training import outputs, tracking
from kdcache.training.config import TrainConfig, resolve_schedule
from kdcache.training.loop import run_train
from kdcache.training.optim import build_optimization


def config(out: Path | str = "unused", **overrides: Any) -> TrainConfig:
    """CE on digits, 4 optimiser steps per epoch (256 samples, batch 64)."""
    settings: dict[str, Any] = dict(student="resnet8", out=str(out), dataset="digits", epochs=1,
                                    batch_size=64, max_samples=256, workers=0, device="cpu",
                                    seed=1)  # fmt: skip
    settings.update(overrides)
    return TrainConfig(**settings)


def lrs_per_update(cfg: TrainConfig, num_samples: int) -> list[list[float]]:
    """The lr each update of each epoch gets: ``[epoch][step]``."""
    schedule = resolve_schedule(cfg, "cifar100", num_samples)
    optim = build_optimization(nn.Linear(2, 2), schedule)
    u = schedule.updates_per_epoch
    table = []
    for epoch in range(schedule.epochs):
        row = []
        for step in range(u):
            optim.set_lr(epoch, step, u)
            row.append(optim.optimizer.param_groups[0]["lr"])
        table.append(row)
    return table


def test_the_default_schedule_is_mdistillers_step_schedule() -> None:
    # mdistiller: lr = 0.05 * 0.1 ** sum(epoch > [150, 180, 210]) with epochs counted from 1.
    table = lrs_per_update(config(epochs=240, max_samples=None), num_samples=640)
    assert all(len(set(row)) == 1 for row in table)  # constant inside an epoch
    expected = [0.05 * 0.1 ** sum(e > m for m in (150, 180, 210)) for e in range(1, 241)]
    assert [row[0] for row in table] == pytest.approx(expected, rel=1e-12)
    assert table[149][-1] == pytest.approx(0.05) and table[150][0] == pytest.approx(0.005)


def test_cosine_warms_up_per_step_then_decays_to_min_lr() -> None:
    cfg = config(epochs=10, sched="cosine", lr=0.1, lr_warmup_epochs=2, min_lr=0.001)
    flat = [lr for row in lrs_per_update(cfg, num_samples=640) for lr in row]  # 10 updates/epoch
    assert flat[0] == pytest.approx(1e-5)
    warmup, decay = flat[:20], flat[20:]
    assert all(b > a for a, b in zip(warmup, warmup[1:], strict=False))  # rises every step
    assert all(b < a for a, b in zip(decay, decay[1:], strict=False))  # falls every step
    assert decay[0] == pytest.approx(0.001 + 0.5 * 0.099 * (1 + math.cos(math.pi * 20 / 100)))
    assert 0.001 < flat[-1] < 0.0011


def test_sgd_is_the_papers_sgd_bit_for_bit() -> None:
    """timm's factory with --opt sgd steps exactly as torch.optim.SGD(momentum, weight decay on
    every parameter, no Nesterov) did before the factories."""
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 3))
    b = copy.deepcopy(a)
    ours = build_optimization(a, resolve_schedule(config(), "cifar100", 256)).optimizer
    plain = torch.optim.SGD(b.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    for model, opt in ((a, ours), (b, plain)):
        for _ in range(3):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(opt="adamw"), "`opt` adamw needs `lr` and `weight_decay`"),
        (dict(opt="adamw", lr=1e-3), "`opt` adamw needs `lr` and `weight_decay`"),
        (dict(min_lr=0.01), "`min_lr` is the floor of `sched` cosine"),
        (dict(label_smoothing=1.0), "`label_smoothing` must be a number in"),
        (dict(model_ema_decay=float("nan")), "`model_ema_decay` must be a number in"),
        (dict(model_ema_decay=0.99), "`model_ema_decay` sets the decay of `model_ema`"),
        (dict(lr_warmup_epochs=-1.0), "`lr_warmup_epochs` must be a finite number >= 0"),
        (dict(sched="linear"), "`sched` must be step or cosine"),
    ],
)
def test_bad_optimisation_settings_are_one_clear_error(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config(**overrides)


@pytest.mark.parametrize(("loss", "warmup"), [("kd", 0), ("ldrld", 0), ("dkd", 2), ("rld", 2)])
def test_only_dkd_and_rld_get_the_protocols_distillation_warm_up(loss: str, warmup: float) -> None:
    # cifar: 20 of 240 epochs, scaled to 24 -> 2; KD and LDRLD have none in their papers.
    schedule = resolve_schedule(config(loss=loss, epochs=24, teacher="resnet8",
                                       teacher_weights="w.pth"), "cifar100", 640)  # fmt: skip
    assert schedule.warmup_epochs == warmup


def test_an_lr_warm_up_as_long_as_the_run_is_refused() -> None:
    with pytest.raises(ConfigError, match="`lr_warmup_epochs` 5 is not shorter than the run"):
        resolve_schedule(config(epochs=5, lr_warmup_epochs=5), "cifar100", 640)


def test_label_smoothing_applies_to_the_ce_term_only() -> None:
    torch.manual_seed(0)
    s, t, y = torch.randn(8, 10), torch.randn(8, 10), torch.randint(0, 10, (8,))
    plain = build_objective("kd", temperature=4)
    smooth = build_objective("kd", temperature=4, label_smoothing=0.1)
    _, p0 = plain(s, t, y, epoch=1)
    _, p1 = smooth(s, t, y, epoch=1)
    assert torch.equal(p1["ce"], F.cross_entropy(s, y, label_smoothing=0.1))
    assert not torch.equal(p0["ce"], p1["ce"])
    assert torch.equal(p0["distill"], p1["distill"])


def test_the_student_ema_is_evaluated_beside_it_and_saved(tmp_path: Path) -> None:
    out = tmp_path / "run"
    run_train(config(out, model_ema=True, model_ema_decay=0.5, max_samples=128))
    [record] = outputs.read_metrics(out)
    assert record["test_top1_ema"] is not None and record["test_top5_ema"] is not None
    state = outputs.load_checkpoint(out / "last.pt")
    ema, model = state["model_ema"], state["model"]
    assert set(ema) == set(model)
    assert any(not torch.equal(ema[k], model[k]) for k in model if ema[k].is_floating_point())
    schedule = json.loads((out / "run.json").read_text())["schedule"]
    assert schedule["model_ema_decay"] == 0.5
    assert schedule["opt"] == "sgd" and schedule["sched"] == "step"


def test_run_json_records_the_optimisation(tmp_path: Path) -> None:
    out = tmp_path / "run"
    run_train(config(out, opt="adamw", lr=1e-3, weight_decay=0.05, sched="cosine",
                     lr_warmup_epochs=0.5, label_smoothing=0.1))  # fmt: skip
    schedule = json.loads((out / "run.json").read_text())["schedule"]
    assert schedule["opt"] == "adamw" and schedule["sched"] == "cosine"
    assert schedule["lr_warmup_epochs"] == 0.5 and schedule["lr_warmup_init"] == 1e-5
    assert schedule["label_smoothing"] == 0.1 and schedule["updates_per_epoch"] == 4
    assert schedule["milestones"] == [] and schedule["model_ema_decay"] is None
    state = outputs.load_checkpoint(out / "last.pt")
    assert state["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.999)  # AdamW's state


@pytest.mark.slow
def test_a_resumed_cosine_adamw_ema_run_ends_with_the_same_bits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = dict(epochs=3, opt="adamw", lr=2e-3, weight_decay=0.05, sched="cosine",
                    lr_warmup_epochs=1.5, min_lr=1e-4, label_smoothing=0.1, model_ema=True,
                    model_ema_decay=0.9)  # fmt: skip
    run_train(config(tmp_path / "whole", **settings))

    real_plot = tracking.plot_curves

    def stop_after_epoch_2(out: Path) -> None:
        real_plot(out)
        if len(outputs.read_metrics(out)) == 2:
            raise KeyboardInterrupt("simulated stop after epoch 2")

    monkeypatch.setattr(tracking, "plot_curves", stop_after_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        run_train(config(tmp_path / "cut", **settings))
    monkeypatch.setattr(tracking, "plot_curves", real_plot)
    run_train(config(tmp_path / "cut", resume=True, **settings))

    whole = outputs.load_checkpoint(tmp_path / "whole" / "last.pt")
    cut = outputs.load_checkpoint(tmp_path / "cut" / "last.pt")
    for key in ("model", "model_ema"):
        assert all(torch.equal(whole[key][k], cut[key][k]) for k in whole[key]), key
    assert whole["scheduler"] == cut["scheduler"]
    for a, b in zip(whole["optimizer"]["state"].values(), cut["optimizer"]["state"].values(),
                    strict=True):  # fmt: skip
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert outputs.read_metrics(tmp_path / "cut", outputs.STEP_LOSSES) == outputs.read_metrics(
        tmp_path / "whole", outputs.STEP_LOSSES
    )
    lrs = [r["lr"] for r in outputs.read_metrics(tmp_path / "cut")]
    assert lrs == [r["lr"] for r in outputs.read_metrics(tmp_path / "whole")]
