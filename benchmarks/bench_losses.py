"""Forward + backward time of the distillation losses on CPU (B=256, C=1000 by default).

Measures, side by side in one run (interleaved repeats, median of each):

1. LDRLD vectorised (``kdcache.losses.ldrld``) against the per-group loop form of the official code
   (``tests/test_losses/reference_ldrld.py``) for k = 2..16;
2. DKD, RLD and LDRLD (k=7) against KD.

Prints a markdown report and writes it into ``docs/benchmarks.md`` under ``## Losses``, replacing
only that section (other sections of the file belong to other benchmarks)::

    python benchmarks/bench_losses.py                 # 1 thread, 15 repeats
    python benchmarks/bench_losses.py --no-write      # print only
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "test_losses"))

from reference_ldrld import ldrld_loop  # noqa: E402

from kdcache.losses import dkd_loss, kd_loss, ldrld_terms, rld_loss  # noqa: E402

SECTION = "## Losses"
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


def _time_once(step: Step, s: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> float:
    s.grad = None
    start = time.thread_time()
    step(s, t, y).backward()
    return time.thread_time() - start


def run(batch: int, classes: int, ks: list[int], repeats: int, warmup: int) -> dict[str, float]:
    """Median seconds per forward+backward of every measured step, interleaved."""
    gen = torch.Generator().manual_seed(0)
    s = (3.0 * torch.randn(batch, classes, generator=gen)).requires_grad_()
    t = 3.0 * torch.randn(batch, classes, generator=gen)
    y = torch.randint(0, classes, (batch,), generator=gen)

    steps: dict[str, Step] = {
        "kd": lambda s, t, y: kd_loss(s, t, y),
        "dkd": lambda s, t, y: dkd_loss(s, t, y),
        "rld": lambda s, t, y: rld_loss(s, t, y),
    }
    for k in ks:
        steps[f"ldrld_vec_k{k}"] = _ldrld_vec(k)
        steps[f"ldrld_loop_k{k}"] = _ldrld_ref(k)

    for step in steps.values():
        for _ in range(warmup):
            _time_once(step, s, t, y)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():  # interleaved: drift hits every step alike
            times[name].append(_time_once(step, s, t, y))
    return {name: statistics.median(values) for name, values in times.items()}


def report(
    medians: dict[str, float], batch: int, classes: int, ks: list[int], args_line: str
) -> str:
    ms = {name: 1e3 * value for name, value in medians.items()}
    cpu = platform.processor() or platform.machine()
    lines = [
        SECTION,
        "",
        f"Forward + backward of each loss on CPU, B={batch}, C={classes}, float32, "
        f"{torch.get_num_threads()} thread(s); median of interleaved repeats. "
        f"torch {torch.__version__}, Python {platform.python_version()}, {cpu}, "
        f"{dt.date.today().isoformat()}.",
        f"Command: `{args_line}`.",
        "",
        "### LDRLD: vectorised pairs vs the official per-group loop",
        "",
        "| k | groups C(k,2)+1 | loop (ms) | vectorised (ms) | speed-up |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for k in ks:
        loop, vec = ms[f"ldrld_loop_k{k}"], ms[f"ldrld_vec_k{k}"]
        lines.append(
            f"| {k} | {k * (k - 1) // 2 + 1} | {loop:.2f} | {vec:.2f} | {loop / vec:.1f}x |"
        )
    lines += [
        "",
        "### Cost relative to KD",
        "",
        "| loss | ms | ratio to KD |",
        "| --- | ---: | ---: |",
    ]
    rows = [("kd", "kd"), ("dkd", "dkd"), ("rld", "rld (alpha_T = T)")]
    if 7 in ks:
        rows.append(("ldrld_vec_k7", "ldrld (k = 7)"))
    for key, label in rows:
        lines.append(f"| {label} | {ms[key]:.2f} | {ms[key] / ms['kd']:.2f} |")
    return "\n".join(lines) + "\n"


def write_section(path: Path, section: str) -> None:
    """Replace the ``## Losses`` section of ``path`` (or append it), leaving the rest untouched."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip() == SECTION), None)
    if start is None:
        new = text.rstrip("\n") + "\n\n" + section
    else:
        end = next(
            (i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines)
        )
        tail = "".join(lines[end:])
        new = "".join(lines[:start]) + section + ("\n" + tail if tail else "")
    path.write_text(new)


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
        write_section(args.out, text)
        print(f"wrote the {SECTION!r} section of {args.out}")


if __name__ == "__main__":
    main()
