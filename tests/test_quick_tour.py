"""The README's quick tour runs as written: every complete `kdcache train` / `eval` command of it,
made small (1 epoch, 64 samples) and pointed at digits stand-ins for CIFAR-100 and the ResNet-56.

The stand-ins keep each command's flags as the README spells them, so a renamed or removed option,
or a command that no longer prints its schedule, fails here. Commands with ``...`` are sketches
and are skipped; ``extract``, ``info`` and ``verify`` have their own tests on real data.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from kdcache.cli import main

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--epochs", "1", "--max-samples", "64", "--workers", "0", "--device", "cpu",
         "--no-progress"]  # fmt: skip


def quick_tour_commands() -> list[list[str]]:
    """The tour's ``kdcache train`` and ``kdcache eval`` commands, continuation lines joined."""
    readme = (REPO / "README.md").read_text()
    block = readme.split("## A quick tour", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    joined = re.sub(r"\\\n\s*", " ", block)
    commands = []
    for line in joined.splitlines():
        line = line.split(" #", 1)[0].strip()
        if line.startswith(("kdcache train ", "kdcache eval ")) and "..." not in line:
            commands.append(shlex.split(line))
    return commands


def cli(args: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory: pytest.TempPathFactory, digits_teacher_weights: Path) -> dict:
    """README path or name -> the digits stand-in: a dense and a top-K cache of the resnet8."""
    root = tmp_path_factory.mktemp("tour")
    extract = ["extract", "--teacher", "resnet8", "--weights", digits_teacher_weights, "--dataset",
               "digits", "--views", "2", "--workers", "0", "--no-progress"]  # fmt: skip
    for name, extra in (("dense", []), ("top10", ["--topk", "5"])):
        code, output = cli([*extract, *extra, "--out", root / name])
        assert code == 0, output
    return {
        "cache/r56-c100-top10": str(root / "top10"),
        "cache/r56-c100": str(root / "dense"),
        "resnet56.pth": str(digits_teacher_weights),
        "cifar100": "digits",
        "configs/": f"{REPO}/configs/",
    }


def localise(args: list[str], stand_ins: dict, runs: Path) -> list[str]:
    out = []
    for i, arg in enumerate(args):
        for readme_value, stand_in in stand_ins.items():
            if arg.startswith(readme_value):
                arg = stand_in + arg[len(readme_value) :]
                break
        if arg.startswith("runs/"):
            arg = str(runs / arg)
        if arg == "resnet56" and args[i - 1] in ("--teacher", "--model"):
            arg = "resnet8"  # the architecture of the stand-in weights
        out.append(arg)
    return out


def test_the_quick_tour_has_the_commands_this_test_runs() -> None:
    commands = quick_tour_commands()
    trains = [c for c in commands if c[1] == "train"]
    assert len(trains) >= 6 and any("--config" in c for c in trains)
    assert any(c[1] == "eval" for c in commands)


@pytest.mark.slow
def test_each_quick_tour_command_prints_its_schedule_and_exits_0(
    stand_ins: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # a config's own relative out: lands here, not in the repository
    for args in quick_tour_commands():
        local = localise(args[1:], stand_ins, tmp_path)
        if args[1] == "train":
            local += SMALL
        if "--lr-warmup-epochs" in local:  # the tour's warm-up is longer than 1 epoch
            local += ["--lr-warmup-epochs", "0.5"]
        code, output = cli(local)
        assert code == 0, f"{shlex.join(args)}\n{output}"
        if args[1] == "train":
            assert re.search(r"^train: .* 1 epoch, batch \d+, ", output, re.M), output
            lists = ("--loss", "--seed", "--student", "--lr", "--weight-decay")
            pairs = zip(args, args[1:], strict=False)
            if any(flag in lists and "," in value for flag, value in pairs):  # a student array
                assert re.search(r"^array of \d+ students in ", output, re.M), output
            else:
                assert "trained " in output
        else:
            assert "top-1" in output
