"""The ``kdcache`` command lines of the experiment, and running one inside a wall-clock deadline.

A seed's five methods are one student array: one ``kdcache train --sweep FILE`` command, the file
listing each method with its published settings (protocol.py), one run folder per method under
its ``--out``. Under ``--sequential`` every method is a command of its own (``--loss NAME`` and its
extra flags).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from experiments.cifar100.protocol import Method

REPO = Path(__file__).resolve().parents[2]
# After SIGINT, how long a command may take to stop before it is killed. kdcache writes its
# checkpoints atomically, so a kill loses at most the epoch in progress.
STOP_GRACE_SECONDS = 20.0


@dataclass(frozen=True)
class TrainSetup:
    """What every student command of the experiment shares."""

    cache: Path
    data_dir: Path
    student: str
    solver: tuple[str, ...]  # protocol.solver_args(), with the runner's --epochs if given
    workers: int
    stream: str | None = None
    compile: bool = False


def shown(path: Path) -> str:
    """A path as the commands log shows it: relative to the repository when inside it."""
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def readable_commands(text: str, work: Path, data_dir: Path) -> str:
    """Logged commands as a reader can run them in a checkout: the dataset root written as
    ``DATA``, the work folder relative to the repository (``WORK`` when it lies outside it)."""
    inside = work.resolve().is_relative_to(REPO)
    work_as = os.path.relpath(work.resolve(), REPO) if inside else "WORK"
    for path, name in ((data_dir, "DATA"), (work, work_as)):
        for spelling in sorted({str(path), str(path.resolve())}, key=len, reverse=True):
            text = text.replace(spelling, name)
    return text


def extract_args(
    *, teacher: str, weights: Path, dataset: str, data_dir: Path, split: str, recipe: str,
    views: int | None, exhaustive: bool, out: Path, batch_size: int, workers: int,
) -> list[str]:  # fmt: skip
    args = ["extract", "--teacher", teacher, "--weights", shown(weights), "--dataset", dataset,
            "--data-dir", shown(data_dir), "--split", split, "--recipe", recipe, "--seed", "0",
            "--out", shown(out), "--batch-size", str(batch_size), "--workers", str(workers),
            "--no-progress"]  # fmt: skip
    if exhaustive:
        args.append("--exhaustive")
    if views is not None:
        args += ["--views", str(views)]
    return args


def plan_groups(methods: Sequence[Method], sequential: bool) -> list[list[Method]]:
    """The commands of one seed: one array of every method, or one command each when
    ``sequential``."""
    if sequential:
        return [[m] for m in methods]
    return [list(methods)] if methods else []


def group_folder(seed_dir: Path, group: Sequence[Method]) -> Path:
    return seed_dir / "+".join(m.name for m in group)


def train_args(
    setup: TrainSetup, group: Sequence[Method], *, seed: int, out: Path,
    time_limit: int | None, resume: bool,
) -> list[str]:  # fmt: skip
    """``kdcache train`` for ``group``: a student array (``--sweep``, written to
    ``out/sweep.yaml``: one entry per method, its folder named by the method) when it holds
    several methods. ``--time-limit SECONDS`` stops at an epoch boundary before the budget runs
    out (exit 0, resumable with ``--resume``)."""
    args = ["train", "--cache", shown(setup.cache), "--data-dir", shown(setup.data_dir),
            "--student", setup.student, "--seed", str(seed), "--out", shown(out), *setup.solver,
            "--workers", str(setup.workers), "--no-progress"]  # fmt: skip
    if len(group) == 1:
        args += ["--loss", group[0].name, *group[0].extra_args]
    else:
        out.mkdir(parents=True, exist_ok=True)
        sweep = out / "sweep.yaml"
        sweep.write_text(yaml.safe_dump([m.sweep_entry for m in group], sort_keys=False))
        args += ["--sweep", shown(sweep)]
    if time_limit is not None:
        args += ["--time-limit", str(time_limit)]
    if setup.stream is not None:
        args += ["--stream", setup.stream]
    if setup.compile:
        args.append("--compile")
    if resume:
        args.append("--resume")
    return args


def kdcache_env() -> dict[str, str]:
    # The checkout's kdcache, also where it is not installed (the device machine).
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{path}" if path else str(REPO)}


def train_has_option(option: str) -> bool:
    """Whether this checkout's ``kdcache train`` knows ``option`` (e.g. ``--time-limit``)."""
    out = subprocess.run(kdcache_command(["train", "--help"]), cwd=REPO, env=kdcache_env(),
                         capture_output=True, text=True)  # fmt: skip
    return option in out.stdout


@dataclass(frozen=True)
class Outcome:
    code: int
    seconds: float
    cut: bool  # stopped by the runner's deadline (not by the command's own --time-limit)


def kdcache_command(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "kdcache", *args]


def run_until(
    args: list[str], deadline: float, stop_grace: float = STOP_GRACE_SECONDS
) -> Outcome:
    """``kdcache ARGS`` in the checkout; interrupted (SIGINT, then killed) at ``deadline``."""
    started = time.monotonic()
    proc = subprocess.Popen(kdcache_command(args), cwd=REPO, env=kdcache_env())
    try:
        code = proc.wait(timeout=max(1.0, deadline - started))
        cut = False
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(timeout=stop_grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        cut = True
    return Outcome(code, time.monotonic() - started, cut)
