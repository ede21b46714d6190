"""Student arrays: several students trained over one stream, each exactly as its own run.

A :class:`StudentArray` is a list of :class:`ArrayMember` s (a name and a full
:class:`~kdcache.training.config.TrainConfig` each, with its own run folder under the array's
root), made from lists of settings (``--loss ce,kd --seed 0,1``: their product) and/or a sweep
file (a list of per-student overrides). :func:`run_array` trains them in one process:

- what they share is built once (:func:`kdcache.training.loop.share_stream`): the data and its
  fingerprint check, the device-resident views and cache logits (or the chunk reader), the live
  teacher and the test set's decode;
- each student has its own model, optimiser, schedule, step, epoch plan (its own seed's views and
  order), RNG state, checkpoints, metrics, evaluation and ``run.json``;
- epoch by epoch the students take turns, each running its own kernels: each student's per-step
  losses and weights are bit-identical to its separate run (``docs/training.md``, "Student
  arrays": why not horizontal fusion);
- a student that fails (a non-finite step, say) stops with its own error, written to its folder
  as ``failed.txt``, while the others go on; :class:`ArrayResult` says who failed.

The students must share the data: the settings that shape the stream (cache, dataset, views,
device ...) are the same for all, checked before any folder is touched.
"""

from __future__ import annotations

import itertools
import logging
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from kdcache.errors import ConfigError, KdcacheError
from kdcache.training.config import TrainConfig
from kdcache.training.progress import TrainReporter, as_reporter, named_reporter

log = logging.getLogger(__name__)

# Settings a command-line list may vary, in the order folder names list them.
LIST_FIELDS: tuple[str, ...] = ("student", "loss", "lr", "weight_decay", "seed")
# Settings that shape the shared stream: every student must have the same.
STREAM_FIELDS: tuple[str, ...] = (
    "cache", "dataset", "split", "recipe", "recipe_params", "aug_seed", "num_views", "data_dir",
    "remote_cache_dir", "views", "max_samples", "teacher", "teacher_weights", "teacher_ema",
    "teacher_preprocessing", "device", "stream", "workers", "window_blocks", "block_rows",
    "eval_batch_size", "verify_replay", "channels_last", "time_limit", "resume", "force",
)  # fmt: skip
FAILED = "failed.txt"  # in a student's folder: why it stopped


@dataclass(frozen=True)
class ArrayMember:
    name: str  # its folder under the array's root: what differs, e.g. "loss-kd_seed-1"
    config: TrainConfig


@dataclass(frozen=True)
class StudentArray:
    root: Path
    members: tuple[ArrayMember, ...]

    def __len__(self) -> int:
        return len(self.members)


def _value_name(value: Any) -> str:
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return text.replace("/", "_").replace(":", "_").replace(" ", "")


def _member_name(varied: dict[str, Any]) -> str:
    return "_".join(f"{key}-{_value_name(value)}" for key, value in varied.items()) or "student"


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value]


def expand_array(settings: dict[str, Any], sweep: Sequence[dict[str, Any]] = ()) -> StudentArray:
    """The array of ``settings`` (TrainConfig fields; those of :data:`LIST_FIELDS` may be lists:
    their product) times the ``sweep`` entries (each a dict of overrides, optionally with a
    ``name``). Every member is checked; nothing is written.

    Raises:
        ConfigError: a setting of a member is invalid (named with the member), two members would
            share a folder, or the members do not share the stream.
    """
    if not settings.get("out"):
        raise ConfigError("a student array needs `out`: the folder its students' runs go under")
    root = Path(settings["out"])
    lists = {key: _as_list(settings[key]) for key in LIST_FIELDS if key in settings}
    for key, values in lists.items():
        if not values:
            raise ConfigError(f"`{key}` lists no value")
    entries: list[dict[str, Any]] = [dict(e) for e in sweep] or [{}]
    members: list[ArrayMember] = []
    for entry in entries:
        if not isinstance(entry, dict):
            raise ConfigError(f"a sweep entry must be a mapping of setting: value, got {entry!r}")
        named = entry.pop("name", None)
        for combo in itertools.product(*lists.values()):
            chosen = dict(zip(lists, combo, strict=True))
            varied = {k: v for k, v in chosen.items() if len(lists[k]) > 1}
            name = str(named) if named is not None else ""
            if named is None:
                name = _member_name({**{k: _value_name(v) for k, v in entry.items()}, **varied})
            elif varied:
                name = f"{named}_{_member_name(varied)}"
            member_settings = {**settings, **chosen, **entry, "out": str(root / name)}
            try:
                config = TrainConfig.from_dict(member_settings)
            except KdcacheError as exc:
                raise type(exc)(f"student {name}: {exc}") from exc
            members.append(ArrayMember(name, config))
    _check_members(members)
    return StudentArray(root, tuple(members))


