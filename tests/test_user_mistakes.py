"""Mistakes a new user makes, each met with one clear line rather than a silent wrong run."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from kdcache.cli import main
from kdcache.errors import ConfigError
from kdcache.training.config import TrainConfig


@pytest.mark.parametrize(
    ("overrides", "flag"),
    [
        (dict(recipe="imagenet"), "--recipe"),
        (dict(aug_seed=3), "--aug-seed"),
        (dict(num_views=4), "--num-views"),
        (dict(split="test"), "--split"),
        (dict(block_rows=64), "--block-rows"),
    ],
)
def test_view_settings_given_with_a_cache_are_refused_not_ignored(
    overrides: dict, flag: str
) -> None:
    with pytest.raises(ConfigError, match=f"{flag} only appl(y|ies) without --cache"):
        TrainConfig(student="resnet8", out="run", cache="some/cache", **overrides)


def test_view_settings_still_apply_without_a_cache() -> None:
    config = TrainConfig(student="resnet8", out="run", dataset="digits", recipe="imagenet",
                         aug_seed=3, num_views=4, split="test", block_rows=64)  # fmt: skip
    assert config.recipe == "imagenet" and config.num_views == 4


def test_the_cli_refuses_aug_seed_with_a_cache_before_writing_anything(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", "--cache", str(tmp_path / "cache"),
                                       "--student", "resnet8", "--aug-seed", "3",
                                       "--out", str(out)])  # fmt: skip
    assert result.exit_code == 1
    assert "--aug-seed only applies without --cache" in result.output
    assert not out.exists()
