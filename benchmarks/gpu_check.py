"""One command that proves the CUDA paths and measures them: extract and train on a GPU.

    python benchmarks/gpu_check.py --out DIR [--data-dir ../shared/data] [--device auto]
                                   [--budget 420] [--tiny]

Sized for ONE call on one GPU (H100 / H200) of under 8 minutes. In order of importance, each
measurement run only if its estimated cost fits the time budget (``--budget`` seconds, default
420), what does not fit recorded as skipped with the reason (never as measured); a measurement
still running when the budget is spent is stopped and recorded as interrupted. The results are
written to ``DIR/gpu_check.json`` and ``DIR/gpu_check.md`` after every measurement, so a call cut
short keeps what it measured.

1. **Extraction and correctness** (``cifar100_resnet56``): the real ResNet-56 teacher over 8 views
   of the CIFAR-100 test split (10,000 images) through ``run_extract``: extract images/s against
   the bare teacher forward on the same preprocessed images (same batch, device, autocast,
   channels-last) and at fixed shapes of 64-512 rows; whether the cache's chunk bytes are
   independent of the batch size (extract batch sizes B and B/4; if not, the largest logit
   difference); the data path alone; whether cached and online training give the same per-step
   losses and whether a cached run repeated gives the same losses; train images/s cached vs
   online vs CE only (one epoch, the stream ``auto`` picks).
2. **Student training speed** (``train``): a resnet20 student at batch 64 and 512 on the test
   split (9,728 images: every batch full at both sizes), CE only / from the case's cache /
   online with the live ResNet-56, each eager and compiled (``compile=True``: forward, loss and
   backward), with the host stream (``stream="host"``, DataLoader workers) and the device stream
   (``stream="device"``), 3 epochs of which the 2nd and 3rd are timed (``metrics.jsonl``'s
   ``epoch_seconds``: compilation and warm-up excluded; no evaluation).
3. **A student array** (``array``): the five methods (ce, kd, dkd, rld, ldrld) from the cache at
   batch 64 through ``expand_array`` / ``run_array`` (device stream, eager): aggregate and
   per-student images/s, and one student (dkd) trained alone: are its per-step losses those it
   has in the array?
4. **The kernels' own time** (``kernel_floor``): ``torch.profiler`` over 20 steps of the batch-64
   run (CE and cached eager, CE compiled): the time the GPU is busy per step and the kernels per
   step, against the measured step: how far launches and host work keep it from the floor.
5. The remaining configurations (batch 512, compiled host stream), then the other extraction
   cases: ``cifar100_mixed`` (2 views of ``cifar+mixup-cutmix``) and ``jpeg_resnet50`` (a timm
   ResNet-50 teacher, seeded random weights, at 224 on a JPEG tree written here from CIFAR-100
   test images upscaled to 256 in 1000 class folders; student timm resnet18).

``goals`` holds the ratios issues 21 and 22 name: CE-only images/s at batch 64 (goal >= 25k),
cached / CE-only (>= 0.95), cached / online (>= 1.3), ResNet-56 extraction / its bare forward at
256 rows (>= 0.9), the five-method array's aggregate images/s (>= 150k). On CUDA the paths
exercise float16 autocast (teacher), bfloat16 autocast (student), channels-last, pinned memory
and non-blocking copies.

On the device machine only the CIFAR-100 *test* split is needed (the train split is over the
64 MiB a call carries): copy ``cifar-100-python/{test,meta}`` and ``teachers/`` into an ignored
folder of the checkout (e.g. ``.gpudata``), carry it with zarr / numcodecs wheels, and run
``python3 benchmarks/gpu_check.py --out $OUT/gpu --data-dir .gpudata``.

``--tiny`` runs the same code at a tiny size on CPU (digits + resnet8, batches 32 and 128, a
48-image JPEG tree + timm test_resnet at 32 x 32); compiled runs are recorded as skipped there
(torch.compile on the CPU takes about a minute per graph; tests/test_step.py compiles the step).
The test suite runs it, so the script is known to work before a GPU sees it.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks._budget import Budget, OutOfTime  # noqa: E402
from benchmarks._jpeg import cifar_pixels, jpeg_tree  # noqa: E402
from benchmarks._train_speed import Data, measure, profile_run, read_speed, train_config  # noqa: E402
from kdcache.augment import create_recipe  # noqa: E402
from kdcache.cache.reader import open_cache  # noqa: E402
from kdcache.data import load_dataset  # noqa: E402
from kdcache.extract import ExtractConfig, run_extract  # noqa: E402
from kdcache.models import build_model  # noqa: E402
from kdcache.models.inference import prepare_teacher, teacher_forward, teacher_inference  # noqa: E402
from kdcache.models.preprocess import resolve_preprocessing  # noqa: E402
from kdcache.runtime import resolve_device  # noqa: E402
from kdcache.training import outputs  # noqa: E402
from kdcache.training.array import expand_array, run_array  # noqa: E402
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
    setup: Callable[[], object] | None = None  # writes the case's data (run only if it runs)


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
        jpeg = work / "jpeg"

        def tiny_tree() -> Path:
            pixels = cifar_pixels(data_dir, 48) if data_dir else _digits_pixels(48)
            return jpeg_tree(jpeg, pixels, classes=4, size=(40, 40), val=16)

        return [
            Case("digits_resnet8", "digits", None, "test", "cifar", "resnet8", weights,
                 "resnet8", 64, 256, 0),
            Case("digits_mixed", "digits", None, "test", "cifar+mixup-cutmix", "resnet8",
                 weights, "resnet8", 64, 256, 0),
            # Both models fed 32 x 32 resizes of the 224 x 224 views: the JPEG path at CPU cost.
            Case("jpeg_test_resnet", "imagefolder", str(jpeg), "train", "imagenet", "test_resnet",
                 _seeded_weights("test_resnet", 4, work / "test_resnet.pth"), "resnet8", 8, 32,
                 0, "size=32", "size=32", setup=tiny_tree),
        ]  # fmt: skip
    if data_dir is None:
        raise SystemExit("the full-size check needs --data-dir (../shared/data)")
    jpeg = work / "jpeg"

    def tree() -> Path:
        return jpeg_tree(jpeg, cifar_pixels(data_dir, 3072), classes=1000, size=(256, 256),
                         val=1024)  # fmt: skip

    return [
        Case("cifar100_resnet56", "cifar100", str(data_dir), "test", "cifar", "resnet56",
             str(data_dir / "teachers" / "resnet56_cifar100_020118.pth"), "resnet20", 256, 10_000,
             8, views=8),
        # Mixed views: the partner's view, the draws and the blend on the loader's side.
        Case("cifar100_mixed", "cifar100", str(data_dir), "test", "cifar+mixup-cutmix",
             "resnet56", str(data_dir / "teachers" / "resnet56_cifar100_020118.pth"), "resnet20",
             256, 10_000, 8, views=2),
        Case("jpeg_resnet50", "imagefolder", str(jpeg), "train", "imagenet", "timm:resnet50",
             str(work / "resnet50.pth"), "timm:resnet18", 256, 2048, 12, views=4,
             setup=lambda: (tree(), _seeded_weights("timm:resnet50", 1000,
                                                    work / "resnet50.pth"))),
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
    if case.setup is not None:
        case.setup()
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


# ---------------------------------------------------------------------------- student speed


@dataclass(frozen=True)
class Size:
    """How big one call's training measurements are."""

    batches: tuple[int, int]  # the papers' batch (the goals'), and a large one
    samples: int  # per epoch: a multiple of both batches, so every batch is full
    epochs: int  # the first is not timed
    workers: int  # the host stream's DataLoader processes
    profile: tuple[int, int, int]  # steps waited, warmed up and profiled
    compile: bool  # measure compiled steps (else: recorded as skipped, with why)
    budget: float | None  # default --budget
    guess_train: float  # seconds of an eager run before one was made
    guess_compile: float  # seconds a new graph's compilation adds
    guess_case: float  # seconds of an extraction case


