"""One command that proves the CUDA paths and measures them: extract and train on a GPU.

    python benchmarks/gpu_check.py --out DIR [--data-dir ../shared/data] [--device auto] [--tiny]

Three cases, each run end to end through the library (``run_extract``, ``run_train``):

* ``cifar100_resnet56``: the real ResNet-56 teacher over 8 views of the CIFAR-100 test split
  (10,000 images), student resnet20;
* ``cifar100_mixed``: the same over 2 views of ``cifar+mixup-cutmix`` (mixed views);
* ``jpeg_resnet50``: a timm ResNet-50 teacher (seeded random weights, nothing downloaded) at 224 on
  a JPEG tree written here from real CIFAR-100 images upscaled to 256 (1000 class folders), student
  timm resnet18.

Per case it records: extract images/s against the bare teacher forward on the same preprocessed
images (same batch size, device, autocast and channels-last); whether the cache's chunk bytes are
independent of the batch size (two extractions, batch sizes B and B/4; if not, the largest logit
difference); the data path alone (the same loader, no forward); whether cached and online training
give the same per-step losses (float32 cache), the first step and size of any difference, and
whether a cached run repeated gives the same losses (the student's own kernels); training images/s
cached vs online vs CE only. On CUDA
the paths exercise float16 autocast (teacher), bfloat16 autocast (student), channels-last, pinned
memory and non-blocking copies. Results go to ``DIR/gpu_check.json`` and ``DIR/gpu_check.md``.

Each case works in ``DIR/<case>`` (replaced when the script runs again). ``--tiny`` runs the
same code at a tiny size (digits + resnet8; a 48-image JPEG tree + timm test_resnet, both models at
32 x 32) on CPU; the test suite runs it, so the script is known to work before a GPU sees it. The
full size needs ../shared/data and is sized to take a few minutes on one GPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks._jpeg import cifar_pixels, jpeg_tree  # noqa: E402
from kdcache.augment import create_recipe  # noqa: E402
from kdcache.cache.reader import open_cache  # noqa: E402
from kdcache.data import load_dataset  # noqa: E402
from kdcache.extract import ExtractConfig, run_extract  # noqa: E402
from kdcache.models import build_model  # noqa: E402
from kdcache.models.inference import prepare_teacher, teacher_forward, teacher_inference  # noqa: E402
from kdcache.models.preprocess import resolve_preprocessing  # noqa: E402
from kdcache.runtime import resolve_device  # noqa: E402
from kdcache.training import outputs  # noqa: E402
from kdcache.training.config import TrainConfig  # noqa: E402
from kdcache.training.loop import run_train  # noqa: E402
from kdcache.views import SeededViews, view_items  # noqa: E402


@dataclass(frozen=True)
class Case:
    name: str
    dataset: str
    data_dir: str | None
    split: str
    recipe: str
    teacher: str
    weights: str
    student: str
    batch_size: int
    train_samples: int
    workers: int
    teacher_preprocessing: str = "auto"
    student_preprocessing: str = "auto"
    views: int = 1  # views extracted (and bare-forwarded): enough rows that start-up is noise


def _digits_pixels(n: int) -> np.ndarray:
    source = load_dataset("digits", None, "train")
    grey = np.asarray([source.image(i)[0].numpy() for i in range(n)])  # [n, 8, 8]
    return np.repeat(grey[..., None], 3, axis=-1)


def _seeded_weights(name: str, classes: int, path: Path, in_chans: int = 3) -> str:
    torch.manual_seed(0)
    torch.save(build_model(name, classes, in_chans=in_chans).state_dict(), path)
    return str(path)


def build_cases(out: Path, data_dir: Path | None, tiny: bool) -> list[Case]:
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    if tiny:
        weights = _seeded_weights("resnet8", 10, work / "resnet8.pth", in_chans=1)
        # The test batch: the device run carries a test-only copy of CIFAR-100 (train is 155 MB).
        pixels = cifar_pixels(data_dir, 48) if data_dir else _digits_pixels(48)
        jpeg = jpeg_tree(work / "jpeg", pixels, classes=4, size=(40, 40), val=16)
        return [
            Case("digits_resnet8", "digits", None, "test", "cifar", "resnet8", weights,
                 "resnet8", 64, 256, 0),
            Case("digits_mixed", "digits", None, "test", "cifar+mixup-cutmix", "resnet8",
                 weights, "resnet8", 64, 256, 0),
            # Both models fed 32 x 32 resizes of the 224 x 224 views: the JPEG path at CPU cost.
            Case("jpeg_test_resnet", "imagefolder", str(jpeg), "train", "imagenet", "test_resnet",
                 _seeded_weights("test_resnet", 4, work / "test_resnet.pth"), "resnet8", 8, 32,
                 0, "size=32", "size=32"),
        ]  # fmt: skip
    if data_dir is None:
        raise SystemExit("the full-size check needs --data-dir (../shared/data)")
    jpeg = jpeg_tree(
        work / "jpeg", cifar_pixels(data_dir, 3072), classes=1000, size=(256, 256), val=1024
    )
    return [
        Case("cifar100_resnet56", "cifar100", str(data_dir), "test", "cifar", "resnet56",
             str(data_dir / "teachers" / "resnet56_cifar100_020118.pth"), "resnet20", 256, 10_000,
             8, views=8),
        # Mixed views: the partner's view, the draws and the blend on the loader's side.
        Case("cifar100_mixed", "cifar100", str(data_dir), "test", "cifar+mixup-cutmix",
             "resnet56", str(data_dir / "teachers" / "resnet56_cifar100_020118.pth"), "resnet20",
             256, 10_000, 8, views=2),
        Case("jpeg_resnet50", "imagefolder", str(jpeg), "train", "imagenet", "timm:resnet50",
             _seeded_weights("timm:resnet50", 1000, work / "resnet50.pth"), "timm:resnet18", 256,
             2048, 12, views=4),
    ]  # fmt: skip


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_forward_images_per_second(
    case: Case, device: torch.device
) -> tuple[float, float, dict[str, float]]:
    """The teacher forward alone on the same views, already preprocessed and on the device; and
    the data path alone (the same loader, no forward)."""
    source = load_dataset(case.dataset, case.data_dir, case.split)
    spec = source.spec
    teacher = build_model(case.teacher, spec.num_classes, in_chans=spec.in_chans,
                          weights=case.weights)  # fmt: skip
    pre = resolve_preprocessing(teacher, spec, case.teacher_preprocessing)
    teacher = prepare_teacher(teacher, device)
    items = view_items(range(case.views), len(source))
    views = SeededViews(source, create_recipe(case.recipe, spec), 0, items)
    loader = torch.utils.data.DataLoader(views, batch_size=case.batch_size,
                                         num_workers=case.workers)  # fmt: skip
    start = time.perf_counter()
    batches = [pre(b["image"].to(device)) for b in loader]
    _sync(device)
    data_path = len(items) / (time.perf_counter() - start)
    with teacher_inference(device):
        teacher_forward(teacher, batches[0])  # warm-up (cuDNN autotuning, lazy init)
        _sync(device)
        start = time.perf_counter()
        for x in batches:
            teacher_forward(teacher, x)
        _sync(device)
        bare = len(items) / (time.perf_counter() - start)
        by_rows = _images_per_second_by_forward_rows(teacher, torch.cat(batches[:4]), device)
    return bare, data_path, by_rows


def _images_per_second_by_forward_rows(
    teacher: torch.nn.Module, x: torch.Tensor, device: torch.device
) -> dict[str, float]:
    """The plain forward at several fixed row counts: the cost of CUDA_FORWARD_ROWS' choice."""
    rates = {}
    for rows in (64, 128, 256, 512):
        pieces = [p for p in x.split(rows) if len(p) == rows] or [x]
        teacher(pieces[0])  # warm-up for this shape
        _sync(device)
        start = time.perf_counter()
        for _ in range(4):
            for p in pieces:
                teacher(p)
        _sync(device)
        rates[str(rows)] = 4 * sum(len(p) for p in pieces) / (time.perf_counter() - start)
    return rates


