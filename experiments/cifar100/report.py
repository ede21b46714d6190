"""Write docs/results.md (table + curves) from the experiment's run directories."""

from __future__ import annotations

import json
from pathlib import Path

from kdcache.cache.store import open_cache

METHODS = ("ce", "kd", "dkd", "rld", "ldrld")


def _metrics(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    return (
        [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []
    )


def _plot(work: Path, out_png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(11, 4))
    for method in (*METHODS, "ldrld_online"):
        records = _metrics(work / method)
        if not records:
            continue
        epochs = [r["epoch"] for r in records]
        style = "--" if method.endswith("online") else "-"
        ax_acc.plot(epochs, [r["test_top1"] for r in records], style, label=method)
        if method.startswith("ldrld"):
            ax_loss.plot(epochs, [r["train_loss"] for r in records], style, label=method)
    ax_acc.set(xlabel="epoch", ylabel="test top-1 (%)", title="resnet20 students")
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="LDRLD: cached vs online")
    ax_acc.legend()
    ax_loss.legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)


def write_report(work: Path, report: Path, epochs: int, views: int) -> None:
    timings = json.loads((work / "timings.json").read_text())
    cache = open_cache(str(work / "cache"))
    teacher_test = open_cache(str(work / "teacher_test")).meta.teacher_top1
    size = cache.stored_bytes() or 0
    png = report.parent / "results_cifar100.png"
    _plot(work, png)
    lines = [
        "# Results: CIFAR-100, ResNet-56 -> resnet20, reduced CPU budget",
        "",
        f"Produced by `python experiments/cifar100/run.py --epochs {epochs} --views {views}`.",
        f"Teacher: the real ResNet-56 in `../shared/data` (test top-1 {teacher_test[0]:.2f}%; per "
        f"cached training view: {', '.join(f'{x:.2f}%' for x in cache.meta.teacher_top1 or [])}).",
        f"Cache: {views} views x 50,000 samples, dense float16, {size / 2**20:.1f} MiB, "
        f"extracted in {timings['extract']:.0f} s. Versions: {cache.meta.versions}.",
        "",
        "| method | top-1 | top-5 | best top-1 | s / epoch |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for method in (*METHODS, "ldrld_online"):
        records = _metrics(work / method)
        if not records:
            continue
        last = records[-1]
        per_epoch = sum(r["epoch_seconds"] for r in records) / len(records)
        lines.append(
            f"| {method} | {last['test_top1']:.2f} | {last['test_top5']:.2f} | "
            f"{max(r['test_top1'] for r in records):.2f} | {per_epoch:.0f} |"
        )
    lines += ["", f"![curves]({png.name})", ""]
    report.write_text("\n".join(lines))
