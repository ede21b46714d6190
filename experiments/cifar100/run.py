"""The papers' CIFAR-100 table on one device, within a wall-clock budget: ResNet-56 -> resnet20
students with CE, KD, DKD, RLD and LDRLD, one student array per seed, kdcache commands only.

    python experiments/cifar100/run.py [--seeds 0,1,2] [--budget-minutes 9] [--data-dir DATA]
        [--methods ce,kd,dkd,rld,ldrld] [--sequential] [--stream auto] [--compile]
        [--work experiments/cifar100/work] [--runs experiments/cifar100/runs] [--archive FILE]

Steps (each resumable: the same command again continues where the last one stopped):

1. ``kdcache extract``: the exhaustive ``cifar`` cache of CIFAR-100 train (all 162 crops and
   flips of every image, the views the papers' online augmentation draws from), and the teacher
   on the test split (its test top-1), unless already complete in the work folder;
2. per seed, ``kdcache train``: one student array for the methods whose published settings are
   their losses' defaults, one command for each other method (protocol.py says which and why);
   every command gets ``--time-limit`` so that it stops at an epoch boundary inside the budget;
3. after each command, the runs' small text files (run.json, metrics.jsonl, summary.csv) are
   copied to ``RUNS/<card>/seed<S>/<method>/`` for committing, with ``runner.json`` (card, cache,
   teacher) and ``commands.jsonl`` (each command and its wall time); ``--archive`` also packs
   that card's folder into one .tar.gz (what comes back from a device);
4. it prints which runs finished and which did not. ``report.py`` writes docs/results.md.

Caches and checkpoints stay in the work folder (git-ignored). A run that did not finish is kept
as partial (fewer epochs than its schedule), never as a result. ``--epochs``, ``--dataset``,
``--teacher``, ``--student`` and ``--views`` exist for the end-to-end test at a tiny size; the
table is the defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tarfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# The budget counts from here: the imports below (torch) take seconds of it.
_STARTED = time.monotonic()
REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # run as a script: the checkout's packages first
    sys.path.insert(0, str(REPO))

from experiments.cifar100 import commands, protocol, records  # noqa: E402

TEACHER_FILE = "teachers/resnet56_cifar100_020118.pth"
# Seconds kept back at the end of the budget: the last copies and the archive.
RESERVE_SECONDS = 15.0


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def detect_card() -> dict[str, Any]:
    import torch

    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return {"card": name, "torch": torch.__version__, "cuda": torch.version.cuda,
            "cpus": os.cpu_count()}  # fmt: skip


def cache_complete(path: Path) -> bool:
    from kdcache.cache.reader import open_cache

    try:
        return bool(open_cache(str(path)).done_mask().all())
    except Exception:  # missing or unreadable: extract (it resumes, or says why it cannot)
        return False


def cache_summary(path: Path) -> dict[str, Any]:
    from kdcache.cache.reader import open_cache

    cache = open_cache(str(path))
    ident = cache.meta.identity
    return {
        "recipe": ident.augmentation.recipe,
        "views": ident.augmentation.num_views,
        "samples": ident.dataset.num_samples,
        "storage": f"{ident.storage.mode} {ident.storage.dtype}",
        "fingerprint": cache.meta.fingerprint,
        "bytes": cache.stored_bytes(),
    }


def teacher_test_top1(path: Path) -> float | None:
    from kdcache.cache.reader import open_cache

    top1 = open_cache(str(path)).meta.teacher_top1
    return float(top1[0]) if top1 else None


class Runner:
    def __init__(self, args: argparse.Namespace, started: float) -> None:
        self.args = args
        self.deadline = started + args.budget_minutes * 60
        self.work: Path = args.work.resolve()
        self.runs: Path = args.runs.resolve()
        self.card = detect_card()
        self.card_dir = self.runs / records.card_slug(self.card["card"])
        self.card_dir.mkdir(parents=True, exist_ok=True)
        self.failed: list[str] = []
        self.unfinished_steps: list[str] = []

    # -- records ---------------------------------------------------------------------------
    def _runner_json(self, **update: Any) -> None:
        path = self.card_dir / records.RUNNER
        data = json.loads(path.read_text()) if path.is_file() else {}
        data.update(self.card, **update, updated=_now())
        path.write_text(json.dumps(data, indent=2) + "\n")

    def _log(self, started: str, step: str, args: list[str], outcome: commands.Outcome,
             **extra: Any) -> None:  # fmt: skip
        command = commands.readable_commands("kdcache " + " ".join(args), self.work,
                                             self.args.data_dir)  # fmt: skip
        entry = {"started": started, "step": step, **extra, "command": command,
                 "seconds": round(outcome.seconds, 1), "exit": outcome.code,
                 "cut_by_budget": outcome.cut}  # fmt: skip
        with open(self.card_dir / records.COMMANDS, "a") as f:
            f.write(json.dumps(entry) + "\n")

    def _left(self) -> float:
        return self.deadline - RESERVE_SECONDS - time.monotonic()

    def _run(self, step: str, args: list[str], **extra: Any) -> commands.Outcome:
        print("$ kdcache " + " ".join(args), flush=True)
        started = _now()
        outcome = commands.run_until(args, self.deadline - RESERVE_SECONDS / 3)
        self._log(started, step, args, outcome, **extra)
        if outcome.cut:
            print(f"run.py: stopped `kdcache {args[0]}` at the end of the budget", flush=True)
        elif outcome.code:
            self.failed.append(f"{step} (exit {outcome.code})")
        return outcome

    # -- step 1: caches --------------------------------------------------------------------
    def extract(self) -> bool:
        a = self.args
        for name, split, recipe, exhaustive, views in (
            ("cache", "train", "cifar", True, a.views),
            ("teacher_test", "test", "none", False, None),
        ):
            out = self.work / name
            if cache_complete(out):
                continue
            if self._left() < 1:
                self.unfinished_steps.append(f"extract {name}: not started (budget spent)")
                return False
            args = commands.extract_args(
                teacher=a.teacher, weights=a.teacher_weights, dataset=a.dataset,
                data_dir=a.data_dir, split=split, recipe=recipe, views=views,
                exhaustive=exhaustive, out=out, batch_size=a.extract_batch_size,
                workers=a.workers,
            )  # fmt: skip
            self._run(f"extract {name}", args)
            if not cache_complete(out):
                self.unfinished_steps.append(f"extract {name}: incomplete (re-run to resume)")
                return False
        top1 = teacher_test_top1(self.work / "teacher_test")
        self._runner_json(cache=cache_summary(self.work / "cache"), teacher_test_top1=top1)
        return True

    # -- step 2: students ------------------------------------------------------------------
    def _setup(self) -> commands.TrainSetup:
        a = self.args
        solver = protocol.solver_args()
        if a.epochs is not None:
            at = solver.index("--epochs")
            solver[at + 1] = str(a.epochs)
        return commands.TrainSetup(
            cache=self.work / "cache", data_dir=a.data_dir, student=a.student,
            solver=tuple(solver), workers=a.workers, stream=a.stream, compile=a.compile,
        )  # fmt: skip

    def _wanted(self, setup: commands.TrainSetup) -> tuple[str, str, str, int]:
        """The setup this call trains (records.RunRecord.setup): runs of another are not it."""
        epochs = int(setup.solver[setup.solver.index("--epochs") + 1])
        return (self.args.dataset, self.args.teacher, setup.student, epochs)

    def _finished(self, seed: int, method: str, setup: commands.TrainSetup) -> bool:
        wanted = self._wanted(setup)
        return any(
            r.method == method and r.seed == seed and r.finished and r.setup == wanted
            for r in [rec for _, rec in records.kept_runs(self.runs)]
            + records.find_runs(self.work / f"seed{seed}")
        )

    def _keep(self, seed: int) -> None:
        for record in records.find_runs(self.work / f"seed{seed}"):
            dest = records.kept_folder(self.runs, self.card["card"], record.seed, record.method)
            records.keep(record, dest)

    def train(self, seed: int, methods: list[protocol.Method], has_time_limit: bool) -> None:
        setup = self._setup()
        seed_dir = self.work / f"seed{seed}"
        for group in commands.plan_groups(methods, self.args.sequential):
            if all(self._finished(seed, m.name, setup) for m in group):
                continue
            folder = commands.group_folder(seed_dir, group)
            resume = folder.is_dir() and any(folder.rglob("last.pt"))
            if not resume:  # a fresh command: leave out what an earlier slot finished
                group = [m for m in group if not self._finished(seed, m.name, setup)]
                if not group:
                    continue
                folder = commands.group_folder(seed_dir, group)
                resume = folder.is_dir() and any(folder.rglob("last.pt"))
            names = [m.name for m in group]
            left = self._left()
            if left < 1:
                self.unfinished_steps.append(f"seed {seed} {','.join(names)}: not started")
                continue
            limit = int(left) if has_time_limit else None
            args = commands.train_args(setup, group, seed=seed, out=folder, resume=resume,
                                       time_limit=limit)  # fmt: skip
            outcome = self._run("train", args, seed=seed, methods=names)
            if outcome.code and not outcome.cut and len(group) > 1:
                print("run.py: if this kdcache has no student arrays yet, re-run with "
                      "--sequential (one command per method)", flush=True)  # fmt: skip
            self._keep(seed)

    # -- step 4: what finished -------------------------------------------------------------
    def status_lines(self, seeds: list[int], methods: list[protocol.Method]) -> list[str]:
        wanted = self._wanted(self._setup())
        epochs = wanted[3]
        kept = [r for _, r in records.kept_runs(self.runs) if r.setup == wanted]
        lines = []
        for seed in seeds:
            for m in methods:
                mine = [r for r in kept if r.seed == seed and r.method == m.name]
                best = max(mine, key=lambda r: r.epochs_done, default=None)
                if best is None:
                    state = "not started"
                elif best.finished:
                    top1 = "-" if best.last_top1 is None else f"{best.last_top1:.2f}"
                    state = f"finished {best.epochs_done}/{epochs} epochs, top-1 {top1}"
                else:
                    state = f"UNFINISHED {best.epochs_done}/{epochs} epochs"
                lines.append(f"  seed {seed} {m.name:6s} {state}")
        return lines

    def archive(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(path, "w:gz") as tar:
            tar.add(self.card_dir, arcname=self.card_dir.name)
        print(f"run.py: kept runs of {self.card['card']} packed into {path} "
              f"(unpack with: tar xzf {path.name} -C {commands.shown(self.runs)})")  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    doc = __doc__ or ""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--seeds", default="0,1,2", help="Student seeds, comma-separated.")
    p.add_argument("--methods", default=",".join(protocol.METHODS))
    p.add_argument("--budget-minutes", type=float, default=9.0,
                   help="Wall clock for the whole call; commands stop inside it.")  # fmt: skip
    p.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--teacher", default="resnet56")
    p.add_argument("--teacher-weights", type=Path, help=f"Default: DATA/{TEACHER_FILE}.")
    p.add_argument("--dataset", default="cifar100")
    p.add_argument("--student", default="resnet20")
    p.add_argument("--views", type=int, help="Cached views [default: all 162 distinct ones].")
    p.add_argument("--epochs", type=int, help="Override the protocol's 240 (tests only).")
    p.add_argument("--sequential", action="store_true",
                   help="One train command per method instead of a student array.")  # fmt: skip
    p.add_argument("--stream", help="Passed to kdcache train --stream (e.g. auto).")
    p.add_argument("--compile", action="store_true", help="kdcache train --compile.")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    p.add_argument("--extract-batch-size", type=int, default=512)
    p.add_argument("--work", type=Path, default=REPO / "experiments" / "cifar100" / "work")
    p.add_argument("--runs", type=Path, default=REPO / "experiments" / "cifar100" / "runs")
    p.add_argument("--archive", type=Path, help="Also pack this card's kept runs into FILE.")
    args = p.parse_args(argv)
    args.data_dir = args.data_dir.resolve()
    args.teacher_weights = (args.teacher_weights or args.data_dir / TEACHER_FILE).resolve()
    return args


def main(argv: list[str] | None = None, started: float | None = None) -> int:
    """The runner; its budget counts from ``started`` (default: now)."""
    started = time.monotonic() if started is None else started
    args = parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        methods = protocol.load_methods([m.strip() for m in args.methods.split(",") if m.strip()])
    except (ValueError, protocol.ProtocolError) as exc:
        print(f"run.py: {exc}", file=sys.stderr)
        return 2
    runner = Runner(args, started)
    print(f"run.py: {runner.card['card']}, budget {args.budget_minutes:g} min, seeds "
          f"{', '.join(map(str, seeds))}, methods {', '.join(m.name for m in methods)}",
          flush=True)  # fmt: skip
    if runner.extract():
        has_time_limit = commands.train_has_option("--time-limit")
        if not has_time_limit:
            print("run.py: this kdcache train has no --time-limit: commands are interrupted "
                  "at the end of the budget instead (the epoch in progress is lost)",
                  flush=True)  # fmt: skip
        for seed in seeds:
            runner.train(seed, methods, has_time_limit)
    print("run.py: runs (kept in " + commands.shown(runner.card_dir) + "):")
    print("\n".join(runner.status_lines(seeds, methods)))
    for line in runner.unfinished_steps:
        print("  " + line)
    if args.archive:
        runner.archive(args.archive.resolve())
    if runner.failed:
        print("run.py: failed: " + "; ".join(runner.failed) + ". Their errors are above; "
              "re-running resumes what was started.", file=sys.stderr)  # fmt: skip
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(started=_STARTED))
