"""Model specs resolve to the zoo, to timm, or to the user's own file, with clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from click.testing import CliRunner

from kdcache.cli.models import models_command
from kdcache.errors import ConfigError, DataNotFoundError, UnknownNameError
from kdcache.models import build_model
from kdcache.models.cifar_vgg import CifarVGG


def test_zoo_names_win_over_timm_names() -> None:
    assert isinstance(build_model("vgg13", num_classes=100), CifarVGG)
    assert isinstance(build_model("cifar_vgg13", num_classes=100), CifarVGG)


def test_timm_names_build_timm_models_without_downloading() -> None:
    for spec in ("timm:resnet10t", "resnet10t"):
        model = build_model(spec, num_classes=7, in_chans=1)
        assert type(model).__module__.startswith("timm.")
        assert model(torch.randn(2, 1, 32, 32)).shape == (2, 7)


def test_timm_scheme_reaches_timms_own_vgg13() -> None:
    with torch.device("meta"):
        model = build_model("timm:vgg13", num_classes=100)
    assert type(model).__module__ == "timm.models.vgg"


def test_unknown_name_suggests_close_matches_and_the_models_command() -> None:
    with pytest.raises(UnknownNameError) as err:
        build_model("resnet65", num_classes=100)
    assert "resnet56" in str(err.value) and "kdcache models" in str(err.value)


def test_unknown_timm_name_is_an_unknown_name_error() -> None:
    with pytest.raises(UnknownNameError, match="unknown model 'no_such_net'"):
        build_model("timm:no_such_net", num_classes=100)


def test_asking_for_pretrained_weights_is_refused() -> None:
    with pytest.raises(ConfigError, match="never downloads"):
        build_model("timm:resnet10t", num_classes=10, pretrained=True)


def test_unsupported_keyword_arguments_are_a_config_error() -> None:
    with pytest.raises(ConfigError, match="wrn_16_1 rejected its arguments"):
        build_model("wrn_16_1", num_classes=10, stem_bias=True)


_USER_FILE = """
import torch.nn as nn

def build(num_classes, in_chans, hidden=8):
    layers = [nn.Flatten(), nn.LazyLinear(hidden), nn.ReLU(), nn.Linear(hidden, num_classes)]
    return nn.Sequential(*layers)

def not_a_model(num_classes, in_chans):
    return 42
"""


@pytest.fixture
def user_file(tmp_path: Path) -> Path:
    path = tmp_path / "my_nets.py"
    path.write_text(_USER_FILE)
    return path


def test_a_model_file_factory_builds_the_users_model(user_file: Path) -> None:
    model = build_model(f"{user_file}:build", num_classes=5, in_chans=1, hidden=4)
    assert model(torch.randn(3, 1, 8, 8)).shape == (3, 5)
    assert model[3].in_features == 4


@pytest.mark.parametrize(
    ("spec_suffix", "error", "match"),
    [
        ("", ConfigError, "must read PATH.py:FACTORY"),
        (
            ":missing",
            ConfigError,
            r"no callable 'missing'; callables found: \['build', 'not_a_model'\]",
        ),
        (":not_a_model", ConfigError, "returned int, expected a torch.nn.Module"),
    ],
)
def test_bad_model_file_specs_say_what_is_wrong(
    user_file: Path, spec_suffix: str, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        build_model(f"{user_file}{spec_suffix}", num_classes=5)


def test_a_missing_model_file_is_a_data_not_found_error(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError, match="model file not found"):
        build_model(f"{tmp_path / 'absent.py'}:build", num_classes=5)


def test_a_model_file_that_fails_to_import_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text("import no_such_module_xyz\n")
    with pytest.raises(ConfigError, match="importing model file .*broken.py failed"):
        build_model(f"{tmp_path / 'broken.py'}:build", num_classes=5)


def test_models_command_lists_the_zoo_with_parameter_counts() -> None:
    result = CliRunner().invoke(models_command, [])
    assert result.exit_code == 0, result.output
    assert "resnet56" in result.output and "861,620" in result.output
    assert "cifar_MobileNetV2" in result.output


def test_models_command_lists_matching_timm_names() -> None:
    result = CliRunner().invoke(models_command, ["--timm", "vgg13*"])
    assert result.exit_code == 0, result.output
    assert "timm:vgg13_bn" in result.output
    assert timm.is_model("vgg13_bn")


_NO_IN_CHANS = """
import torch.nn as nn

def make(num_classes=10):  # the shape a user writes first: no in_chans
    return nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(4, num_classes))

def rgb_only(num_classes=10):
    return nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(12, num_classes))

def no_classes(width):
    return nn.Linear(width, 2)
"""


@pytest.fixture
def no_in_chans_file(tmp_path: Path) -> Path:
    path = tmp_path / "plain_nets.py"
    path.write_text(_NO_IN_CHANS)
    return path


def test_a_factory_without_in_chans_gets_only_num_classes(no_in_chans_file: Path) -> None:
    model = build_model(f"{no_in_chans_file}:make", num_classes=7, in_chans=1)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 7)


def test_a_factory_without_num_classes_is_told_the_signature(no_in_chans_file: Path) -> None:
    with pytest.raises(ConfigError, match=r"does not accept the keyword\(s\) num_classes.*"
                       r"def FACTORY\(num_classes, in_chans=3"):  # fmt: skip
        build_model(f"{no_in_chans_file}:no_classes", num_classes=7, in_chans=1)


def test_extract_with_a_factory_without_in_chans(no_in_chans_file: Path, tmp_path: Path) -> None:
    from kdcache.cli import main

    def extract(factory: str) -> tuple[int, str]:
        weights = tmp_path / f"{factory}.pth"
        torch.save(build_model(f"{no_in_chans_file}:{factory}", 10).state_dict(), weights)
        args = ["extract", "--teacher", f"{no_in_chans_file}:{factory}", "--weights", weights,
                "--dataset", "digits",
                "--split", "test", "--recipe", "none", "--views", "1", "--workers", "0",
                "--no-progress", "--out", str(tmp_path / factory)]  # fmt: skip
        result = CliRunner().invoke(main, [str(a) for a in args])
        return result.exit_code, result.output

    code, output = extract("make")
    assert code == 0, output
    code, output = extract("rgb_only")  # 3-channel model, 1-channel data: one clear line
    assert code == 1 and "Error:" in output and "bug in kdcache" not in output, output
