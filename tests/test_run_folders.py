"""Run folders never trap the user: checked settings, restart, extension, umask, no stray temps."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
import torch

from kdcache.errors import ConfigError
from kdcache.training import loop, outputs
from kdcache.training.config import TrainConfig
from kdcache.training.loop import run_train


def digits_config(out: Path, **overrides: Any) -> TrainConfig:
    """One cheap CE epoch on 64 digits, one optimiser step."""
    settings: dict[str, Any] = dict(student="resnet8", out=str(out), dataset="digits", epochs=1,
                                    batch_size=64, max_samples=64, workers=0, device="cpu",
                                    seed=1)  # fmt: skip
    settings.update(overrides)
    return TrainConfig(**settings)


def stop_in_first_epoch(*args: Any, **kwargs: Any) -> dict[str, float]:
    raise KeyboardInterrupt("Ctrl-C in epoch 1")


def test_a_run_stopped_in_its_first_epoch_starts_again_without_force(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = digits_config(tmp_path / "run")
    monkeypatch.setattr(loop, "train_one_epoch", stop_in_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        run_train(config)
    assert (tmp_path / "run" / "run.json").is_file() and not (tmp_path / "run" / "last.pt").exists()
    monkeypatch.undo()
    result = run_train(config)
    assert result.epochs == 1 and (tmp_path / "run" / "last.pt").is_file()


def test_resume_of_a_run_with_no_checkpoint_says_to_drop_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loop, "train_one_epoch", stop_in_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        run_train(digits_config(tmp_path / "run"))
    monkeypatch.undo()
    with pytest.raises(ConfigError, match="without `resume`"):
        run_train(digits_config(tmp_path / "run", resume=True))


def test_a_kill_during_the_first_checkpoint_leaves_a_restartable_folder(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text("{}")
    (out / "metrics.jsonl").write_text('{"epoch": 1}\n')
    stale = out / ".last.pt.4242.0badc0de.tmp"
    stale.write_bytes(b"")  # what a SIGKILL inside torch.save leaves
    run_train(digits_config(out))
    assert not stale.exists()
    assert [p.name for p in out.iterdir() if p.name.endswith(".tmp")] == []
    assert [r["epoch"] for r in outputs.read_metrics(out)] == [1]


def test_a_run_with_a_checkpoint_is_still_protected(tmp_path: Path) -> None:
    run_train(digits_config(tmp_path / "run"))
    with pytest.raises(ConfigError, match="`resume`"):
        run_train(digits_config(tmp_path / "run"))


def test_a_bad_loss_parameter_writes_nothing_so_the_corrected_command_runs(
    tmp_path: Path, digits_teacher_weights: Path
) -> None:
    online = dict(teacher="resnet8", teacher_weights=str(digits_teacher_weights), loss="ldrld")
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match="k must be <= the number of classes"):
        run_train(digits_config(out, **online, loss_params={"k": 500}))
    assert not out.exists()
    run_train(digits_config(out, **online, loss_params={"k": 4}))
    assert (out / "last.pt").is_file()


def test_resume_with_more_epochs_extends_a_finished_run_on_the_longer_schedule(
    tmp_path: Path,
) -> None:
    # 4 epochs of the CIFAR protocol decay at epochs 2 and 3; 1 epoch has no milestone, so the
    # first epoch is the same under both and the extended run must end where a 4-epoch run does.
    run_train(digits_config(tmp_path / "whole", epochs=4))
    run_train(digits_config(tmp_path / "cut", epochs=1))
    run_train(digits_config(tmp_path / "cut", epochs=4, resume=True))

    whole = outputs.load_checkpoint(tmp_path / "whole" / "last.pt")
    cut = outputs.load_checkpoint(tmp_path / "cut" / "last.pt")
    assert cut["epoch"] == 4
    assert all(torch.equal(whole["model"][k], cut["model"][k]) for k in whole["model"])
    lrs = [r["lr"] for r in outputs.read_metrics(tmp_path / "cut")]
    assert lrs == [r["lr"] for r in outputs.read_metrics(tmp_path / "whole")]
    assert lrs[0] > lrs[2] > lrs[3]
    record = json.loads((tmp_path / "cut" / "run.json").read_text())
    assert record["schedule"]["epochs"] == 4 and record["schedule"]["milestones"] == [2, 3]
    assert record["config"]["epochs"] == 4
    [extension] = record["extensions"]
    assert extension["from_epochs"] == 1 and extension["to_epochs"] == 4
    assert extension["at_epoch"] == 1


def test_resume_cannot_shorten_a_run_below_what_it_trained(tmp_path: Path) -> None:
    run_train(digits_config(tmp_path / "run", epochs=2))
    with pytest.raises(ConfigError, match="already trained 2 epochs"):
        run_train(digits_config(tmp_path / "run", epochs=1, resume=True))


def test_resume_with_other_settings_is_refused_and_says_what_to_do(tmp_path: Path) -> None:
    run_train(digits_config(tmp_path / "run"))
    with pytest.raises(ConfigError, match="seed 1 -> 2.*run.json"):
        run_train(digits_config(tmp_path / "run", seed=2, resume=True))


def test_checkpoints_and_run_files_follow_the_umask(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        run_train(digits_config(tmp_path / "run"))
    finally:
        os.umask(previous)
    for name in ("last.pt", "best.pt", "run.json", "metrics.jsonl", "curves.png"):
        mode = stat.S_IMODE((tmp_path / "run" / name).stat().st_mode)
        assert mode == 0o644, f"{name} has mode {oct(mode)}"


@pytest.mark.slow
def test_a_run_stopped_inside_an_epoch_resumes_from_the_step_to_the_same_bits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--checkpoint-every 1: killed after step 2 of epoch 2 (4 steps each), resumed, it ends with
    the weights, EMA, optimiser state and step losses of a run never stopped (and never
    checkpointed inside its epochs)."""
    settings: dict[str, Any] = dict(epochs=2, max_samples=256, model_ema=True, model_ema_decay=0.5,
                                    eval_every=0)  # fmt: skip
    run_train(digits_config(tmp_path / "whole", **settings))

    real_save = outputs.save_checkpoint

    def stop_at_epoch_2_step_2(path: Path, state: dict[str, Any]) -> None:
        real_save(path, state)
        if state["epoch"] == 1 and state.get("step") == 2:
            raise KeyboardInterrupt("killed inside epoch 2")

    cut = tmp_path / "cut"
    monkeypatch.setattr(outputs, "save_checkpoint", stop_at_epoch_2_step_2)
    with pytest.raises(KeyboardInterrupt):
        run_train(digits_config(cut, checkpoint_every=1, **settings))
    monkeypatch.undo()
    assert outputs.load_checkpoint(cut / "last.pt")["step"] == 2
    assert [r["epoch"] for r in outputs.read_metrics(cut)] == [1]
    run_train(digits_config(cut, checkpoint_every=1, resume=True, **settings))

    a = outputs.load_checkpoint(tmp_path / "whole" / "last.pt")
    b = outputs.load_checkpoint(cut / "last.pt")
    assert "step" not in b and b["epoch"] == 2
    for key in ("model", "model_ema"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(),
                      strict=True):  # fmt: skip
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    steps = outputs.read_metrics(cut, outputs.STEP_LOSSES)
    assert steps == outputs.read_metrics(tmp_path / "whole", outputs.STEP_LOSSES)
    assert len(steps[1]["loss"]) == 4  # the served steps were not trained twice
    keep = ("epoch", "lr", "train_loss", "train_ce")
    assert [{k: r[k] for k in keep} for r in outputs.read_metrics(cut)] == [
        {k: r[k] for k in keep} for r in outputs.read_metrics(tmp_path / "whole")
    ]
