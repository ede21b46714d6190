"""Student arrays: each student is bit-identical to its separate run, fails alone, resumes, and a
bad array is refused before any folder is touched."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from kdcache.cli import main
from kdcache.errors import ConfigError, KdcacheError
from kdcache.training import outputs
from kdcache.training.array import FAILED, expand_array, run_array
from kdcache.training.loop import run_train

FILES = ("run.json", "metrics.jsonl", "steps.jsonl", "summary.csv", "last.pt", "best.pt")


def settings(cache: Path, out: Path, **extra: Any) -> dict[str, Any]:
    return {"cache": str(cache), "out": str(out), "student": "resnet8", "epochs": 2,
            "batch_size": 50, "max_samples": 200, "workers": 0, **extra}  # fmt: skip


def step_losses(run: Path) -> list[float]:
    lines = (run / outputs.STEP_LOSSES).read_text().splitlines()
    return [x for line in lines for x in json.loads(line)["loss"]]


@pytest.mark.slow
def test_each_student_is_its_separate_run(fp32_cache, tmp_path):
    array = expand_array(settings(fp32_cache, tmp_path / "array", loss=("ce", "kd"), seed=(0, 3),
                                  student=("resnet8", "resnet14")))  # fmt: skip
    assert len(array) == 8
    assert {m.name for m in array.members} >= {"student-resnet8_loss-ce_seed-0",
                                               "student-resnet14_loss-kd_seed-3"}  # fmt: skip
    result = run_array(array)
    assert not result.failed and result.finished
    for member in array.members[::3]:  # a mix of losses, seeds and both architectures
        alone = run_train(member.config.__class__.from_dict(
            {**member.config.to_dict(), "out": str(tmp_path / "alone" / member.name)}))  # fmt: skip
        got = next(m.result for m in result.members if m.name == member.name)
        assert got.step_losses == alone.step_losses
        assert (got.final_top1, got.best_top1) == (alone.final_top1, alone.best_top1)
        folder = array.root / member.name
        assert all((folder / name).is_file() for name in FILES)
        assert step_losses(folder) == step_losses(alone.out)
    assert (array.root / "array.csv").is_file() is False  # the CLI writes the table


def test_a_diverging_student_stops_alone(fp32_cache, tmp_path):
    code, output = cli(["train", "--cache", fp32_cache, "--student", "resnet8", "--loss", "kd",
                        "--lr", "0.05,1e30", "--epochs", "1", "--batch-size", "50",
                        "--max-samples", "200", "--workers", "0", "--out", tmp_path / "a",
                        "--no-progress"])  # fmt: skip
    assert code == 1 and "Traceback" not in output
    assert "student lr-1e+30 failed: the training loss is" in output
    assert (tmp_path / "a" / "lr-1e+30" / FAILED).is_file()
    assert (tmp_path / "a" / "lr-0.05" / "best.pt").is_file()
    assert not (tmp_path / "a" / "lr-0.05" / FAILED).exists()
    table = (tmp_path / "a" / "array.csv").read_text()
    assert "lr-0.05," in table and "lr-1e+30,,,,failed" in table


@pytest.mark.slow
def test_resume_inside_an_epoch_gives_the_uninterrupted_array(fp32_cache, tmp_path, monkeypatch):
    base = settings(fp32_cache, tmp_path / "whole", loss=("ce", "kd"), checkpoint_every=2)
    whole = run_array(expand_array(base))
    saves = []
    real = outputs.save_checkpoint

    def stop_at_third_save(path, state):  # type: ignore[no-untyped-def]
        real(path, state)
        saves.append(path)
        if len(saves) == 3:  # the second student, inside its first epoch
            raise KeyboardInterrupt("stopped")

    monkeypatch.setattr(outputs, "save_checkpoint", stop_at_third_save)
    cut = {**base, "out": str(tmp_path / "cut")}
    with pytest.raises(KeyboardInterrupt):
        run_array(expand_array(cut))
    monkeypatch.undo()
    resumed = run_array(expand_array({**cut, "resume": True}))
    for a, b in zip(whole.members, resumed.members, strict=True):
        assert step_losses(whole.root / a.name) == step_losses(resumed.root / b.name)
        assert a.result.final_top1 == b.result.final_top1
    extended = run_array(expand_array({**cut, "resume": True, "epochs": 3}))
    assert all(m.result.epochs_done == 3 for m in extended.members)


@pytest.mark.slow
def test_a_sweep_gives_each_student_its_own_settings(fp32_cache, tmp_path):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("- {name: dkd-b2, loss: dkd, loss-param: {beta: 2.0}}\n- {loss: kd}\n")
    sweep.write_text("- {name: dkd-b2, loss: dkd, loss_params: {beta: 2.0}}\n- {loss: kd}\n")
    code, output = cli(["train", "--cache", fp32_cache, "--student", "resnet8", "--epochs", "1",
                        "--batch-size", "50", "--max-samples", "100", "--workers", "0",
                        "--sweep", sweep, "--seed", "0,1", "--out", tmp_path / "s",
                        "--no-progress"])  # fmt: skip
    assert code == 0, output
    folders = sorted(p.name for p in (tmp_path / "s").iterdir() if p.is_dir())
    assert folders == ["dkd-b2_seed-0", "dkd-b2_seed-1", "loss-kd_seed-0", "loss-kd_seed-1"]
    record = json.loads((tmp_path / "s" / "dkd-b2_seed-1" / "run.json").read_text())
    assert record["config"]["loss_params"] == {"beta": 2.0} and record["config"]["seed"] == 1
    assert "dkd-b2" in output and "+-" in output  # the per-setting table over the two seeds


def cli(args: list[Any]) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--loss", "kd,dkdd"], "unknown loss 'dkdd'"),
        (["--loss", "kd,kd"], "lists a value twice"),
        (["--loss", "kd,"], "empty item"),
        (["--seed", "0,-1"], "-1"),
    ],
)
def test_bad_lists_are_refused_before_any_folder(fp32_cache, tmp_path, extra, message):
    code, output = cli(["train", "--cache", fp32_cache, "--student", "resnet8", "--workers", "0",
                        "--out", tmp_path / "a", "--no-progress", *extra])  # fmt: skip
    assert code != 0 and message in output and "Traceback" not in output
    assert not (tmp_path / "a").exists()


def test_students_that_do_not_share_the_stream_are_refused(fp32_cache, tmp_path):
    base = settings(fp32_cache, tmp_path / "a", loss="kd")
    with pytest.raises(ConfigError, match="share one stream.*`max_samples`"):
        expand_array(base, [{"max_samples": 100}, {"max_samples": 150}])
    with pytest.raises(ConfigError, match="same folder"):
        expand_array(base, [{"name": "x"}, {"name": "x"}])
    assert not (tmp_path / "a").exists()


def test_an_array_over_a_sparse_cache_with_a_dense_loss_is_refused_up_front(
    digits_teacher_weights, tmp_path
):
    code, output = cli(["extract", "--teacher", "resnet8", "--weights", digits_teacher_weights,
                        "--dataset", "digits", "--views", "1", "--topk", "3", "--workers", "0",
                        "--out", tmp_path / "sparse", "--no-progress"])  # fmt: skip
    assert code == 0, output
    array = expand_array(settings(tmp_path / "sparse", tmp_path / "a", loss=("kd", "dkd")))
    with pytest.raises(KdcacheError, match="student loss-dkd: .*sparse.approx"):
        run_array(array)
    assert not (tmp_path / "a").exists()