FULL = Size((64, 512), 9728, 3, 8, (10, 5, 20), True, 420.0, 25.0, 120.0, 60.0)
TINY = Size((32, 128), 256, 2, 1, (1, 1, 3), False, None, 10.0, 60.0, 30.0)
NO_COMPILE_TINY = ("--tiny: torch.compile on the CPU takes about a minute per graph "
                   "(tests/test_step.py compiles the step)")  # fmt: skip
ARRAY_LOSSES = ("ce", "kd", "dkd", "rld", "ldrld")
ALONE = "dkd"  # the array student also trained alone (its warm-up makes it the most stateful)
STREAMS = ("device", "host")


def train_data(case: Case, out: Path) -> Data:
    """The students' data: the first case's split, cache (``cache_b``) and teacher."""
    return Data(dataset=case.dataset, data_dir=case.data_dir, split=case.split,
                student=case.student, cache=str(out / case.name / "cache_b"),
                teacher=case.teacher, teacher_weights=case.weights, num_views=case.views,
                block_rows=1024)  # fmt: skip


@dataclass(frozen=True)
class Item:
    """One measurement: where its record goes, how long it may take, what it runs."""

    section: str  # the report's list it is appended to ("array": the report's value)
    key: dict[str, Any]  # what it is (batch, mode ...), repeated in its record
    kind: str  # its cost class for the budget's estimates
    guess: Callable[[], float]  # its estimated seconds
    run: Callable[[], dict[str, Any]] | None  # None: skipped for ``reason``
    reason: str = ""


