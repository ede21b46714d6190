"""CIFAR-100 on a CPU budget: ResNet-56 teacher -> resnet20 students, with kdcache commands only.

    python experiments/cifar100/run.py [--data-dir ../shared/data] [--epochs 6] [--views 2]
                                       [--work experiments/cifar100/work] [--report docs/results.md]

Steps (each resumable: re-running the script continues where it stopped):

1. ``kdcache extract``: V views of the CIFAR-100 train split with the real ResNet-56 teacher
   (``cifar`` recipe, float32 logits), plus the teacher on the test split (``none`` recipe, one
   view) for its test top-1;
2. ``kdcache train`` of a resnet20 student from the cache with ``ldrld``, ``ce``, ``kd``, ``rld``
   and ``dkd`` (same seed, same views, the CIFAR protocol scaled to ``--epochs``);
3. the same LDRLD run with the live teacher (online), to compare step losses and wall time;
4. ``docs/results.md`` sections (tables, commands, versions) and a PNG, written by ``report.py``
   from the run directories.

The default budget (6 epochs, 2 views) takes about an hour and a half on 2 CPU cores; the report
says what each step took.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# LDRLD and its online twin first: their wall-time ratio is fairest when taken close together.
METHODS = ("ldrld", "ce", "kd", "rld", "dkd")
TEACHER = "teachers/resnet56_cifar100_020118.pth"


class Experiment:
    def __init__(self, data_dir: Path, work: Path, epochs: int, views: int) -> None:
        self.data, self.work, self.epochs, self.views = str(data_dir), work, epochs, views
        self.weights = str(data_dir / TEACHER)
        work.mkdir(parents=True, exist_ok=True)
        self.timings_path = work / "timings.json"
        # Kept across re-runs: a step that is skipped (already done) keeps its first timing.
        self.timings: dict[str, float] = (
            json.loads(self.timings_path.read_text()) if self.timings_path.is_file() else {}
        )

    def kdcache(self, *args: str) -> None:
        line = "kdcache " + " ".join(args)
        print("$ " + line, flush=True)
        with open(self.work / "commands.log", "a") as f:  # for the report's "exact commands"
            f.write(line + "\n")
        code = subprocess.run([sys.executable, "-m", "kdcache", *args], cwd=REPO).returncode
        if code:
            # kdcache has printed what went wrong; finished steps are kept for the next run.
            sys.exit(
                f"run.py: `kdcache {args[0]}` failed (exit {code}); see its error above. "
                "Fix it and re-run: finished steps are skipped, started ones resume."
            )

    def extract(self, split: str, recipe: str, views: int, name: str) -> None:
        out = self.work / name
        if name in self.timings and cache_complete(out):
            return
        started = time.perf_counter()
        # float32: the online run's teacher logits then equal the cached ones bit for bit.
        self.kdcache("extract", "--teacher", "resnet56", "--weights", self.weights,
                     "--dataset", "cifar100", "--data-dir", self.data, "--split", split,
                     "--recipe", recipe, "--views", str(views), "--seed", "0", "--out", str(out),
                     "--dtype", "float32", "--no-progress")  # fmt: skip
        self.timings[name] = time.perf_counter() - started
        self.timings_path.write_text(json.dumps(self.timings, indent=2))

    def train(self, name: str, *args: str) -> None:
        run = self.work / name
        if finished(run, self.epochs):
            return
        resume = ["--resume"] if (run / "last.pt").is_file() else []
        self.kdcache("train", *args, "--student", "resnet20", "--epochs", str(self.epochs),
                     "--seed", "0", "--data-dir", self.data, "--out", str(run), "--no-progress",
                     *resume)  # fmt: skip

    def cached(self, method: str) -> None:
        self.train(method, "--cache", str(self.work / "cache"), "--loss", method)

    def online(self, method: str) -> None:
        # The cache's dataset, recipe, seed, views and chunk rows, so the data order is the same.
        self.train(f"{method}_online", "--teacher", "resnet56", "--teacher-weights", self.weights,
                   "--dataset", "cifar100", "--recipe", "cifar", "--aug-seed", "0",
                   "--num-views", str(self.views), "--block-rows", "1024",
                   "--loss", method)  # fmt: skip


def cache_complete(cache: Path) -> bool:
    from kdcache.cache.reader import open_cache

    try:
        return bool(open_cache(str(cache)).done_mask().all())
    except Exception:  # missing or unreadable: extract (it resumes, or refuses with a reason)
        return False


def finished(run: Path, epochs: int) -> bool:
    metrics = run / "metrics.jsonl"
    if not metrics.is_file():
        return False
    lines = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
    return bool(lines) and lines[-1]["epoch"] >= epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--views", type=int, default=2)
    parser.add_argument("--work", type=Path, default=REPO / "experiments" / "cifar100" / "work")
    parser.add_argument("--report", type=Path, default=REPO / "docs" / "results.md")
    parser.add_argument("--skip-online", action="store_true")
    parser.add_argument("--extract-only", action="store_true", help="Stop after the caches.")
    args = parser.parse_args()
    exp = Experiment(args.data_dir, args.work, args.epochs, args.views)

    exp.extract("train", "cifar", args.views, "cache")
    exp.extract("test", "none", 1, "teacher_test")
    if args.extract_only:
        return
    exp.cached("ldrld")
    if not args.skip_online:
        exp.online("ldrld")
    for method in METHODS[1:]:
        exp.cached(method)

    from experiments.cifar100.report import write_report

    write_report(args.work, args.report, args.epochs, args.views)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
