"""Where local copies of a remote cache go: argument, else $KDCACHE_REMOTE_CACHE_DIR, else default.

The CLI's --remote-cache-dir reaches the library as an argument; it never writes os.environ.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from kdcache.cache import remote
from kdcache.cache.remote import REMOTE_CACHE_ENV
from kdcache.cli import main
from kdcache.errors import DataNotFoundError


def test_the_argument_wins_over_the_environment_which_wins_over_the_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv(REMOTE_CACHE_ENV, raising=False)
    assert remote.local_cache_root() == tmp_path / "xdg" / "kdcache" / "remote"
    monkeypatch.setenv(REMOTE_CACHE_ENV, str(tmp_path / "shell"))
    assert remote.local_cache_root() == tmp_path / "shell"
    assert remote.local_cache_root(tmp_path / "argument") == tmp_path / "argument"
    assert remote.local_cache_root("off") is None  # the argument may turn copies off ...
    monkeypatch.setenv(REMOTE_CACHE_ENV, "off")
    assert remote.local_cache_root(tmp_path / "argument") == tmp_path / "argument"  # ... or on


class Recorder:
    """Stands in for open_cache: records what it was given and what the environment said."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, str | None]] = []

    def __call__(self, location: Any, *, cache_dir: Any = None) -> Any:
        self.calls.append((cache_dir, os.environ.get(REMOTE_CACHE_ENV)))
        raise DataNotFoundError(f"no kdcache cache at {location}")


@pytest.mark.parametrize(
    "patched, args",
    [
        ("kdcache.cache.reader.open_cache", ["info", "s3://team/r56"]),
        ("kdcache.cache.pack.open_cache", ["pack", "s3://team/r56", "{tmp}/r56.zip"]),
        (
            "kdcache.training.run_data.open_cache",
            ["train", "--cache", "s3://team/r56", "--student", "resnet8", "--out", "{tmp}/run",
             "--no-progress"],
        ),
    ],
)  # fmt: skip
def test_the_flag_is_passed_as_an_argument_and_the_environment_is_left_alone(
    patched: str, args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = Recorder()
    monkeypatch.setattr(patched, recorder)
    monkeypatch.setenv(REMOTE_CACHE_ENV, "set-in-the-shell")
    flag_dir = str(tmp_path / "flag-copies")
    argv = [a.format(tmp=tmp_path) for a in args] + ["--remote-cache-dir", flag_dir]
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 1 and "no kdcache cache at s3://team/r56" in result.output
    assert recorder.calls == [(flag_dir, "set-in-the-shell")]
    assert os.environ[REMOTE_CACHE_ENV] == "set-in-the-shell"


def test_without_the_flag_the_library_is_given_nothing_and_reads_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = Recorder()
    monkeypatch.setattr("kdcache.cache.reader.open_cache", recorder)
    monkeypatch.setenv(REMOTE_CACHE_ENV, str(tmp_path / "shell"))
    assert CliRunner().invoke(main, ["info", "s3://team/r56"]).exit_code == 1
    assert recorder.calls == [(None, str(tmp_path / "shell"))]
