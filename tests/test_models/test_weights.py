"""Checkpoints load strictly through the common wrappers and fail with a useful message."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pytest
import torch
import torch.serialization

from kdcache.errors import DataNotFoundError, WeightsError
from kdcache.models import (
    build_model,
    count_parameters,
    load_checkpoint_state_dict,
    load_weights,
    weights_sha256,
)


def _resnet8_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return build_model("resnet8", num_classes=100).state_dict()


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("wrapper", [None, "state_dict", "model_state_dict", "model", "net"])
def test_checkpoint_wrappers_are_unwrapped(tmp_path: Path, wrapper: str | None) -> None:
    sd = _resnet8_state()
    obj = sd if wrapper is None else {wrapper: sd, "epoch": 240, "best_acc": 0.5}
    torch.save(obj, tmp_path / "ckpt.pth")
    _assert_same(load_checkpoint_state_dict(tmp_path / "ckpt.pth"), sd)


def test_nested_wrappers_are_unwrapped(tmp_path: Path) -> None:
    sd = _resnet8_state()
    torch.save({"model": {"state_dict": sd}}, tmp_path / "ckpt.pth")
    _assert_same(load_checkpoint_state_dict(tmp_path / "ckpt.pth"), sd)


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "module._orig_mod."])
def test_data_parallel_and_compile_prefixes_are_stripped(tmp_path: Path, prefix: str) -> None:
    sd = _resnet8_state()
    torch.save({prefix + k: v for k, v in sd.items()}, tmp_path / "ckpt.pth")
    model = build_model("resnet8", num_classes=100)
    assert load_weights(model, tmp_path / "ckpt.pth").ok
    _assert_same(model.state_dict(), sd)


def test_tensors_saved_on_cuda_load_on_the_cpu(tmp_path: Path, monkeypatch) -> None:
    # Make torch.save tag every storage as "cuda:0", as a checkpoint saved on a GPU is.
    monkeypatch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
    sd = _resnet8_state()
    torch.save(sd, tmp_path / "cuda.pth")
    monkeypatch.undo()
    loaded = load_checkpoint_state_dict(tmp_path / "cuda.pth")
    assert {t.device.type for t in loaded.values()} == {"cpu"}
    _assert_same(loaded, sd)


def test_strict_mismatch_lists_missing_and_unexpected_keys() -> None:
    sd = _resnet8_state()
    del sd["layer3.0.bn2.weight"]
    sd["head.weight"] = torch.zeros(3)
    with pytest.raises(WeightsError) as err:
        load_weights(build_model("resnet8", num_classes=100), sd, arch="resnet8")
    message = str(err.value)
    assert "resnet8" in message
    assert "missing keys (1): layer3.0.bn2.weight" in message
    assert "unexpected keys (1): head.weight" in message


def test_weights_of_another_architecture_are_refused() -> None:
    torch.manual_seed(0)
    wrn = build_model("wrn_16_1", num_classes=100).state_dict()
    with pytest.raises(
        WeightsError, match=r"do not fit the resnet8 architecture(.|\n)*\.\.\. \(\d+ more\)"
    ):
        load_weights(build_model("resnet8", num_classes=100), wrn, arch="resnet8")


def test_a_class_count_mismatch_shows_both_shapes() -> None:
    with pytest.raises(
        WeightsError, match=r"fc\.weight checkpoint \[100, 64\] vs model \[10, 64\]"
    ):
        load_weights(build_model("resnet8", num_classes=10), _resnet8_state())


def test_non_strict_loading_keeps_what_fits_and_reports_the_rest() -> None:
    model = build_model("resnet8", num_classes=10)
    report = load_weights(model, _resnet8_state(), strict=False)
    assert [k for k, _, _ in report.mismatched] == ["fc.weight", "fc.bias"]
    assert torch.equal(model.conv1.weight, _resnet8_state()["conv1.weight"])


def test_old_checkpoints_without_num_batches_tracked_still_load_strictly() -> None:
    sd = {k: v for k, v in _resnet8_state().items() if not k.endswith("num_batches_tracked")}
    assert load_weights(build_model("resnet8", num_classes=100), sd).ok


def test_a_missing_weights_file_is_a_data_not_found_error(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError, match="weights file not found"):
        load_checkpoint_state_dict(tmp_path / "nope.pth")


def test_an_unreadable_file_is_a_weights_error(tmp_path: Path) -> None:
    (tmp_path / "junk.pth").write_bytes(b"definitely not a checkpoint")
    with pytest.raises(WeightsError, match="could not read weights"):
        load_checkpoint_state_dict(tmp_path / "junk.pth")


class _Pickled:  # an arbitrary object: weights_only loading must refuse it
    pass


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    torch.save({"model": _Pickled()}, tmp_path / "obj.pth")
    with pytest.raises(WeightsError, match="weights_only=True"):
        load_checkpoint_state_dict(tmp_path / "obj.pth")


def test_a_file_without_a_state_dict_is_a_weights_error(tmp_path: Path) -> None:
    torch.save({"epoch": 3, "acc": 0.7}, tmp_path / "meta.pth")
    with pytest.raises(WeightsError, match="not a state dict"):
        load_checkpoint_state_dict(tmp_path / "meta.pth")


def test_weights_sha256_is_the_sha256_of_the_file_bytes(tmp_path: Path) -> None:
    torch.save(_resnet8_state(), tmp_path / "w.pth")
    expected = hashlib.sha256((tmp_path / "w.pth").read_bytes()).hexdigest()
    assert weights_sha256(tmp_path / "w.pth") == expected


def test_count_parameters_excludes_buffers() -> None:
    model = build_model("resnet8", num_classes=100)
    assert count_parameters(model) == sum(p.numel() for p in model.parameters()) == 83892


def test_build_model_turns_on_stem_bias_when_the_checkpoint_has_conv1_bias(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    torch.manual_seed(0)
    sd = build_model("resnet8", num_classes=100, stem_bias=True).state_dict()
    torch.save(sd, tmp_path / "biased.pth")
    with caplog.at_level(logging.INFO, logger="kdcache.models"):
        model = build_model("resnet8", 100, weights=tmp_path / "biased.pth")
    assert "stem_bias=True" in caplog.text
    _assert_same(model.state_dict(), sd)


def test_build_model_without_weights_is_untrained() -> None:
    model = build_model("resnet8", 10, in_chans=1)
    assert model.conv1.weight.shape == (16, 1, 3, 3) and model.conv1.bias is None
