"""Forward + backward time of the distillation losses on CPU (B=256, C=1000 by default).

Measures, side by side in one run (interleaved repeats, median of each):

1. LDRLD vectorised (``kdcache.losses.ldrld``) against the per-group loop form of the official code
   (``tests/test_losses/reference_ldrld.py``) for k = 2..16;
2. DKD, RLD and LDRLD (k=7) against KD.

Prints a markdown report and writes it into ``docs/benchmarks.md`` under ``## Losses``, replacing
only that section (other sections of the file belong to other benchmarks).

Timings are the CPU time of the benchmarking thread (``time.thread_time``) with one torch thread:
on a shared machine, wall-clock time also counts other processes' time slices, CPU time does not.
Medians of interleaved repeats, so slow drift hits every method alike::

    python benchmarks/bench_losses.py                 # 1 thread, 15 repeats
    python benchmarks/bench_losses.py --no-write      # print only
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere

from benchmarks._docs import write_section  # noqa: E402
from kdcache.losses import dkd_loss, kd_loss, ldrld_terms, rld_loss  # noqa: E402
from tests.test_losses.reference_ldrld import ldrld_loop  # noqa: E402

SECTION = "Losses"
Step = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _ldrld_vec(k: int) -> Step:
    def step(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        terms = ldrld_terms(s, t, k=k)
        return terms["ldr"] + terms["rntk"]

    return step


def _ldrld_ref(k: int) -> Step:
    def step(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        ldr, rntk = ldrld_loop(s, t, k)
        return ldr + rntk

    return step


def _time_once(
    step: Step, s: torch.Tensor, t: torch.Tensor, y: torch.Tensor
) -> tuple[float, float]:
    """(thread CPU seconds, wall seconds) of one forward + backward."""
    s.grad = None
    cpu, wall = time.thread_time(), time.perf_counter()
    step(s, t, y).backward()
    return time.thread_time() - cpu, time.perf_counter() - wall


Medians = dict[str, dict[str, float]]  # clock ("cpu" / "wall") -> step name -> median seconds


def run(batch: int, classes: int, ks: list[int], repeats: int, warmup: int) -> Medians:
    """Median seconds per forward+backward of every measured step, interleaved."""
    gen = torch.Generator().manual_seed(0)
    s = (3.0 * torch.randn(batch, classes, generator=gen)).requires_grad_()
    t = 3.0 * torch.randn(batch, classes, generator=gen)
    y = torch.randint(0, classes, (batch,), generator=gen)

    steps: dict[str, Step] = {
        "kd": lambda s, t, y: kd_loss(s, t, y),
        "dkd": lambda s, t, y: dkd_loss(s, t, y),
        "rld": lambda s, t, y: rld_loss(s, t, y),
        "rld_tau1": lambda s, t, y: rld_loss(s, t, y, alpha_temperature=1.0),
    }
    for k in ks:
        steps[f"ldrld_vec_k{k}"] = _ldrld_vec(k)
        steps[f"ldrld_loop_k{k}"] = _ldrld_ref(k)

    for step in steps.values():
        for _ in range(warmup):
            _time_once(step, s, t, y)
    cpu: dict[str, list[float]] = {name: [] for name in steps}
    wall: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():  # interleaved: drift hits every step alike
            c, w = _time_once(step, s, t, y)
            cpu[name].append(c)
            wall[name].append(w)
    return {
        clock: {name: statistics.median(values) for name, values in samples.items()}
        for clock, samples in (("cpu", cpu), ("wall", wall))
    }


def report(medians: Medians, batch: int, classes: int, ks: list[int], args_line: str) -> str:
    cpu_ms = {name: 1e3 * value for name, value in medians["cpu"].items()}
    wall_ms = {name: 1e3 * value for name, value in medians["wall"].items()}
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    lines = [
        f"Forward + backward of each loss on CPU, B={batch}, C={classes}, float32 logits "
        f"(N(0, 3^2)), {torch.get_num_threads()} torch thread. Times are medians of interleaved "
        "repeats of the benchmarking thread's CPU time (`time.thread_time`); the wall-clock "
        "ratios are given beside them. "
        f"torch {torch.__version__}, Python {platform.python_version()}, "
        f"{platform.machine()} ({os.cpu_count()} cores, load average {load} while running: "
        f"a shared machine), {dt.date.today().isoformat()}.",
        "",
        f"Command: `{args_line}`",
        "",
        "### LDRLD: vectorised pairs vs the official per-group loop",
        "",
        "| k | groups C(k,2)+1 | loop (ms) | vectorised (ms) | speed-up | speed-up (wall) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for k in ks:
        loop, vec = cpu_ms[f"ldrld_loop_k{k}"], cpu_ms[f"ldrld_vec_k{k}"]
        wall_ratio = wall_ms[f"ldrld_loop_k{k}"] / wall_ms[f"ldrld_vec_k{k}"]
        lines.append(
            f"| {k} | {k * (k - 1) // 2 + 1} | {loop:.2f} | {vec:.2f} | {loop / vec:.1f}x "
            f"| {wall_ratio:.1f}x |"
        )
    lines += [
        "",
        "### Cost relative to KD",
        "",
        "| loss | ms | ratio to KD | ratio to KD (wall) |",
        "| --- | ---: | ---: | ---: |",
    ]
    rows = [
        ("kd", "kd"),
        ("dkd", "dkd"),
        ("rld", "rld (alpha_T = T, published setting)"),
        ("rld_tau1", "rld (alpha_T = 1)"),
    ]
    if 7 in ks:
        rows.append(("ldrld_vec_k7", "ldrld (k = 7)"))
    for key, label in rows:
        lines.append(
            f"| {label} | {cpu_ms[key]:.2f} | {cpu_ms[key] / cpu_ms['kd']:.2f} "
            f"| {wall_ms[key] / wall_ms['kd']:.2f} |"
        )
    lines += ["", *_verdict(cpu_ms, ks)]
    return "\n".join(lines) + "\n"


def _verdict(ms: dict[str, float], ks: list[int]) -> list[str]:
    """The targets of the losses work package against this run's figures."""
    out = ["Targets (CPU-time ratios of this run):", ""]
    if 7 in ks:
        speedup = ms["ldrld_loop_k7"] / ms["ldrld_vec_k7"]
        met = "met" if speedup >= 8 else "missed"
        out.append(f"- LDRLD vectorised >= 8x the loop at k = 7: {speedup:.1f}x, {met}.")
    for name in ("dkd", "rld"):
        ratio = ms[name] / ms["kd"]
        met = "met" if ratio <= 1.2 else "missed"
        out.append(f"- {name.upper()} within 1.2x of KD: {ratio:.2f}x, {met}.")
    out += [
        "",
        "DKD and RLD run hand-written backwards (`docs/losses.md`). With alpha_T = T, RLD takes "
        "both its terms from one softmax per side, as KD does; with another alpha_T it needs a "
        "second pair of softmaxes (SCD at alpha_T) plus the teacher's arg-max, hence its row. "
        "The target is checked on the published setting.",
    ]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--kmax", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    ks = list(range(2, args.kmax + 1))
    medians = run(args.batch, args.classes, ks, args.repeats, args.warmup)
    args_line = "python benchmarks/bench_losses.py " + " ".join(sys.argv[1:])
    text = report(medians, args.batch, args.classes, ks, args_line.strip())
    print(text)
    if not args.no_write:
        write_section(args.out, SECTION, text)
        print(f"wrote the '## {SECTION}' section of {args.out}")


if __name__ == "__main__":
    main()