def _check_members(members: list[ArrayMember]) -> None:
    names = [m.name for m in members]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(
            f"several students of the array would train into the same folder ({', '.join(repeated)}"
            "): give each sweep entry a distinct `name`, or vary a setting"
        )
    first = members[0].config
    for member in members[1:]:
        for key in STREAM_FIELDS:
            if getattr(member.config, key) != getattr(first, key):
                raise ConfigError(
                    f"the students of an array share one stream, but student {member.name} has "
                    f"`{key}` {getattr(member.config, key)!r} and {members[0].name} "
                    f"{getattr(first, key)!r}: run them as separate arrays"
                )


@dataclass(frozen=True)
class MemberResult:
    name: str
    config: TrainConfig
    result: Any | None  # TrainResult when it trained to its end (or to --time-limit)
    error: str | None  # why it stopped, when it failed


@dataclass(frozen=True)
class ArrayResult:
    root: Path
    members: tuple[MemberResult, ...]
    seconds: float
    finished: bool  # every surviving student reached its last epoch (no --time-limit stop)
    table: list[dict[str, Any]] = field(default_factory=list)  # one row per setting (seeds pooled)

    @property
    def failed(self) -> list[MemberResult]:
        return [m for m in self.members if m.error is not None]


def run_array(array: StudentArray, progress: TrainReporter | None = None) -> ArrayResult:
    """Train every student of ``array`` over one shared stream (see the module's docstring).

    Raises:
        KdcacheError: a setting is invalid for the data (before any folder is touched), or the
            shared stream fails (then every student stops).
    """
    from kdcache.training import loop, run_setup

    reporter = as_reporter(progress)
    started = time.perf_counter()
    array = _resumable(array)
    first = array.members[0].config
    for member in array.members:
        run_setup.check_loss_vs_source(member.config)
    with run_setup.distributed(first) as (ctx, device):
        shared = run_setup.share_stream(first, device)
        runs = {}
        for member in array.members:  # every student checked before any folder is touched
            try:
                runs[member.name] = run_setup.prepare(member.config, ctx, device, shared)
            except KdcacheError as exc:
                raise type(exc)(f"student {member.name}: {exc}") from exc
        reporters = {m.name: named_reporter(reporter, m.name) for m in array.members}
        for member in array.members:
            run_setup.open_run(runs[member.name], reporters[member.name])
        errors: dict[str, str] = {}
        last: float | None = None
        finished = True
        epochs = max(run.schedule.epochs for run in runs.values())
        for epoch in range(min(run.start_epoch for run in runs.values()), epochs):
            live = [n for n, r in runs.items() if n not in errors and epoch < r.schedule.epochs
                    and epoch >= r.start_epoch]  # fmt: skip
            if not live:
                continue
            if loop.out_of_time(first, started, last):
                finished = False
                log.warning("--time-limit %gs: the array stopped before epoch %d (resume to go "
                            "on)", first.time_limit, epoch + 1)  # fmt: skip
                break
            round_started = time.perf_counter()
            errors |= _train_round({n: runs[n] for n in live}, epoch, reporters, ctx.is_main)
            last = time.perf_counter() - round_started
        for run in runs.values():
            if run.tensorboard is not None:
                run.tensorboard.close()
        members = tuple(
            MemberResult(m.name, m.config,
                         None if m.name in errors else loop.train_result(runs[m.name], finished),
                         errors.get(m.name))  # fmt: skip
            for m in array.members
        )
    result = ArrayResult(array.root, members, time.perf_counter() - started, finished)
    return replace(result, table=array_table(result))