class Checks:
    """Runs the items in order under the budget, writing the report after each."""

    def __init__(self, report: dict[str, Any], budget: Budget, save: Callable[[], None]) -> None:
        self.report, self.budget, self.save = report, budget, save
        self.spent = False

    def store(self, item: Item, record: dict[str, Any]) -> None:
        record = {**item.key, **record}
        if item.section == "array":
            self.report["array"] = record
        else:
            self.report[item.section].append(record)
        self.save()

    def attempt(self, item: Item) -> None:
        if item.run is None:
            self.store(item, {"status": "skipped", "reason": item.reason})
            return
        estimate = item.guess()
        refusal = "time budget: spent" if self.spent else self.budget.refusal(estimate)
        if refusal is not None:
            self.store(item, {"status": "skipped", "reason": refusal})
            return
        started = time.perf_counter()
        print(f"gpu_check: {item.section} {item.key} (about {estimate:.0f} s)", flush=True)
        try:
            record = {"status": "measured", **item.run()}
        except OutOfTime:
            self.spent = True
            record = {"status": "skipped", "reason": "interrupted: the time budget ran out"}
        except Exception as exc:  # one failure must not lose the rest of a one-shot GPU call
            record = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
        self.budget.note(item.kind, time.perf_counter() - started)
        self.store(item, record | {"seconds": time.perf_counter() - started})


def _train_kind(mode: str, batch: int, compiled: bool) -> str:
    return f"train:{mode}:{batch}:{'compiled' if compiled else 'eager'}"


def train_items(
    data: Data, size: Size, out: Path, device: str, budget: Budget, batch: int, compiled: bool,
    streams: tuple[str, ...] = STREAMS, modes: tuple[str, ...] = ("ce", "cached", "online"),
) -> list[Item]:  # fmt: skip
    items = []
    for stream in streams:
        for mode in modes:
            key = {"batch": batch, "mode": mode, "compiled": compiled, "stream": stream}
            config = train_config(
                data, mode, out / "train" / f"b{batch}_{mode}_{stream}_{int(compiled)}",
                batch_size=batch, samples=size.samples, epochs=size.epochs, stream=stream,
                compiled=compiled, workers=size.workers if stream == "host" else 0,
                device=device)  # fmt: skip
            kind = _train_kind(mode, batch, compiled)

            def eager(mode: str = mode) -> float:
                return budget.estimate(_train_kind(mode, batch, False), size.guess_train)

            def guess(kind: str = kind, eager: Callable[[], float] = eager) -> float:
                # A compiled run: its own last cost, else an eager run's plus the last compile's.
                extra = budget.estimate("compile", size.guess_compile) if compiled else 0.0
                return budget.estimate(kind, eager() + extra)

            if compiled and not size.compile:
                items.append(Item("train", key, kind, guess, None, NO_COMPILE_TINY))
            else:
                items.append(Item("train", key, kind, guess,
                                  _speed_of(config, budget, eager)))  # fmt: skip
    return items


