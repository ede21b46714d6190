"""A model name means exactly one network: case, zoo/timm collisions, and what runs record."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from kdcache.cache.reader import open_cache
from kdcache.cli import main
from kdcache.errors import UnknownNameError
from kdcache.models import (
    AmbiguousModelNameError,
    ModelRef,
    build_model,
    count_parameters,
    resolve_model_name,
)
from kdcache.models.cifar_resnetv2 import CifarResNetV2


def cli(args: list[object]) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


@pytest.mark.parametrize(
    ("name", "source", "architecture"),
    [
        ("ResNet18", "zoo", "ResNet18"),
        ("zoo:resnet18", "zoo", "ResNet18"),
        ("cifar_ResNet18", "zoo", "ResNet18"),
        ("timm:resnet18", "timm", "resnet18"),
        ("RESNET56", "zoo", "resnet56"),
        ("mobilenetv2", "zoo", "MobileNetV2"),
        ("vgg13", "zoo", "vgg13"),  # mdistiller's spelling: the CIFAR VGG, as before
        ("timm:vgg13", "timm", "vgg13"),
        ("resnet10t", "timm", "resnet10t"),
        ("nets.py:build", "file", "nets.py:build"),
    ],
)
def test_each_name_resolves_to_one_source_and_architecture(
    name: str, source: str, architecture: str
) -> None:
    assert resolve_model_name(name) == ModelRef(source, architecture)  # type: ignore[arg-type]


def test_the_canonical_spec_resolves_to_the_same_network_again() -> None:
    for name in ("RESNET56", "zoo:resnet18", "timm:resnet18", "vgg13", "resnet10t"):
        ref = resolve_model_name(name)
        assert resolve_model_name(ref.spec) == ref


def test_a_name_both_the_zoo_and_timm_know_is_an_error_naming_both_ways_to_choose() -> None:
    # Before: "resnet18" silently built timm's ImageNet ResNet-18 for a CIFAR run.
    with pytest.raises(AmbiguousModelNameError) as err:
        build_model("resnet18", num_classes=100)
    message = str(err.value)
    assert "'ResNet18'" in message and "'timm:resnet18'" in message
    assert isinstance(err.value, UnknownNameError)
    with pytest.raises(AmbiguousModelNameError):
        resolve_model_name("RESNET50")  # timm's resnet50 in capitals, the zoo's ResNet50 in lower


def test_a_zoo_name_in_another_case_builds_the_zoo_model() -> None:
    assert isinstance(build_model("zoo:RESNET50", num_classes=100), CifarResNetV2)
    small = build_model("RESNET8", num_classes=10, in_chans=1)
    assert count_parameters(small) == count_parameters(build_model("resnet8", 10, in_chans=1))


def test_the_zoo_and_timm_networks_of_a_shared_name_differ() -> None:
    zoo = count_parameters(build_model("zoo:resnet18", num_classes=100))
    timm_net = count_parameters(build_model("timm:resnet18", num_classes=100))
    assert zoo != timm_net


def test_a_misspelling_in_any_case_still_gets_did_you_mean() -> None:
    with pytest.raises(UnknownNameError, match="Did you mean: resnet56"):
        resolve_model_name("RESNET65")


def test_train_refuses_an_ambiguous_student_before_writing_anything(tmp_path: Path) -> None:
    out = tmp_path / "run"
    code, output = cli(["train", "--dataset", "digits", "--student", "resnet18", "--out", out,
                        "--no-progress"])  # fmt: skip
    assert code == 1 and "ambiguous" in output and "timm:resnet18" in output
    assert not out.exists()


def test_run_json_and_checkpoint_record_the_resolved_student(tmp_path: Path) -> None:
    out = tmp_path / "run"
    code, output = cli(["train", "--dataset", "digits", "--student", "RESNET8", "--epochs", "1",
                        "--max-samples", "64", "--workers", "0", "--device", "cpu", "--out", out,
                        "--no-progress"])  # fmt: skip
    assert code == 0, output
    record = json.loads((out / "run.json").read_text())
    assert record["models"]["student"] == {
        "source": "zoo",
        "architecture": "resnet8",
        "spec": "resnet8",
    }
    import torch

    state = torch.load(out / "last.pt", weights_only=True)
    assert state["student"] == "resnet8" and state["student_model"]["source"] == "zoo"


def test_a_cache_records_its_teacher_resolved(tmp_path: Path, digits_teacher_weights: Path) -> None:
    out = tmp_path / "cache"
    code, output = cli(["extract", "--teacher", "RESNET8", "--weights", digits_teacher_weights,
                        "--dataset", "digits", "--views", "1", "--chunk-rows", "512",
                        "--workers", "0", "--out", out, "--no-progress"])  # fmt: skip
    assert code == 0, output
    meta = open_cache(str(out)).meta
    assert meta.identity.teacher.name == "resnet8"  # canonical: any spelling, one fingerprint
    assert meta.teacher_model == {"source": "zoo", "architecture": "resnet8", "spec": "resnet8"}
    assert meta.format_version == "1.3"