def _train_round(
    runs: dict[str, Any], epoch: int, reporters: dict[str, TrainReporter], is_main: bool
) -> dict[str, str]:
    """Epoch ``epoch`` of each of ``runs`` in turn; the errors of those that failed, by name (a
    failed student's folder says why in ``failed.txt``; the others go on)."""
    from kdcache.training import loop

    errors = {}
    for name, run in runs.items():
        try:
            loop.train_epoch(run, epoch, reporters[name])
        except KdcacheError as exc:
            errors[name] = str(exc)
            log.error("student %s stopped: %s", name, exc)
            if is_main:
                (run.out / FAILED).write_text(f"{type(exc).__name__}: {exc}\n")
    return errors


def _resumable(array: StudentArray) -> StudentArray:
    """With ``resume``: a student stopped before its first checkpoint starts again (the others
    resume), as a separate run of it would be started again without --resume."""
    members = []
    for m in array.members:
        fresh = m.config.resume and not (Path(m.config.out) / "last.pt").is_file()
        members.append(replace(m, config=replace(m.config, resume=False)) if fresh else m)
    return replace(array, members=tuple(members))


def _setting(member: MemberResult) -> str:
    """The member's name without its seed: the setting its seeds pool into."""
    parts = [p for p in member.name.split("_") if not p.startswith("seed-")]
    return "_".join(parts) or "student"


def array_table(result: ArrayResult) -> list[dict[str, Any]]:
    """One row per setting: its students' final and best top-1, mean and std over seeds."""
    groups: dict[str, list[MemberResult]] = {}
    for member in result.members:
        groups.setdefault(_setting(member), []).append(member)
    rows = []
    for setting, members in groups.items():
        done = [m.result for m in members
                if m.result is not None and m.result.final_top1 is not None]  # fmt: skip
        finals = [r.final_top1 for r in done]
        bests = [r.best_top1 for r in done]
        rows.append({
            "setting": setting,
            "students": len(members),
            "evaluated": len(done),
            "failed": sum(m.error is not None for m in members),
            "final_top1_mean": statistics.fmean(finals) if finals else math.nan,
            "final_top1_std": statistics.stdev(finals) if len(finals) > 1 else 0.0,
            "best_top1_mean": statistics.fmean(bests) if bests else math.nan,
            "best_top1_std": statistics.stdev(bests) if len(bests) > 1 else 0.0,
        })  # fmt: skip
    return rows


def write_array_table(result: ArrayResult) -> Path:
    """``ROOT/array.csv``: each student's top-1 and status, then each setting's mean +- std."""
    import csv

    path = result.root / "array.csv"
    result.root.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["student", "final_top1", "best_top1", "epochs_done", "status"])
        for m in result.members:
            r = m.result
            status = "failed" if m.error else ("finished" if r and r.finished else "unfinished")
            writer.writerow([m.name, _num(r.final_top1 if r else None),
                             _num(r.best_top1 if r else None), r.epochs_done if r else "",
                             status])  # fmt: skip
        writer.writerow([])
        writer.writerow(["setting", "students", "final_top1_mean", "final_top1_std",
                         "best_top1_mean", "best_top1_std", "failed"])  # fmt: skip
        for row in result.table:
            writer.writerow([row["setting"], row["evaluated"], _num(row["final_top1_mean"]),
                             _num(row["final_top1_std"]), _num(row["best_top1_mean"]),
                             _num(row["best_top1_std"]), row["failed"]])  # fmt: skip
    return path


def _num(value: float | None) -> str:
    return "" if value is None or math.isnan(value) else f"{value:.2f}"