def _speed_of(
    config: TrainConfig, budget: Budget, eager: Callable[[], float]
) -> Callable[[], dict[str, Any]]:
    def run() -> dict[str, Any]:
        before = eager()
        speed = measure(config)
        if config.compile:  # what compiling added, for the next compiled run's estimate
            budget.note("compile", max(speed.wall_s - before, 0.0))
        return speed.to_dict() | {"workers": config.workers}

    return run


def array_check(data: Data, size: Size, out: Path, device: str) -> dict[str, Any]:
    """The five methods as one array from the cache (device stream, eager), and one of them
    alone."""
    batch = size.batches[0]
    base = train_config(data, "cached", out / "array", batch_size=batch, samples=size.samples,
                        epochs=size.epochs, stream="device", device=device)  # fmt: skip
    settings = base.to_dict() | {"loss": list(ARRAY_LOSSES)}
    array = expand_array(settings)
    result = run_array(array)
    students, images, seconds, all_images = [], 0.0, 0.0, 0.0
    for member in result.members:
        row: dict[str, Any] = {"name": member.name, "loss": member.config.loss}
        if member.result is None:
            students.append(row | {"error": member.error})
            continue
        speed = read_speed(Path(member.config.out), member.result.step_losses, float("nan"))
        later = speed.epoch_s * (size.epochs - 1 if size.epochs > 1 else 1)
        images += speed.images_per_s * later
        seconds += later
        all_images += size.samples * size.epochs
        students.append(row | {"images_per_s": speed.images_per_s,
                               "first_epoch_s": speed.first_epoch_s})  # fmt: skip
    member = next(m for m in result.members if m.config.loss == ALONE)
    alone = measure(replace(member.config, out=str(out / "array_alone" / member.name)))
    in_array = member.result.step_losses if member.result is not None else []
    diffs = [abs(a - b) for a, b in zip(alone.step_losses, in_array, strict=False)]
    return {
        "batch": batch,
        "stream": "device",
        "compiled": False,
        "students": students,
        "aggregate_images_per_s": images / seconds if seconds else None,
        "aggregate_wall_images_per_s": all_images / result.seconds,
        "array_seconds": result.seconds,
        "alone": {"student": member.name, "images_per_s": alone.images_per_s,
                  "steps": len(alone.step_losses),
                  "equal": len(alone.step_losses) == len(in_array) and not any(diffs),
                  "max_difference": max(diffs, default=0.0)},  # fmt: skip
    }


def floor_check(config: TrainConfig, size: Size) -> dict[str, Any]:
    """The profiled step of ``config`` (one epoch of just enough steps)."""
    wait, warm, active = size.profile
    batch = config.batch_size or 64
    config = replace(config, epochs=1, max_samples=batch * (wait + warm + active + 1))
    record = profile_run(config, wait, warm, active)
    busy = record["busy_ms_per_step"] / 1e3
    return record | {"floor_images_per_s": batch / busy if busy else None}


