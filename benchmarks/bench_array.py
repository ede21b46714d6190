"""Student arrays against the same students one after another (CPU): total time and exactness.

    python benchmarks/bench_array.py [--epochs 3] [--cifar-samples 1024] [--write-docs] [--tiny]

Five students (ce, kd, dkd, rld, ldrld; seed 0), each trained four ways, side by side in one run:

* ``array, one process``: ``kdcache train --loss ce,kd,dkd,rld,ldrld`` (one process, one stream);
* ``5 processes``: five ``kdcache train --loss L`` processes one after another (what a user
  without arrays does: each re-imports, re-reads and re-decodes);
* ``array, in process``: ``run_array(expand_array(...))``;
* ``5 run_train calls``: ``run_train`` five times in this process.

Settings:

* ``demo``: the demo's setting (``kdcache demo``): digits, resnet8 students, batch 64, the CIFAR
  recipe with 1 pixel of padding, evaluation every epoch, from a 4-view digits cache extracted
  here by a seeded (untrained) resnet8 teacher (the demo trains its teacher first: minutes that
  change no timing here);
* ``cifar100``: resnet20 students on the first ``--cifar-samples`` CIFAR-100 train images, 1
  epoch, no evaluation (the 10,000-image test set would cost more than the training), from a
  cache of the real train identity with random logits and the real input hashes (as in
  ``bench_train.py``); only when ``--data-dir`` holds CIFAR-100.

Each array student's per-step losses are compared with its separate runs' (in process and the
CLI's ``steps.jsonl``): the array runs each student's own kernels, so they must be identical.
The machine's cores are shared: read the ratios (taken in one run), not the absolute seconds.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks._docs import write_section  # noqa: E402
from benchmarks.bench_train import synthetic_cache  # noqa: E402
from kdcache.extract import ExtractConfig, run_extract  # noqa: E402
from kdcache.models import build_model  # noqa: E402
from kdcache.training import outputs  # noqa: E402
from kdcache.training.array import expand_array, run_array  # noqa: E402
from kdcache.training.config import TrainConfig  # noqa: E402
from kdcache.training.loop import run_train  # noqa: E402

LOSSES = ("ce", "kd", "dkd", "rld", "ldrld")
WAYS = ("array, one process", "5 processes", "array, in process", "5 run_train calls")


def demo_cache(root: Path, samples: int | None) -> dict[str, Any]:
    """A digits cache as the demo makes one (4 views, padding 1), from a seeded resnet8."""
    weights = root / "teacher.pth"
    torch.manual_seed(0)
    torch.save(build_model("resnet8", 10, in_chans=1).state_dict(), weights)
    cache = root / "digits_cache"
    run_extract(ExtractConfig(teacher="resnet8", weights=str(weights), dataset="digits",
                              recipe="cifar", recipe_params={"padding": 1}, views=4,
                              out=str(cache), batch_size=256, workers=0, chunk_rows=256,
                              device="cpu"))  # fmt: skip
    return {"cache": str(cache), "student": "resnet8", "batch_size": 64, "workers": 0,
            "max_samples": samples}  # fmt: skip


def cifar_cache(root: Path, data_dir: Path, samples: int) -> dict[str, Any]:
    cache = root / "cifar_cache"
    synthetic_cache(str(cache), "resnet56", data_dir, samples)
    return {"cache": str(cache), "data_dir": str(data_dir), "student": "resnet20",
            "batch_size": 64, "workers": 0, "max_samples": samples, "epochs": 1,
            "eval_every": 0}  # fmt: skip


def _flags(settings: dict[str, Any]) -> list[str]:
    flags = []
    for key, value in settings.items():
        if value is None:
            continue
        flags += [f"--{key.replace('_', '-')}", ",".join(value) if isinstance(value, list)
                  else str(value)]  # fmt: skip
    return flags


def _cli(settings: dict[str, Any]) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    command = [sys.executable, "-m", "kdcache", "train", *_flags(settings), "--force",
               "--no-progress"]  # fmt: skip
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)


def _cli_losses(out: Path) -> list[float]:
    return [x for record in outputs.read_metrics(out, outputs.STEP_LOSSES)
            for x in record["loss"]]  # fmt: skip


def compare(
    name: str, settings: dict[str, Any], root: Path
) -> tuple[dict[str, float], dict[str, bool]]:
    """Seconds of each of the four ways, and per student whether its array losses equal its
    separate runs' (in process and CLI)."""
    settings = {"device": "cpu", "seed": 0, **settings}
    seconds: dict[str, float] = {}
    array_root = root / name / "array"
    started = time.perf_counter()
    _cli({**settings, "loss": list(LOSSES), "out": str(array_root / "cli")})
    seconds[WAYS[0]] = time.perf_counter() - started
    started = time.perf_counter()
    for loss in LOSSES:
        _cli({**settings, "loss": loss, "out": str(root / name / "cli" / loss)})
    seconds[WAYS[1]] = time.perf_counter() - started
    started = time.perf_counter()
    result = run_array(expand_array({**settings, "loss": list(LOSSES), "force": True,
                                     "out": str(array_root / "api")}))  # fmt: skip
    seconds[WAYS[2]] = time.perf_counter() - started
    started = time.perf_counter()
    alone = {loss: run_train(TrainConfig(**{**settings, "loss": loss, "force": True,
                                            "out": str(root / name / "api" / loss)}))
             for loss in LOSSES}  # fmt: skip
    seconds[WAYS[3]] = time.perf_counter() - started
    equal = {}
    for member in result.members:
        loss = member.config.loss
        mine = member.result.step_losses if member.result is not None else None
        cli_array = _cli_losses(array_root / "cli" / member.name)
        equal[loss] = (mine == alone[loss].step_losses == cli_array
                       == _cli_losses(root / name / "cli" / loss))  # fmt: skip
    return seconds, equal


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--epochs", type=int, default=3, help="Demo setting's epochs.")
    parser.add_argument("--cifar-samples", type=int, default=1024)
    parser.add_argument("--tiny", action="store_true",
                        help="A few steps of each setting (a smoke run, not a measurement).")
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    cifar = (args.data_dir / "cifar-100-python" / "train").is_file()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        demo = demo_cache(root, 128 if args.tiny else None)
        demo["epochs"] = 1 if args.tiny else args.epochs
        rows.append(("demo: digits, resnet8", *compare("demo", demo, root)))
        if cifar:
            samples = 128 if args.tiny else args.cifar_samples
            rows.append((f"cifar100: resnet20, {samples} samples",
                         *compare("cifar", cifar_cache(root, args.data_dir, samples), root)))
    sizes = ("--tiny: 128 samples, 1 epoch each (a smoke run)" if args.tiny else
             f"demo setting: {args.epochs} epochs of the digits train split, evaluation every "
             f"epoch; CIFAR-100: 1 epoch of {args.cifar_samples} train images, no evaluation")
    lines = [
        f"Command: `python benchmarks/bench_array.py{' --tiny' if args.tiny else ''} "
        f"--epochs {args.epochs} --cifar-samples {args.cifar_samples} --write-docs` (CPU, 2 "
        "shared cores, torch threads 2; the four ways one after another in one run, per "
        "setting). Five students: ce, kd, dkd, rld, ldrld, seed 0, batch 64; " + sizes + ".",
        "",
        "| setting | " + " | ".join(f"{w} s" for w in WAYS)
        + " | array / 5 processes | array / 5 run_train | per-step losses equal |",
        "| --- | " + " | ".join("---:" for _ in WAYS) + " | ---: | ---: | --- |",
    ]
    for name, seconds, equal in rows:
        same = "yes (all 5)" if all(equal.values()) else \
            "no: " + ", ".join(k for k, v in equal.items() if not v)  # fmt: skip
        lines.append(
            f"| {name} | " + " | ".join(f"{seconds[w]:.1f}" for w in WAYS)
            + f" | {seconds[WAYS[0]] / seconds[WAYS[1]]:.2f} "
            f"| {seconds[WAYS[2]] / seconds[WAYS[3]]:.2f} | {same} |"
        )
    if not cifar:
        lines += ["", f"CIFAR-100 not measured: no CIFAR-100 train split under {args.data_dir}."]
    text = "\n".join(lines)
    print(text)
    if args.write_docs:
        write_section(REPO / "docs" / "benchmarks.md", "Student arrays (CPU)", text)
    return text


if __name__ == "__main__":
    main()