def _chunks(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != "zarr.json"}  # fmt: skip


def _logit_difference(a: Path, b: Path) -> float:
    ra, rb = open_cache(str(a)), open_cache(str(b))
    return max(
        float(np.abs(ra.read_dense(0, k).astype(np.float64) - rb.read_dense(0, k)).max())
        for k in range(ra.meta.num_blocks)
    )


def _train(case: Case, out: Path, device: str, **kw: Any) -> tuple[list[float], float]:
    config = TrainConfig(student=case.student, out=str(out), epochs=1, batch_size=64,
                         max_samples=case.train_samples, workers=case.workers, device=device,
                         seed=1, force=True, student_preprocessing=case.student_preprocessing,
                         **kw)  # fmt: skip
    result = run_train(config)
    return result.step_losses, float(outputs.read_metrics(out)[-1]["images_per_second"])


def run_case(case: Case, out: Path, device: str) -> dict[str, Any]:
    dev = resolve_device(device)
    if out.exists():  # this script's own folder from an earlier run: start afresh
        shutil.rmtree(out)
    extract = dict(teacher=case.teacher, weights=case.weights, dataset=case.dataset,
                   data_dir=case.data_dir, split=case.split, recipe=case.recipe, dtype="float32",
                   chunk_rows=1024, workers=case.workers, device=device, views=case.views,
                   teacher_preprocessing=case.teacher_preprocessing)  # fmt: skip
    started = time.perf_counter()
    big = run_extract(
        ExtractConfig(out=str(out / "cache_b"), batch_size=case.batch_size, **extract)
    )
    small_batch = max(case.batch_size // 4, 1)
    small = run_extract(ExtractConfig(out=str(out / "cache_s"), batch_size=small_batch, **extract))
    same_bytes = _chunks(out / "cache_b") == _chunks(out / "cache_s")
    bare, data_path, by_rows = bare_forward_images_per_second(case, dev)
    online_kw = dict(dataset=case.dataset, data_dir=case.data_dir, split=case.split,
                     recipe=case.recipe, aug_seed=0, block_rows=1024,
                     num_views=case.views)  # fmt: skip
    cached_losses, cached_ips = _train(
        case, out / "train_cached", device, loss="kd", cache=str(out / "cache_b"),
        data_dir=case.data_dir)  # fmt: skip
    # The same cached run again: what the student's own kernels (cuDNN backward) vary by.
    repeat_losses, _ = _train(case, out / "train_cached_again", device, loss="kd",
                              cache=str(out / "cache_b"), data_dir=case.data_dir)  # fmt: skip
    online_losses, online_ips = _train(case, out / "train_online", device, loss="kd",
                                       teacher=case.teacher, teacher_weights=case.weights,
                                       teacher_preprocessing=case.teacher_preprocessing,
                                       **online_kw)  # fmt: skip
    _, ce_ips = _train(case, out / "train_ce", device, loss="ce", **online_kw)
    diffs = [abs(a - b) for a, b in zip(cached_losses, online_losses, strict=True)]
    first = next((k for k, d in enumerate(diffs) if d), None)
    repeat = [abs(a - b) for a, b in zip(cached_losses, repeat_losses, strict=True)]
    return {
        "case": case.name,
        "teacher": case.teacher,
        "student": case.student,
        "images": big.images,
        "extract_images_per_s": big.images_per_second,
        "bare_forward_images_per_s": bare,
        "data_path_images_per_s": data_path,
        "forward_images_per_s_by_rows": by_rows,
        "extract_vs_bare": big.images_per_second / bare,
        "bytes_independent_of_batch_size": same_bytes,
        "batch_sizes": [case.batch_size, max(case.batch_size // 4, 1)],
        "max_logit_difference_between_batch_sizes": 0.0
        if same_bytes
        else _logit_difference(out / "cache_b", out / "cache_s"),
        "small_batch_extract_images_per_s": small.images_per_second,
        "cached_equals_online": not any(diffs),
        "train_steps": len(diffs),
        "first_differing_step": first,
        "max_step_loss_difference": max(diffs, default=0.0),
        "step0_loss_difference": diffs[0] if diffs else 0.0,
        "cached_repeat_identical": not any(repeat),
        "cached_repeat_max_difference": max(repeat, default=0.0),
        "train_cached_images_per_s": cached_ips,
        "train_online_images_per_s": online_ips,
        "train_ce_images_per_s": ce_ips,
        "seconds": time.perf_counter() - started,
    }


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"Device: {report['device']}; torch {report['torch']}; {report['total_seconds']:.0f} s.",
        "",
        "| case | extract img/s | bare forward img/s | ratio | bytes independent of batch size "
        "| data path img/s | cached == online | cached run == itself "
        "| train img/s cached / online / CE |",
        "| --- | ---: | ---: | ---: | --- | ---: | --- | --- | --- |",
    ]
    for r in report["cases"]:
        same = (
            "yes"
            if r["bytes_independent_of_batch_size"]
            else (f"no (max logit diff {r['max_logit_difference_between_batch_sizes']:.3g})")
        )
        equal = (
            "yes"
            if r["cached_equals_online"]
            else (
                f"no (from step {r['first_differing_step']}, step 0 "
                f"{r['step0_loss_difference']:.3g}, max {r['max_step_loss_difference']:.3g})"
            )
        )
        repeat = ("yes" if r["cached_repeat_identical"]
                  else f"no (max {r['cached_repeat_max_difference']:.3g})")  # fmt: skip
        lines.append(
            f"| {r['case']} ({r['teacher']} -> {r['student']}, {r['images']} images) "
            f"| {r['extract_images_per_s']:.0f} | {r['bare_forward_images_per_s']:.0f} "
            f"| {r['extract_vs_bare']:.2f} | {same} | {r['data_path_images_per_s']:.0f} "
            f"| {equal} | {repeat} "
            f"| {r['train_cached_images_per_s']:.0f} / {r['train_online_images_per_s']:.0f} / "
            f"{r['train_ce_images_per_s']:.0f} |"
        )  # fmt: skip
    lines.append("")
    for r in report["cases"]:
        rates = ", ".join(f"{k} rows {v:.0f}" for k, v in r["forward_images_per_s_by_rows"].items())
        lines.append(f"- {r['case']}: plain forward img/s at a fixed shape: {rates}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--tiny", action="store_true", help="CPU-sized smoke run (tests).")
    args = parser.parse_args(argv)
    data_dir = args.data_dir if (args.data_dir / "cifar-100-python").is_dir() else None
    args.out.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(args.device)
    started = time.perf_counter()
    cases = build_cases(args.out, data_dir, args.tiny)
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(dev)
        if dev.type == "cuda"
        else platform.processor() or "cpu",
        "torch": torch.__version__,
        "tiny": args.tiny,
        "cases": [run_case(case, args.out / case.name, args.device) for case in cases],
    }
    report["total_seconds"] = time.perf_counter() - started
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    (args.out / "gpu_check.md").write_text(markdown(report))
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
