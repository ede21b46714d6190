"""The CLI's options: train's are read into a TrainConfig by name, shared ones are declared once."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click
import pytest

from kdcache.cli import main
from kdcache.cli._common import PREPROCESSING_HELP, RECIPE_HELP
from kdcache.cli.errors import in_flags
from kdcache.cli.train import train_command, train_config
from kdcache.cli.train_options import COMMAND_ONLY
from kdcache.errors import ConfigError
from kdcache.training.config import TrainConfig

CLI = Path(__file__).resolve().parents[1] / "kdcache" / "cli"


def _config(*args: str) -> TrainConfig:
    ctx = train_command.make_context("train", list(args))
    return train_config(ctx, dict(ctx.params))


def _command(name: str) -> click.Command:
    command = main.get_command(click.Context(main), name)
    assert command is not None
    return command


def test_every_train_option_is_a_train_config_field_or_the_commands_own() -> None:
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    names = {p.name for p in train_command.params if p.expose_value}
    assert COMMAND_ONLY <= names
    assert names - COMMAND_ONLY <= fields, sorted(names - COMMAND_ONLY - fields)


def test_flags_override_the_yaml_file_and_defaults_fill_the_rest(tmp_path: Path) -> None:
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text(
        "student: resnet8\nout: run\ndataset: digits\nloss: kd\nepochs: 3\nviews: [0]\n"
        "batch-size: 32\nloss_params: {temperature: 2, alpha: 1}\n"
    )
    config = _config(
        "--config", str(yaml_file), "--epochs", "1", "--views", "1,2", "--loss-param", "alpha=3"
    )
    assert (config.loss, config.epochs, config.views, config.batch_size) == ("kd", 1, (1, 2), 32)
    assert config.loss_params == {"temperature": 2, "alpha": 3}
    assert (config.lr, config.seed, config.opt) == (None, 0, "sgd")  # the flags' defaults
    assert not config.resume and _config("--config", str(yaml_file), "--resume").resume


def test_student_and_out_are_required_from_either_source() -> None:
    with pytest.raises(click.UsageError, match="--out is required"):
        _config("--student", "resnet8")


def test_shared_options_read_the_same_everywhere() -> None:
    for name in ("extract", "train", "verify", "eval"):
        data_dir = next(p for p in _command(name).params if p.name == "data_dir")
        assert isinstance(data_dir, click.Option) and data_dir.envvar == "KDCACHE_DATA_DIR"
    for name in ("extract", "train"):
        options = {p.name: p for p in _command(name).params if isinstance(p, click.Option)}
        assert PREPROCESSING_HELP in str(options["teacher_preprocessing"].help)
        assert RECIPE_HELP in str(options["recipe"].help)
    helps = {
        name: next(p for p in _command(name).params if p.name == "workers").help
        for name in ("extract", "train", "eval")
    }
    assert len(set(helps.values())) == 1, helps


@pytest.mark.parametrize("path", sorted(CLI.glob("*.py")), ids=lambda p: p.name)
def test_every_cli_module_is_under_300_lines(path: Path) -> None:
    assert len(path.read_text().splitlines()) < 300


def test_library_errors_name_settings_and_the_cli_writes_them_as_flags() -> None:
    from click.testing import CliRunner

    with pytest.raises(ConfigError) as library:
        TrainConfig(student="resnet8", out="run", dataset="digits", opt="adamw")
    assert str(library.value).startswith("`opt` adamw needs `lr` and `weight_decay`")
    assert "--" not in str(library.value)
    result = CliRunner().invoke(
        main, ["train", "--dataset", "digits", "--student", "resnet8", "--out", "r"]
        + ["--opt", "adamw"]  # fmt: skip
    )
    assert result.exit_code == 1
    assert "Error: --opt adamw needs --lr and --weight-decay" in result.output


def test_in_flags_maps_only_the_commands_own_settings() -> None:
    extract = _command("extract")
    message = "`extra_temperatures` need `topk`; `eval_batch_size` and `kdcache extract --topk K`"
    assert in_flags(message, extract) == (
        "--sparse-temperature need --topk; `eval_batch_size` and `kdcache extract --topk K`"
    )
    assert in_flags(message, None) == message
    assert in_flags("`amp` off", train_command) == "--amp off"  # a --x/--no-x pair: its on flag


def test_every_extract_option_is_an_extract_config_field_or_the_commands_own() -> None:
    from kdcache.extract import ExtractConfig

    fields = {f.name for f in dataclasses.fields(ExtractConfig)}
    names = {p.name for p in _command("extract").params if p.expose_value}
    assert names - {"exhaustive", "no_progress"} <= fields, sorted(names - fields)
