"""`kdcache eval` of any weights with the run's data folder; `verify` without data skips replay."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

import kdcache.data
from kdcache.cli import main
from kdcache.errors import ConfigError
from kdcache.training.config import TrainConfig
from kdcache.training.evaluation import evaluate_checkpoint
from kdcache.training.loop import run_train


def cli(args: list[object]) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 1-epoch CE run on 64 digits; its run.json names a (digits-ignored) data folder."""
    out = tmp_path_factory.mktemp("eval") / "run"
    run_train(
        TrainConfig(student="resnet8", out=str(out), dataset="digits", epochs=1, batch_size=64,
                    max_samples=64, workers=0, device="cpu", data_dir="/the/runs/data")
    )  # fmt: skip
    return out


def test_eval_reads_a_plain_state_dict_given_the_model_and_dataset(
    digits_run: Path, tmp_path: Path
) -> None:
    state = torch.load(digits_run / "last.pt", weights_only=True)
    plain = tmp_path / "student_state_dict.pth"
    torch.save(state["model"], plain)
    code, output = cli(["eval", plain, "--model", "resnet8", "--dataset", "digits",
                        "--workers", "0"])  # fmt: skip
    assert code == 0, output
    code, reference = cli(["eval", digits_run / "last.pt", "--workers", "0"])
    assert code == 0, reference
    assert output.split(": ", 1)[1] == reference.split(": ", 1)[1]  # the same top-1 / top-5


def test_eval_reads_a_teacher_style_checkpoint_beside_a_run_json(digits_run: Path) -> None:
    state = torch.load(digits_run / "last.pt", weights_only=True)
    teacher_style = digits_run / "teacher.pth"  # {'state_dict': ..., 'epoch': ...}, as CRD saves
    torch.save({"state_dict": state["model"], "epoch": 240}, teacher_style)
    try:
        top1, _, n = evaluate_checkpoint(str(teacher_style), None, None, workers=0,
                                         model_name="resnet8")  # fmt: skip
    finally:
        teacher_style.unlink()
    assert n > 0 and 0.0 <= top1 <= 100.0


def test_plain_weights_without_a_model_name_say_to_pass_model(
    digits_run: Path, tmp_path: Path
) -> None:
    plain = tmp_path / "weights.pth"
    torch.save(torch.load(digits_run / "last.pt", weights_only=True)["model"], plain)
    code, output = cli(["eval", plain])
    assert code == 1 and "--model NAME" in output and "--dataset NAME" in output
    assert "Traceback" not in output and "KeyError" not in output


def test_eval_defaults_to_the_runs_data_folder(
    digits_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[Any] = []
    real = kdcache.data.load_dataset

    def recording(name: str, data_dir: Any, split: str, *args: Any, **kwargs: Any) -> Any:
        seen.append(data_dir)
        return real(name, data_dir, split, *args, **kwargs)

    monkeypatch.setattr(kdcache.data, "load_dataset", recording)
    evaluate_checkpoint(str(digits_run / "last.pt"), None, None, workers=0)
    evaluate_checkpoint(str(digits_run / "last.pt"), "/given", None, workers=0)
    assert seen == ["/the/runs/data", "/given"]


@pytest.fixture(scope="module")
def digits_cache(tmp_path_factory: pytest.TempPathFactory, digits_teacher_weights: Path) -> Path:
    out = tmp_path_factory.mktemp("verify") / "cache"
    code, output = cli(["extract", "--teacher", "resnet8", "--weights", digits_teacher_weights,
                        "--dataset", "digits", "--views", "1", "--chunk-rows", "512",
                        "--workers", "0", "--out", out, "--no-progress"])  # fmt: skip
    assert code == 0, output
    return out


def _no_data_here(name: str, data_dir: Any, split: str, *args: Any, **kwargs: Any) -> Any:
    # What CIFAR / imagefolder do without a data folder.
    raise ConfigError(f"{name} needs a data directory (`data_dir`)")


def test_verify_without_data_reports_replay_skipped_and_exits_0(
    digits_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kdcache.data, "load_dataset", _no_data_here)
    code, output = cli(["verify", digits_cache])
    assert code == 0, output
    assert "[skipped] replay" in output and "--data-dir" in output and "`data_dir`" not in output
    assert "OK (replay skipped)" in output and "FAIL" not in output


def test_verify_with_a_data_dir_that_fails_to_load_still_fails(
    digits_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kdcache.data, "load_dataset", _no_data_here)
    code, output = cli(["verify", digits_cache, "--data-dir", "/nowhere"])
    assert code == 1 and "[FAIL] dataset" in output


def test_a_checkpoint_from_before_name_resolution_keeps_meaning_timms_model() -> None:
    from kdcache.training.evaluation import _checkpoint_model

    # Old checkpoints recorded the bare name, and a bare "resnet18" built timm's network then.
    assert _checkpoint_model({"student": "resnet18"}) == "timm:resnet18"
    assert _checkpoint_model({"student": "resnet8"}) == "resnet8"
    recorded = {"source": "zoo", "architecture": "ResNet18", "spec": "ResNet18"}
    assert _checkpoint_model({"student": "ResNet18", "student_model": recorded}) == "ResNet18"
