"""CIFAR-100 on a CPU budget: ResNet-56 teacher -> resnet20 students, with kdcache commands only.

    python experiments/cifar100/run.py [--data-dir ../shared/data] [--epochs 5] [--views 2]
                                       [--work experiments/cifar100/work] [--report docs/results.md]

Steps (each resumable: re-running the script continues where it stopped):

1. ``kdcache extract``: V views of the CIFAR-100 train split with the real ResNet-56 teacher
   (``cifar`` recipe), plus the teacher on the test split (``none`` recipe, one view) for its test
   top-1;
2. ``kdcache train`` of a resnet20 student from the cache with ``ce``, ``kd``, ``dkd``, ``rld`` and
   ``ldrld`` (same seed, same views, the CIFAR protocol scaled to ``--epochs``);
3. the same LDRLD run with the live teacher (online), to compare loss curves and wall time;
4. a report (markdown table + PNG curves) written from the runs' ``metrics.jsonl``.

The default budget (5 epochs, 2 views) is sized for about two hours on 2 CPU cores; see the report
for what each step actually took.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
METHODS = ("ce", "kd", "dkd", "rld", "ldrld")
TEACHER = "teachers/resnet56_cifar100_020118.pth"


def kdcache(*args: str) -> None:
    cmd = [sys.executable, "-m", "kdcache", *args]
    print("$ kdcache " + " ".join(args), flush=True)
    subprocess.run(cmd, check=True, cwd=REPO)


def finished(run: Path, epochs: int) -> bool:
    metrics = run / "metrics.jsonl"
    if not metrics.is_file():
        return False
    lines = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
    return bool(lines) and lines[-1]["epoch"] >= epochs


def train(run: Path, epochs: int, *args: str) -> float:
    """Run (or resume, or skip) one training run; returns the wall seconds this call took."""
    started = time.perf_counter()
    if not finished(run, epochs):
        resume = ["--resume"] if (run / "last.pt").is_file() else []
        kdcache(
            "train",
            *args,
            "--student",
            "resnet20",
            "--epochs",
            str(epochs),
            "--seed",
            "0",
            "--out",
            str(run),
            "--no-progress",
            *resume,
        )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--views", type=int, default=2)
    parser.add_argument("--work", type=Path, default=REPO / "experiments" / "cifar100" / "work")
    parser.add_argument("--report", type=Path, default=REPO / "docs" / "results.md")
    parser.add_argument("--skip-online", action="store_true")
    args = parser.parse_args()
    data, work = str(args.data_dir), args.work
    weights = str(args.data_dir / TEACHER)
    work.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    def extract(split: str, recipe: str, views: int, out: Path, *extra: str) -> None:
        kdcache("extract", "--teacher", "resnet56", "--weights", weights, "--dataset", "cifar100",
                "--data-dir", data, "--split", split, "--recipe", recipe, "--views", str(views),
                "--seed", "0", "--out", str(out), "--no-progress", *extra)  # fmt: skip

    started = time.perf_counter()
    extract("train", "cifar", args.views, work / "cache")
    timings["extract"] = time.perf_counter() - started
    extract("test", "none", 1, work / "teacher_test", "--dtype", "float32")

    for method in METHODS:
        timings[method] = train(
            work / method,
            args.epochs,
            "--cache",
            str(work / "cache"),
            "--data-dir",
            data,
            "--loss",
            method,
        )
    if not args.skip_online:
        timings["ldrld_online"] = train(
            work / "ldrld_online",
            args.epochs,
            "--dataset",
            "cifar100",
            "--data-dir",
            data,
            "--recipe",
            "cifar",
            "--aug-seed",
            "0",
            "--num-views",
            str(args.views),
            "--block-rows",
            "1024",
            "--teacher",
            "resnet56",
            "--teacher-weights",
            weights,
            "--loss",
            "ldrld",
        )
    (work / "timings.json").write_text(json.dumps(timings, indent=2))
    from experiments.cifar100.report import write_report

    write_report(work, args.report, args.epochs, args.views)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
