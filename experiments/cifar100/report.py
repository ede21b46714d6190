"""Write the generated sections of docs/results.md (and its PNG) from the experiment's run dirs.

Hand-written sections of docs/results.md (the discussion) are left as they are.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._docs import write_section
from kdcache.cache.reader import open_cache
from kdcache.losses import loss_info
from kdcache.training import outputs

REPO = Path(__file__).resolve().parents[2]
HEADER = (
    "# Results: CIFAR-100, ResNet-56 -> resnet20, on a reduced CPU budget\n\n"
    "The sections below are written by `experiments/cifar100/report.py` from the runs of "
    "`experiments/cifar100/run.py`; the discussion at the end is written by hand.\n"
)
METHODS = ("ce", "kd", "dkd", "rld", "ldrld")


def _runs(work: Path) -> dict[str, list[dict[str, Any]]]:
    names = (*METHODS, "ldrld_online")
    return {name: outputs.read_metrics(work / name) for name in names if (work / name).is_dir()}


def _run_json(work: Path, name: str) -> dict[str, Any]:
    return json.loads((work / name / "run.json").read_text())


def _step_losses(work: Path, name: str) -> list[float]:
    return [x for r in outputs.read_metrics(work / name, outputs.STEP_LOSSES) for x in r["loss"]]


def _plot(work: Path, runs: dict[str, list[dict[str, Any]]], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(12, 4.2))
    for name, records in runs.items():
        style = "--" if name.endswith("online") else "-"
        epochs = [r["epoch"] for r in records]
        ax_acc.plot(epochs, [r["test_top1"] for r in records], style, marker="o", label=name)
    for name, style in (("ldrld", "-"), ("ldrld_online", "--")):
        losses = _step_losses(work, name)
        if losses:
            ax_loss.plot(np.arange(1, len(losses) + 1), losses, style, linewidth=0.8, label=name)
    ax_acc.set(xlabel="epoch", ylabel="test top-1 (%)", title="resnet20 students, CIFAR-100 test")
    ax_loss.set(xlabel="optimiser step", ylabel="training loss (every step)",
                title="LDRLD: cached vs online teacher")  # fmt: skip
    for ax in (ax_acc, ax_loss):
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def _setup(work: Path, epochs: int, views: int, timings: dict[str, float]) -> str:
    cache = open_cache(str(work / "cache"))
    meta, ident = cache.meta, cache.meta.identity
    teacher_test = open_cache(str(work / "teacher_test")).meta.teacher_top1 or [float("nan")]
    size = cache.stored_bytes() or 0
    rows = ident.dataset.num_samples * ident.augmentation.num_views
    schedule = _run_json(work, "ldrld")["schedule"]
    versions = ", ".join(f"{k} {v}" for k, v in sorted(meta.versions.items()))
    per_view = ", ".join(f"{x:.2f}%" for x in meta.teacher_top1 or [])
    lines = [
        f"Command: `python experiments/cifar100/run.py --epochs {epochs} --views {views}` "
        f"on {os.cpu_count()} CPU cores, no GPU; runs started "
        f"{_run_json(work, 'ldrld')['started'][:10]}.",
        "",
        f"- **Teacher**: the real ResNet-56 in `../shared/data`: **{teacher_test[0]:.2f}%** top-1 "
        f"on the test split (`kdcache extract --split test --recipe none`, then `kdcache info`); "
        f"on the cached training views ({ident.augmentation.recipe} recipe): {per_view}.",
        f"- **Cache**: {ident.augmentation.num_views} views x {ident.dataset.num_samples:,} "
        f"samples, {ident.storage.mode} {ident.storage.dtype}, **{size / 2**20:.1f} MiB** on "
        f"disk ({size / rows:.0f} B per sample per view), extracted in "
        f"**{timings['cache']:.0f} s** ({rows / timings['cache']:.0f} img/s). "
        "float32 rather than the default float16, so that the online run can be compared bit for "
        "bit; float16 halves the size (docs/benchmarks.md).",
        f"- **Budget**: {epochs} epochs of the 240-epoch CIFAR protocol, scaled: batch "
        f"{schedule['batch_size']}, SGD lr {schedule['lr']} momentum 0.9, weight decay "
        f"{schedule['weight_decay']}, lr x{schedule['lr_decay']} after epochs "
        f"{', '.join(map(str, schedule['milestones'])) or '(none)'}, DKD/RLD warm-up "
        f"{schedule['warmup_epochs']:.2f} epochs. Each epoch sees every sample once, in one of "
        f"the {views} cached views. Same student seed (0) for every method.",
        "- **Loss settings**: each method's defaults (`kdcache losses`), the papers' CIFAR "
        "settings:",
    ]
    for name in METHODS[1:]:
        info = loss_info(name)
        params = ", ".join(f"{k}={'T' if v is None else v}" for k, v in info.defaults.items())
        lines.append(
            f"  - {name}: {params}; ce_weight={info.ce_weight}, "
            f"distill_weight={info.distill_weight}, warm-up {info.warmup_epochs} of 240 epochs"
        )
    lines += ["", f"Versions: {versions}."]
    return "\n".join(lines)


def _table(runs: dict[str, list[dict[str, Any]]]) -> str:
    lines = [
        "| method | top-1 (%) | top-5 (%) | best top-1 (%) | median s / epoch (train) | img/s |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, records in runs.items():
        if not records:
            continue
        last = records[-1]
        # Medians: an epoch that shared the machine with other work does not drag the figure.
        seconds = np.median([r["epoch_seconds"] for r in records])
        rate = np.median([r["images_per_second"] for r in records])
        lines.append(
            f"| {name} | {last['test_top1']:.2f} | {last['test_top5']:.2f} | "
            f"{max(r['test_top1'] for r in records):.2f} | {seconds:.0f} | {rate:.0f} |"
        )
    done = ", ".join(f"{name} {len(records)}" for name, records in runs.items())
    total = sum(r["epoch_seconds"] for records in runs.values() for r in records)
    lines += [
        "",
        f"Epochs completed: {done}. Test metrics after the last epoch. Training loops of all "
        f"runs together: {total / 60:.0f} min (evaluation and extraction not included).",
    ]
    return "\n".join(lines)


def _online(work: Path, runs: dict[str, list[dict[str, Any]]]) -> str:
    cached, online = _step_losses(work, "ldrld"), _step_losses(work, "ldrld_online")
    if not cached or not online:
        return "The online run has not finished."
    n = min(len(cached), len(online))
    diff = np.abs(np.asarray(cached[:n]) - np.asarray(online[:n]))
    same = int((diff == 0).sum())
    t_cached = [r["epoch_seconds"] for r in runs["ldrld"]]
    t_online = [r["epoch_seconds"] for r in runs["ldrld_online"]]
    return "\n".join(
        [
            f"The same LDRLD run with the live ResNet-56 (`--teacher resnet56`) instead of the "
            f"cache: of {n} optimiser steps compared, **{same} have bit-identical losses** "
            f"(largest difference {diff.max():.3g}); final top-1 "
            f"{runs['ldrld'][-1]['test_top1']:.2f}% cached vs "
            f"{runs['ldrld_online'][-1]['test_top1']:.2f}% online.",
            "",
            "| | cached | online | online / cached |",
            "| --- | ---: | ---: | ---: |",
            f"| median s / epoch | {np.median(t_cached):.0f} | {np.median(t_online):.0f} | "
            f"{np.median(t_online) / np.median(t_cached):.2f}x |",
            f"| fastest epoch, s | {min(t_cached):.0f} | {min(t_online):.0f} | "
            f"{min(t_online) / min(t_cached):.2f}x |",
            "",
            "Epoch times are the training loop only (evaluation excluded), on a shared 2-core "
            "machine; the fastest-epoch row is the least disturbed by other load. Per-epoch "
            "times of every run: "
            + "; ".join(
                f"{name} " + ", ".join(f"{r['epoch_seconds']:.0f}" for r in runs[name])
                for name in ("ldrld", "ldrld_online")
            )
            + " s.",
        ]
    )


def write_report(work: Path, report: Path, epochs: int, views: int) -> None:
    timings = json.loads((work / "timings.json").read_text())
    runs = _runs(work)
    png = report.parent / "results_cifar100.png"
    _plot(work, runs, png)
    log = work / "commands.log"
    # Paths as a reader's checkout sees them: the shared data beside the repository.
    shared = str(REPO.parent / "shared")
    commands = log.read_text().strip().replace(shared, "../shared") if log.exists() else ""
    sections = {
        "Setup": _setup(work, epochs, views, timings),
        "Accuracy and time": _table(runs) + f"\n\n![test top-1 and LDRLD step losses]({png.name})",
        "Cached vs online teacher": _online(work, runs),
        "Exact commands": "As run (in order; `--resume` lines are continued runs):\n\n```\n"
        + commands
        + "\n```",
    }
    for title, body in sections.items():
        write_section(report, title, body, header=HEADER)