def floor_items(data: Data, size: Size, out: Path, device: str, budget: Budget) -> list[Item]:
    batch = size.batches[0]
    items = []
    for mode, compiled in (("ce", False), ("cached", False), ("ce", True)):
        key = {"batch": batch, "mode": mode, "compiled": compiled, "stream": "device"}
        config = train_config(data, mode, out / "profile" / f"{mode}_{int(compiled)}",
                              batch_size=batch, samples=size.samples, epochs=1, stream="device",
                              compiled=compiled, device=device)  # fmt: skip
        kind = f"profile:{int(compiled)}"

        def guess(mode: str = mode, compiled: bool = compiled) -> float:
            eager = budget.estimate(_train_kind(mode, batch, False), size.guess_train)
            return eager + (size.guess_compile if compiled else 0.0)

        run = (lambda c=config: floor_check(c, size)) if size.compile or not compiled else None
        items.append(Item("kernel_floor", key, kind, guess, run, NO_COMPILE_TINY))
    return items


def case_item(case: Case, out: Path, device: str, size: Size) -> Item:
    return Item("cases", {"case": case.name}, f"case:{case.name}", lambda: size.guess_case,
                lambda: run_case(case, out / case.name, device))  # fmt: skip


def plan(
    cases: list[Case], data: Data, size: Size, out: Path, device: str, budget: Budget
) -> list[Item]:
    """Every measurement, most important first."""
    small, large = size.batches

    def train(batch: int, compiled: bool, streams: tuple[str, ...] = STREAMS) -> list[Item]:
        return train_items(data, size, out, device, budget, batch, compiled, streams)

    def array_guess() -> float:
        one = budget.estimate(_train_kind("cached", small, False), size.guess_train)
        return (len(ARRAY_LOSSES) + 1) * one

    return [
        case_item(cases[0], out, device, size),
        *train(small, False, ("device",)),
        *train(small, False, ("host",)),
        *train_items(data, size, out, device, budget, small, True, ("device",), ("ce", "cached")),
        Item("array", {}, "array", array_guess, lambda: array_check(data, size, out, device)),
        *floor_items(data, size, out, device, budget),
        *train(large, False, ("device",)),
        *train_items(data, size, out, device, budget, small, True, ("device",), ("online",)),
        *train(large, True, ("device",)),
        *train(small, True, ("host",)),
        *train(large, False, ("host",)),
        *train(large, True, ("host",)),
        *(case_item(case, out, device, size) for case in cases[1:]),
    ]


# ---------------------------------------------------------------------------- the report


def _speeds(report: dict[str, Any], batch: int) -> dict[tuple[bool, str], dict[str, float]]:
    """{(compiled, stream): {mode: images/s}} of the measured runs at ``batch``."""
    table: dict[tuple[bool, str], dict[str, float]] = {}
    for r in report["train"]:
        if r["batch"] == batch and r["status"] == "measured":
            table.setdefault((r["compiled"], r["stream"]), {})[r["mode"]] = r["images_per_s"]
    return table


def _setting(compiled: bool, stream: str) -> str:
    return f"{'compiled' if compiled else 'eager'}, {stream} stream"


def goals(report: dict[str, Any], batch: int) -> list[dict[str, Any]]:
    """The ratios the issues' goals name, from what was measured (None: not measured)."""
    speeds = _speeds(report, batch)

    def best(mode: str, need: tuple[str, ...] = ()) -> tuple[tuple[bool, str] | None, float | None]:
        found = [(v[mode], k) for k, v in speeds.items() if mode in v and all(n in v for n in need)]
        if not found:
            return None, None
        value, setting = max(found)
        return setting, value

    rows = []
    setting, ce = best("ce")
    rows.append((f"CE-only images/s, batch {batch}", ce, 25_000, setting))
    setting, _ = best("cached", ("ce",))
    rows.append(("from the cache / CE-only", speeds[setting]["cached"] / speeds[setting]["ce"]
                 if setting else None, 0.95, setting))  # fmt: skip
    setting, _ = best("cached", ("online",))
    rows.append(("from the cache / online (live teacher)",
                 speeds[setting]["cached"] / speeds[setting]["online"] if setting else None, 1.3,
                 setting))  # fmt: skip
    first = next((c for c in report["cases"] if c["case"] == report["first_case"]
                  and c["status"] == "measured"), None)  # fmt: skip
    extraction = None
    if first is not None:
        extraction = first["extract_images_per_s"] / first["forward_images_per_s_by_rows"]["256"]
    rows.append(("extraction / bare teacher forward at 256 rows", extraction, 0.9, None))
    array = report.get("array") or {}
    rows.append(("array of the five methods, aggregate images/s",
                 array.get("aggregate_images_per_s"), 150_000, (False, "device")))  # fmt: skip
    return [{"goal": name, "value": value, "target": target,
             "met": None if value is None else value >= target,
             "setting": _setting(*setting) if setting else None}
            for name, value, target, setting in rows]  # fmt: skip


