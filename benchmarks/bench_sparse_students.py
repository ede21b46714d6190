"""Students trained from top-K caches against the dense cache: resnet20 on CIFAR-100, real teacher.

    python benchmarks/bench_sparse_students.py [--data-dir ../shared/data] [--samples 4096]
        [--epochs 3] [--threads 1] [--work DIR] [--write-docs]
    python benchmarks/bench_sparse_students.py --report-only --write-docs   # table from DIR

1. One teacher pass: ``kdcache extract`` (:func:`kdcache.extract.run_extract`) of the real
   ResNet-56 over one seeded ``cifar`` view of the CIFAR-100 train split, dense float32, stopped
   once its first ``--samples`` rows (whole blocks) are written. A stopped extract is a resumable
   cache whose first blocks are marked done; ``kdcache train --max-samples`` reads only those
   (and checks that they are written).
2. The top-K caches (K = 5, 10, 20) of the same view, derived from that pass: every written block's
   float32 logits, input hashes and labels go through the cache writer's ``write_block`` into a
   cache whose identity is the dense one with top-K storage, which is what ``kdcache extract
   --topk K`` writes from the same logits (the writer sparsifies them; online top-K training from
   the live teacher gives the same per-step losses, tests/test_train_sparse.py).
3. The same resnet20 student (seed 0: same initialisation, same batches and views) trained for
   ``--epochs`` epochs on the first ``--samples`` train samples from each cache with KD (T = 4),
   plus cross-entropy alone, DKD from the dense cache and DKD from the top-10 cache through
   ``--sparse-approx``; top-1 / top-5 on the full CIFAR-100 test split (10,000 images) after the
   last epoch. The CIFAR protocol (batch 64, lr 0.05, x0.1 at 5/8 of the run, DKD warm-up 1/12 of
   the run) scaled to ``--epochs``; nothing tuned. One seed: differences of a point or two are
   within seed noise at this budget.

Results are appended to ``DIR/results.json`` run by run, so a run cut short keeps what finished;
``--report-only`` writes the table from that file.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks._docs import write_section  # noqa: E402
from kdcache.cache import schema  # noqa: E402
from kdcache.cache.reader import CacheReader, open_cache  # noqa: E402
from kdcache.cache.writer import open_for_writing  # noqa: E402
from kdcache.extract import ExtractConfig, run_extract  # noqa: E402
from kdcache.extract_writer import topk_hits  # noqa: E402
from kdcache.losses.registry import sparse_temperatures  # noqa: E402
from kdcache.training.config import TrainConfig, resolve_schedule  # noqa: E402
from kdcache.training.loop import run_train  # noqa: E402

WEIGHTS = "teachers/resnet56_cifar100_020118.pth"
KS = (5, 10, 20)
CHUNK_ROWS = 1024
SECTION = "Students from sparse caches (CPU)"
# (name, cache, loss, sparse_approx): KD from each cache first, then the references.
RUNS = [
    ("kd-dense", "dense", "kd", False),
    ("kd-top5", "top5", "kd", False),
    ("kd-top10", "top10", "kd", False),
    ("kd-top20", "top20", "kd", False),
    ("dkd-dense", "dense", "dkd", False),
    ("dkd-top10-approx", "top10", "dkd", True),
    ("ce", "dense", "ce", False),
]


class _Enough(Exception):
    """Stops the extraction once the rows to train on are written."""


def extract_dense(data_dir: Path, out: Path, samples: int) -> CacheReader:
    """The dense float32 cache of view 0, written up to (at least) its first ``samples`` rows."""
    seen = 0
    rows = -(-samples // CHUNK_ROWS) * CHUNK_ROWS  # whole blocks

    def progress(images: int) -> None:
        nonlocal seen
        seen += images
        if seen >= rows:  # the block holding row `samples - 1` is written: stop here
            raise _Enough

    config = ExtractConfig(teacher="resnet56", out=str(out), dataset="cifar100",
                           weights=str(data_dir / WEIGHTS), data_dir=str(data_dir), views=1,
                           seed=0, dtype="float32", chunk_rows=CHUNK_ROWS, workers=0,
                           device="cpu")  # fmt: skip
    if not (out / "zarr.json").exists() or not _written(open_cache(str(out)), samples):
        try:
            run_extract(config, progress)
        except _Enough:
            pass
    reader = open_cache(str(out))
    assert _written(reader, samples), "the extraction stopped before the rows to train on"
    return reader


def _written(reader: CacheReader, samples: int) -> bool:
    return bool(reader.done_mask()[0, : -(-samples // CHUNK_ROWS)].all())


def derive_sparse(dense: CacheReader, out: Path, k: int, samples: int) -> None:
    """The top-``k`` cache of the same view from the dense float32 cache's written blocks."""
    if out.exists():
        return
    storage = schema.StorageInfo("sparse", "float32", CHUNK_ROWS, topk=k,
                                 temperatures=sparse_temperatures())  # fmt: skip
    identity = dataclasses.replace(dense.identity, storage=storage)
    meta = dataclasses.replace(dense.meta, identity=identity, complete=False,
                               teacher_top1=None, teacher_top5=None)  # fmt: skip
    labels = dense.labels()
    writer = open_for_writing(str(out), meta, labels, create=True)
    for block in range(-(-samples // CHUNK_ROWS)):
        rows = dense.meta.block_rows(block)
        logits = dense.read_dense(0, block).astype(np.float32)  # [R, 100]: the teacher's bits
        top1, top5 = topk_hits(logits, labels[rows])
        writer.write_block(0, block, logits, dense.read_input_hashes(0, block), top1, top5,
                           labels=labels[rows])  # fmt: skip


def train(work: Path, data_dir: Path, name: str, cache: str, loss: str, approx: bool,
          samples: int, epochs: int) -> dict:  # fmt: skip
    config = TrainConfig(student="resnet20", out=str(work / "runs" / name), loss=loss,
                         cache=str(work / cache), data_dir=str(data_dir), max_samples=samples,
                         epochs=epochs, seed=0, workers=0, device="cpu", sparse_approx=approx,
                         eval_every=epochs, force=True)  # fmt: skip
    started = time.perf_counter()
    result = run_train(config)
    return {"run": name, "cache": cache, "loss": loss, "sparse_approx": approx,
            "top1": result.final_top1, "top5": result.final_top5,
            "last_step_loss": result.step_losses[-1],
            "seconds": round(time.perf_counter() - started, 1)}  # fmt: skip


def report(results: list[dict], settings: dict) -> str:
    by_run = {r["run"]: r for r in results}
    epochs = settings["epochs"]
    schedule = resolve_schedule(
        TrainConfig(student="resnet20", out="-", loss="dkd", cache="-", epochs=epochs), "cifar100"
    )
    decays = ", ".join(str(m) for m in schedule.milestones) or "none"
    lines = [
        f"`{settings['command']}`: resnet20 students of the real ResNet-56 (66.42% top-1 on the "
        f"test split) on the first {settings['samples']:,} CIFAR-100 train samples. One seeded "
        "`cifar` view (seed 0) extracted once as dense float32; the top-5/10/20 caches written "
        "from the same logits. Every run: student seed 0 (same initialisation, batches and "
        f"views), {epochs} epochs of the CIFAR protocol scaled to {epochs} epochs (batch "
        f"{schedule.batch_size}, lr {schedule.lr:g} x{schedule.lr_decay:g} after epoch(s) "
        f"{decays}, weight decay {schedule.weight_decay:g}, DKD warm-up "
        f"{schedule.warmup_epochs:g} epochs), KD at T = 4 with CE 0.1 / KD 0.9, DKD at its "
        f"defaults; {settings['threads']} torch thread on the shared 2-core CPU. Top-1/top-5 on "
        "the full CIFAR-100 test split (10,000 images) after the last epoch; seconds include "
        "that evaluation. One seed and a tiny budget (nothing tuned): a difference of a point "
        "is within seed noise, and the table says whether students train from top-K rows at "
        "this budget, not how they compare after a full 240-epoch run.",
        "",
        "| teacher signal | loss | top-1 | top-5 | seconds |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, cache, loss, approx in RUNS:
        r = by_run.get(name)
        signal = "none (labels only)" if loss == "ce" else (
            "dense float32 cache" if cache == "dense" else f"top-{cache[3:]} cache")  # fmt: skip
        label = loss + (" --sparse-approx" if approx else "")
        if r is None:
            lines.append(f"| {signal} | {label} | not run | | |")
            continue
        lines.append(f"| {signal} | {label} | {r['top1']:.2f} | {r['top5']:.2f} | "
                     f"{r['seconds']:.0f} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--work", type=Path, default=Path("/tmp/kdcache-sparse-students"))
    parser.add_argument("--samples", type=int, default=4 * CHUNK_ROWS)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1 is fastest on a CPU shared with other jobs)",
    )
    parser.add_argument("--runs", default=",".join(r[0] for r in RUNS))
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()  # fmt: skip
    torch.set_num_threads(args.threads)
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    record = work / "results.json"
    saved = json.loads(record.read_text()) if record.exists() else {"results": []}
    command = (
        f"python benchmarks/bench_sparse_students.py --samples {args.samples} "
        f"--epochs {args.epochs} --threads {args.threads} --write-docs"
    )
    settings = {"samples": args.samples, "epochs": args.epochs, "threads": args.threads,
                "command": command}  # fmt: skip
    if saved.get("settings", settings) != settings and not args.report_only:
        saved = {"results": []}  # another budget: start the table afresh
    if not args.report_only:
        saved["settings"] = settings
        started = time.perf_counter()
        dense = extract_dense(args.data_dir, work / "dense", args.samples)
        for k in KS:
            derive_sparse(dense, work / f"top{k}", k, args.samples)
        print(f"caches ready in {time.perf_counter() - started:.0f} s", flush=True)
        wanted = set(args.runs.split(","))
        done = {r["run"] for r in saved["results"]}
        for name, cache, loss, approx in RUNS:
            if name not in wanted or name in done:
                continue
            result = train(work, args.data_dir, name, cache, loss, approx, args.samples,
                           args.epochs)  # fmt: skip
            print(json.dumps(result), flush=True)
            saved["results"].append(result)
            record.write_text(json.dumps(saved, indent=1))
    text = report(saved["results"], saved.get("settings", settings))
    print(text)
    if args.write_docs:
        budget = saved.get("settings", settings)
        title = f"{SECTION}, {budget['samples']:,} samples x {budget['epochs']} epochs"
        write_section(REPO / "docs" / "benchmarks.md", title, text)


if __name__ == "__main__":
    main()
