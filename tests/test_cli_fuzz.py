"""Bad command lines, generated across every command: one clear line, a non-zero exit, no change.

Each case runs in-process (click's CliRunner) against a small "world" directory holding a complete
digits cache, a finished training run, packed / damaged / truncated archives, YAML files and odd
files. Every case must exit non-zero, print an error line and no traceback, and leave every byte
of the world as it was (no file changed, none created, none removed). The one exception is the
new output a case names (``{new}``): a training run that fails after creating its run folder
leaves it (``train`` creates the folder before it opens the cache); it is removed after each case.
"""

from __future__ import annotations

import shlex
import shutil
import socket
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from kdcache.cli import main

# 243 command lines, each in-process but many open a cache or a run: ~1 minute on 2 cores.
pytestmark = pytest.mark.slow

BIG = str(10**12)
HUGE = str(2**70)

# {placeholders} are paths in the world (see `world`); {ftp} is a loopback port nothing listens on.
EXTRACT = "extract --teacher resnet8 --weights {weights} --dataset digits --split test --workers 0"
TRAIN = "train --cache {cache} --student resnet8 --epochs 1 --workers 0 --no-progress --out {new}"
INT_VALUES = ["-1", "0", BIG, HUGE, "abc", "1.5", "''"]


def _int_option_cases() -> list[str]:
    """Every bounded integer option of every command, given a value out of its range."""
    options = {
        EXTRACT + " --out {new}": [
            "--views",
            "--chunk-rows",
            "--batch-size",
            "--topk",
            "--seed",
            "--workers",
        ],
        TRAIN: [
            "--epochs",
            "--batch-size",
            "--max-samples",
            "--window-blocks",
            "--seed",
            "--workers",
        ],
        "train --dataset digits --student resnet8 --out {new}": [
            "--num-views",
            "--aug-seed",
            "--block-rows",
        ],
        "eval {checkpoint}": ["--batch-size", "--workers"],
        "verify {cache}": ["--replay"],
        "ls {world}": ["--depth"],
        "models": ["--num-classes", "--in-chans"],
        "demo --out {new}": ["--views", "--teacher-epochs", "--student-epochs"],
    }
    valid = {"--seed": {"0", BIG}, "--aug-seed": {"0", BIG}, "--workers": {"0"}}
    valid |= {"--replay": {"0", BIG, HUGE}}  # replays every view there is
    valid |= {"--depth": {"0"}}
    cases = []
    for base, names in options.items():
        for name in names:
            for value in INT_VALUES:
                if value not in valid.get(name, set()):
                    cases.append(f"{base} {name} {value}")
    return cases


def _location_cases() -> list[str]:
    """Locations that are not caches: unknown schemes, unreachable servers, files, bad archives."""
    bad_locations = [
        "foo://bucket/cache",
        "{ftp}/cache",
        "{text}",
        "{missing}",
        "{notzip}",
        "{truncated}",
        "{world}/empty-dir",
    ]
    cases = []
    for loc in bad_locations:
        cases += [f"info {loc}", f"verify {loc} --replay 0", f"pack {loc} {{new}}.zip"]
        cases += [f"train --cache {loc} --student resnet8 --out {{new}} --workers 0"]
    cases += ["verify {damaged} --replay 0", TRAIN.replace("{cache}", "{damaged}")]
    cases += ["ls foo://bucket", "ls {ftp}/x", "ls {text}", "ls {missing}"]
    return cases


def _path_cases() -> list[str]:
    """Outputs in the way, inputs of the wrong kind."""
    return [
        EXTRACT + " --out {text}",
        EXTRACT + " --out {notzip}",
        EXTRACT + " --out foo://bucket/c",
        EXTRACT + " --out {ftp}/c",
        EXTRACT + " --out {cache} --seed 9",  # a cache of other settings: refused, untouched
        EXTRACT + " --out {world}",  # a non-empty directory that is not a cache
        EXTRACT + " --out {new} --weights {text}",
        EXTRACT + " --out {new} --weights {missing}",
        EXTRACT + " --out {new} --teacher nope",
        EXTRACT + " --out {new} --dataset nope",
        EXTRACT + " --out {new} --recipe nope",
        EXTRACT + " --out {new} --topk 11",
        TRAIN.replace("{new}", "{text}"),
        TRAIN.replace("{new}", "{run}"),  # an existing run without --resume / --force
        TRAIN.replace("{new}", "{run}") + " --resume --force",
        TRAIN + " --student nope",
        TRAIN + " --loss nope",
        TRAIN + " --loss-param nonsense",
        TRAIN + " --views 5",
        TRAIN + " --views a,b",
        TRAIN + " --resume",
        TRAIN + " --opt adamw",  # AdamW without its lr and weight decay
        TRAIN + " --label-smoothing nan",
        TRAIN + " --model-ema-decay 1",
        TRAIN + " --lr-warmup-epochs 5",  # longer than the 1-epoch run
        TRAIN + " --min-lr 0.01",  # a cosine setting on the step schedule
        TRAIN + " --tensorboard --opt nope",
        "train --student resnet8 --out {new}",
        "train --cache {cache} --dataset digits --student resnet8 --out {new}",
        "train --cache {cache} --out {new}",
        "eval {missing}",
        "eval {text}",
        "eval {raw_state_dict}",
        "eval {world}",
        "pack {cache} {text}",
        "pack {cache} {packed}",  # exists, no --force
        "pack {cache} {missing_dir}/out.zip",
        "pack {packed} {new}.zip",
        "pack {cache} s3://bucket/out.zip",
        "losses nope",
        "models --timm",
        "nope",
        "demo --out {text}",
    ]