def _num(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _cases_markdown(cases: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| case | extract img/s | bare forward img/s | ratio | bytes independent of batch size "
        "| data path img/s | cached == online | cached run == itself "
        "| train img/s cached / online / CE |",
        "| --- | ---: | ---: | ---: | --- | ---: | --- | --- | --- |",
    ]
    measured = [r for r in cases if r.get("status") == "measured"]
    for r in measured:
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
    for r in measured:
        rates = ", ".join(f"{k} rows {v:.0f}" for k, v in r["forward_images_per_s_by_rows"].items())
        lines.append(f"- {r['case']}: plain forward img/s at a fixed shape: {rates}")
    return lines


def _train_markdown(report: dict[str, Any]) -> list[str]:
    lines = [
        "| batch | step, stream | CE img/s | cached img/s | online img/s | cached / CE "
        "| cached / online | first epoch s (CE / cached / online) |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    rows: dict[tuple[int, bool, str], dict[str, dict[str, Any]]] = {}
    for r in report["train"]:
        rows.setdefault((r["batch"], r["compiled"], r["stream"]), {})[r["mode"]] = r
    for (batch, compiled, stream), modes in sorted(rows.items()):
        def ips(mode: str, modes: dict[str, dict[str, Any]] = modes) -> float | None:
            r = modes.get(mode)
            return r["images_per_s"] if r and r["status"] == "measured" else None

        def first(mode: str, modes: dict[str, dict[str, Any]] = modes) -> str:
            r = modes.get(mode)
            return f"{r['first_epoch_s']:.1f}" if r and r["status"] == "measured" else "-"

        ce, cached, online = ips("ce"), ips("cached"), ips("online")
        lines.append(
            f"| {batch} | {_setting(compiled, stream)} | {_num(ce)} | {_num(cached)} "
            f"| {_num(online)} | {_num(cached / ce if cached and ce else None, 2)} "
            f"| {_num(cached / online if cached and online else None, 2)} "
            f"| {first('ce')} / {first('cached')} / {first('online')} |"
        )
    return lines


def _array_markdown(array: dict[str, Any]) -> list[str]:
    if array.get("status") != "measured":
        why = array.get("reason") or array.get("error")
        return [f"Array: {array.get('status', 'not run')} ({why})."]
    per = ", ".join(f"{s['loss']} {_num(s.get('images_per_s'))}" for s in array["students"])
    alone = array["alone"]
    verdict = "yes" if alone["equal"] else f"no (max difference {alone['max_difference']:.3g})"
    return [
        f"Array of {len(array['students'])} students (batch {array['batch']}, device stream, "
        f"eager): aggregate **{_num(array['aggregate_images_per_s'])} img/s** over the timed "
        f"epochs ({_num(array['aggregate_wall_images_per_s'])} img/s over the whole array, "
        f"{array['array_seconds']:.1f} s, set-up and first epoch included); per student: {per}.",
        f"{alone['student']} alone: {_num(alone['images_per_s'])} img/s; its {alone['steps']} "
        f"per-step losses equal to those in the array: {verdict}.",
    ]


def _floor_markdown(floors: list[dict[str, Any]], report: dict[str, Any]) -> list[str]:
    lines = [
        "| step (batch, stream) | timed | busy ms / step | kernels / step | floor img/s "
        "| measured img/s | measured / floor |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for f in floors:
        name = f"{f['mode']}, {_setting(f['compiled'], f['stream'])} ({f['batch']})"
        if f["status"] != "measured":
            lines.append(f"| {name} | {f['status']}: {f.get('reason') or f.get('error')} "
                         "| | | | | |")  # fmt: skip
            continue
        measured = _speeds(report, f["batch"]).get((f["compiled"], f["stream"]), {}).get(f["mode"])
        share = measured / f["floor_images_per_s"] if measured and f["floor_images_per_s"] else None
        lines.append(
            f"| {name} | {f['timed']} | {f['busy_ms_per_step']:.2f} "
            f"| {f['kernels_per_step']:.0f} | {_num(f['floor_images_per_s'])} | {_num(measured)} "
            f"| {_num(share, 2)} |"
        )
    return lines


def _what(section: str, r: dict[str, Any]) -> str:
    """A record's name in the list of what was not measured."""
    if section == "cases":
        return f"case {r['case']}"
    if section == "array":
        return "the array"
    step = f"{r['mode']} b{r['batch']} {_setting(r['compiled'], r['stream'])}"
    return f"profile of {step}" if section == "kernel_floor" else step


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"Device: {report['device']}; torch {report['torch']}; "
        f"{report.get('total_seconds', 0):.0f} s of a {report['budget_seconds'] or 'unlimited'} "
        "s budget.",
        "",
        "| goal | measured | target | met | setting |",
        "| --- | ---: | ---: | --- | --- |",
    ]
    for g in report["goals"]:
        digits = 2 if g["target"] < 100 else 0
        met = "-" if g["met"] is None else ("yes" if g["met"] else "no")
        lines.append(f"| {g['goal']} | {_num(g['value'], digits)} | {_num(g['target'], digits)} "
                     f"| {met} | {g['setting'] or ''} |")  # fmt: skip
    lines += ["", "Training (timed epochs after the first):", "", *_train_markdown(report), ""]
    lines += [*_array_markdown(report.get("array") or {}), ""]
    lines += ["Profiled step:", "", *_floor_markdown(report["kernel_floor"], report), ""]
    lines += ["Extraction cases:", "", *_cases_markdown(report["cases"]), ""]
    missing: dict[str, list[str]] = {}
    for section in ("cases", "train", "kernel_floor", "array"):
        records = report[section] if section != "array" else [report.get("array") or {}]
        for r in records:
            if r.get("status", "measured") != "measured":
                why = f"{r['status']}: {r.get('reason') or r.get('error')}"
                missing.setdefault(why, []).append(_what(section, r))
    if missing:
        lines.append("Not measured:")
        lines += [f"- {why}: {'; '.join(names)}" for why, names in missing.items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--budget", type=float, default=None,
                        help="Seconds for the whole check (default: 420; --tiny: no limit).")
    parser.add_argument("--tiny", action="store_true", help="CPU-sized smoke run (tests).")
    args = parser.parse_args(argv)
    size = TINY if args.tiny else FULL
    budget = Budget(args.budget if args.budget is not None else size.budget)
    data_dir = args.data_dir if (args.data_dir / "cifar-100-python").is_dir() else None
    args.out.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(args.device)
    cases = build_cases(args.out, data_dir, args.tiny)
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(dev)
        if dev.type == "cuda"
        else platform.processor() or "cpu",
        "torch": torch.__version__,
        "tiny": args.tiny,
        "budget_seconds": budget.seconds,
        "first_case": cases[0].name,
        "batches": list(size.batches),
        "samples_per_epoch": size.samples,
        "epochs": size.epochs,
        "goals": [],
        "cases": [],
        "train": [],
        "array": {},
        "kernel_floor": [],
    }

    def save() -> None:
        report["goals"] = goals(report, size.batches[0])
        report["total_seconds"] = budget.elapsed()
        (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2))
        (args.out / "gpu_check.md").write_text(markdown(report))

    checks = Checks(report, budget, save)
    data = train_data(cases[0], args.out)
    with budget.hard_stop():
        for item in plan(cases, data, size, args.out, args.device, budget):
            checks.attempt(item)
    save()
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
