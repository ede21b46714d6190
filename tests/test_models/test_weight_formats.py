"""Weights as people download them: safetensors files and timm training checkpoints with EMA."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from timm.utils import CheckpointSaver, ModelEmaV3

from kdcache.errors import WeightsError
from kdcache.models import build_model, load_checkpoint_state_dict


def _seeded(name: str = "resnet8") -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(name, num_classes=10)


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", ["teacher.safetensors", "teacher.bin"])
def test_a_safetensors_file_loads_with_the_safetensors_library(
    tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _seeded()
    save_file(model.state_dict(), tmp_path / name)

    def no_torch_load(*args: object, **kwargs: object) -> None:
        raise AssertionError("torch.load must not read a safetensors file")

    monkeypatch.setattr(torch, "load", no_torch_load)
    loaded = build_model("resnet8", 10, weights=tmp_path / name)
    assert _same(loaded.state_dict(), model.state_dict())


def test_a_safetensors_file_of_another_model_lists_the_keys(tmp_path: Path) -> None:
    save_file(_seeded("wrn_16_1").state_dict(), tmp_path / "wrn.safetensors")
    with pytest.raises(WeightsError) as info:
        build_model("resnet8", 10, weights=tmp_path / "wrn.safetensors")
    assert "missing keys" in str(info.value) and "unexpected keys" in str(info.value)


def test_a_damaged_safetensors_file_is_a_weights_error(tmp_path: Path) -> None:
    save_file(_seeded().state_dict(), tmp_path / "t.safetensors")
    data = (tmp_path / "t.safetensors").read_bytes()
    (tmp_path / "t.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="could not read safetensors weights"):
        load_checkpoint_state_dict(tmp_path / "t.safetensors")


@pytest.fixture
def timm_checkpoint(tmp_path: Path) -> tuple[Path, torch.nn.Module, torch.nn.Module]:
    """A checkpoint written by timm's own CheckpointSaver (as ``train.py`` does): ``state_dict``,
    ``state_dict_ema``, ``optimizer`` and the ``args`` Namespace."""
    model = _seeded()
    ema = ModelEmaV3(model, decay=0.5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # the plain weights move on; the EMA lags behind
    saver = CheckpointSaver(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        args=argparse.Namespace(model="resnet8", lr=0.1),
        model_ema=ema,
        checkpoint_dir=str(tmp_path),
        recovery_dir=str(tmp_path),
    )
    saver.save_checkpoint(epoch=0, metric=1.0)
    return tmp_path / "last.pth.tar", model, ema.module


def test_a_timm_checkpoint_loads_its_plain_weights_by_default(timm_checkpoint) -> None:
    path, model, ema = timm_checkpoint
    loaded = build_model("resnet8", 10, weights=path)
    assert _same(loaded.state_dict(), model.state_dict())
    assert not _same(loaded.state_dict(), ema.state_dict())


def test_the_ema_option_loads_a_timm_checkpoints_ema_weights(timm_checkpoint) -> None:
    path, _, ema = timm_checkpoint
    assert _same(build_model("resnet8", 10, weights=path, ema=True).state_dict(), ema.state_dict())


def test_the_ema_option_reads_a_deit_style_model_ema_entry(tmp_path: Path) -> None:
    plain, ema = _seeded(), _seeded()
    with torch.no_grad():
        ema.fc.bias.add_(1.0)
    torch.save({"model": plain.state_dict(), "model_ema": ema.state_dict()}, tmp_path / "c.pth")
    assert _same(load_checkpoint_state_dict(tmp_path / "c.pth"), plain.state_dict())
    assert _same(load_checkpoint_state_dict(tmp_path / "c.pth", ema=True), ema.state_dict())


def test_the_ema_option_without_ema_weights_says_what_the_file_holds(tmp_path: Path) -> None:
    torch.save({"state_dict": _seeded().state_dict(), "epoch": 3}, tmp_path / "c.pth")
    with pytest.raises(WeightsError, match=r"no EMA weights .*top-level keys: epoch, state_dict"):
        load_checkpoint_state_dict(tmp_path / "c.pth", ema=True)
    save_file(_seeded().state_dict(), tmp_path / "c.safetensors")
    with pytest.raises(WeightsError, match="holds one set of weights"):
        load_checkpoint_state_dict(tmp_path / "c.safetensors", ema=True)


def test_ema_weights_of_another_model_list_the_keys(tmp_path: Path) -> None:
    other = _seeded("wrn_16_1").state_dict()
    torch.save({"state_dict": _seeded().state_dict(), "state_dict_ema": other}, tmp_path / "c.pth")
    with pytest.raises(WeightsError, match="missing keys"):
        build_model("resnet8", 10, weights=tmp_path / "c.pth", ema=True)


def test_extract_records_the_ema_choice_and_verify_reuses_it(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from kdcache.cache.reader import open_cache
    from kdcache.cli import main

    torch.manual_seed(0)
    grey = build_model("resnet8", 10, in_chans=1)
    ema = ModelEmaV3(grey, decay=0.5)
    with torch.no_grad():
        for p in grey.parameters():
            p.add_(0.1)
    torch.save(
        {"state_dict": grey.state_dict(), "state_dict_ema": ema.module.state_dict()},
        tmp_path / "grey.pth",
    )
    out = tmp_path / "cache"
    args = ["extract", "--teacher", "resnet8", "--weights", tmp_path / "grey.pth", "--ema",
            "--dataset", "digits", "--recipe", "none", "--dtype", "float32", "--workers", "0",
            "--out", out, "--no-progress"]  # fmt: skip
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    assert open_cache(str(out)).identity.teacher.weights_ema
    check = ["verify", out, "--teacher-weights", tmp_path / "grey.pth", "--replay", "4"]
    result = CliRunner().invoke(main, [str(a) for a in check])
    assert result.exit_code == 0, result.output