def _yaml_cases() -> list[str]:
    """YAML settings of the wrong type or shape."""
    return [f"train --config {{yaml_{name}}}" for name in _YAML] + [
        "train --config {missing}",
        "train --config {text}",
        "train --config {notzip}",
    ]


_YAML = {
    "epochs_word": {"epochs": "ten"},
    "epochs_bool": {"epochs": True},
    "epochs_list": {"epochs": [1]},
    "lr_word": {"lr": "fast"},
    "seed_negative": {"seed": -1},
    "seed_huge": {"seed": 2**70},
    "views_words": {"views": ["a"]},
    "views_bool": {"views": True},
    "loss_params_list": {"loss_params": [1, 2]},
    "amp_word": {"amp": "maybe"},
    "unknown_key": {"colour": "blue"},
    "verify_replay": {"verify_replay": "sometimes"},
    "batch_zero": {"batch_size": 0},
    "window_huge": {"window_blocks": 0},
    "opt_unknown": {"opt": "lion"},
    "sched_number": {"sched": 3},
    "checkpoint_every_negative": {"checkpoint_every": -1},
    "model_ema_word": {"model_ema": "yes"},
}

CASES = _int_option_cases() + _location_cases() + _path_cases() + _yaml_cases()


def test_there_are_enough_cases_and_every_command_is_covered():
    assert len(CASES) >= 121
    commands = {shlex.split(c)[0] for c in CASES}
    assert commands >= {"extract", "info", "verify", "train", "eval", "losses", "models", "pack"}
    assert commands >= {"ls", "demo"}


def _snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` but ``new``: a file's bytes, None for a directory."""
    return {
        str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
        for p in sorted(root.rglob("*"))
        if p.relative_to(root).parts[0] != "new"
    }


def _cli(args: list[str]):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(main, args)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, digits_teacher_weights: Path) -> dict[str, str]:
    """A cache, a run, archives and odd files; the paths the cases name."""
    root = tmp_path_factory.mktemp("world")
    weights = root / "teacher.pth"
    shutil.copy(digits_teacher_weights, weights)
    cache = root / "cache"
    extract = EXTRACT.format(weights=weights) + f" --out {cache} --chunk-rows 128 --no-progress"
    result = _cli(shlex.split(extract))
    assert result.exit_code == 0, result.output
    run = root / "run"
    train = TRAIN.format(cache=cache, new=run) + " --max-samples 64 --batch-size 32"
    result = _cli(shlex.split(train + " --verify-replay off --no-amp"))
    assert result.exit_code == 0, result.output
    packed = root / "packed.zip"
    assert _cli(["pack", str(cache), str(packed)]).exit_code == 0
    data = packed.read_bytes()
    (root / "truncated.zip").write_bytes(data[: len(data) // 3])
    damaged = bytearray(data)
    for i in range(len(damaged) // 4, len(damaged) // 2, 997):  # inside the chunk members
        damaged[i] ^= 0xFF
    (root / "damaged.zip").write_bytes(bytes(damaged))
    (root / "notzip.zip").write_text("not a zip file\n")
    (root / "text.txt").write_text("hello\n")
    (root / "empty-dir").mkdir()
    torch.save(torch.load(weights, weights_only=True), root / "raw_state_dict.pt")
    paths = {
        "world": str(root),
        "weights": str(weights),
        "cache": str(cache),
        "run": str(run),
        "checkpoint": str(run / "last.pt"),
        "packed": str(packed),
        "truncated": str(root / "truncated.zip"),
        "damaged": str(root / "damaged.zip"),
        "notzip": str(root / "notzip.zip"),
        "text": str(root / "text.txt"),
        "raw_state_dict": str(root / "raw_state_dict.pt"),
        "missing": str(root / "missing.pt"),
        "missing_dir": str(root / "no-such-dir"),
        "new": str(root / "new"),
    }
    for name, settings in _YAML.items():
        path = root / f"{name}.yaml"
        base = {"cache": str(cache), "student": "resnet8", "out": str(root / "new"), "epochs": 1}
        path.write_text(yaml.safe_dump({**base, "workers": 0, **settings}))
        paths[f"yaml_{name}"] = str(path)
    with socket.socket() as s:  # a loopback port that was free a moment ago: refused at once
        s.bind(("127.0.0.1", 0))
        paths["ftp"] = f"ftp://127.0.0.1:{s.getsockname()[1]}"
    return paths


@pytest.mark.parametrize("case", CASES)
def test_a_bad_command_line_gets_one_clear_error_and_changes_nothing(
    case: str, world: dict[str, str], monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("KDCACHE_REMOTE_CACHE_DIR", "off")
    monkeypatch.setenv("KDCACHE_STORAGE_TIMEOUT", "5")
    root = Path(world["world"])
    before = _snapshot(root)
    args = [a.format(**world) for a in shlex.split(case)]
    result = CliRunner().invoke(main, args)
    shutil.rmtree(world["new"], ignore_errors=True)
    assert result.exit_code != 0, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # nothing escaped click
    assert "Traceback" not in result.output
    assert "Error:" in result.output or "FAIL" in result.output, result.output
    assert "a bug in kdcache" not in result.output, result.output
    assert _snapshot(root) == before
