"""``kdcache losses`` prints what the registry knows."""

from __future__ import annotations

from click.testing import CliRunner

from kdcache.cli import main
from kdcache.losses import list_losses, loss_info


def test_losses_command_lists_every_loss_with_its_defaults_and_paper() -> None:
    result = CliRunner().invoke(main, ["losses"])
    assert result.exit_code == 0, result.output
    for name in list_losses():
        info = loss_info(name)
        assert f"{name}: {info.title}" in result.output
        assert info.reference in result.output
    assert "k=7" in result.output and "alpha=10.5" in result.output
    assert "ce: " in result.output


def test_losses_command_shows_one_loss() -> None:
    result = CliRunner().invoke(main, ["losses", "rld"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("rld: ")
    assert "dkd:" not in result.output
    assert "warmup_epochs=20" in result.output


def test_losses_command_rejects_an_unknown_name_cleanly() -> None:
    result = CliRunner().invoke(main, ["losses", "crd"])
    assert result.exit_code == 1
    assert "Error: unknown loss 'crd'; known losses: dkd, kd, ldrld, rld" in result.output
