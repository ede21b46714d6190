"""Training throughput by stream on the CPU: the host stream (0 or N DataLoader workers) against
the device-resident stream, through ``run_train`` with the sync-free step.

    python benchmarks/bench_stream_train.py [--samples 1024] [--repeats 1] [--write-docs] [--tiny]

For each setting (digits with resnet8 students from a 4-view digits cache of a seeded resnet8,
as in ``bench_array.py``; CIFAR-100 with resnet20 students from a cache of the real train
identity with random logits and real input hashes, as in ``bench_train.py``, when ``--data-dir``
holds CIFAR-100) and each mode (CE only, KD from the cache), a student is trained for 2 epochs of
``--samples`` images at batch 64, eager, without evaluation, once per stream; the second epoch is
timed (``metrics.jsonl``). The streams alternate within a repeat (their order rotating), and the
median of the repeats is kept. The machine's 2 cores are shared: the ratios, taken side by side
in one run, are what to read. (``bench_stream.py`` measures the views alone.)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks._docs import write_section  # noqa: E402
from benchmarks._train_speed import Data, measure, train_config  # noqa: E402
from benchmarks.bench_array import demo_cache  # noqa: E402
from benchmarks.bench_train import synthetic_cache  # noqa: E402

STREAMS = (("host", 0), ("host", 2), ("device", 0))  # (stream, workers)


def _name(stream: str, workers: int) -> str:
    return f"{stream}, {workers} workers" if stream == "host" else "device"


def speeds(
    data: Data, samples: int, repeats: int, root: Path
) -> dict[str, dict[str, float]]:
    """{mode: {stream: images/s}}, the median over ``repeats``."""
    found: dict[str, dict[str, list[float]]] = {}
    for repeat in range(repeats):
        order = STREAMS[repeat % len(STREAMS):] + STREAMS[: repeat % len(STREAMS)]
        for mode in ("ce", "cached"):
            for stream, workers in order:
                config = train_config(data, mode, root / f"{mode}_{stream}_{workers}",
                                      batch_size=64, samples=samples, epochs=2, stream=stream,
                                      workers=workers, device="cpu")  # fmt: skip
                speed = measure(config).images_per_s
                found.setdefault(mode, {}).setdefault(_name(stream, workers), []).append(speed)
    return {m: {s: statistics.median(v) for s, v in by.items()} for m, by in found.items()}


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--samples", type=int, default=1024, help="Images per epoch.")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--tiny", action="store_true", help="128 images: a smoke run.")
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    samples = 128 if args.tiny else args.samples
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        digits = demo_cache(root, None)
        data = Data("digits", None, "train", "resnet8", cache=digits["cache"], num_views=4,
                    block_rows=256, recipe_params={"padding": 1})  # fmt: skip
        results.append(("digits, resnet8", speeds(data, samples, args.repeats, root / "d")))
        if (args.data_dir / "cifar-100-python" / "train").is_file():
            cache = root / "cifar_cache"
            synthetic_cache(str(cache), "resnet56", args.data_dir, samples)
            data = Data("cifar100", str(args.data_dir), "train", "resnet20", cache=str(cache),
                        block_rows=1024)  # fmt: skip
            results.append(("CIFAR-100, resnet20", speeds(data, samples, args.repeats,
                                                          root / "c")))  # fmt: skip
    names = [_name(s, w) for s, w in STREAMS]
    lines = [
        f"Command: `python benchmarks/bench_stream_train.py --samples {samples} --repeats "
        f"{args.repeats} --write-docs` (CPU, 2 shared cores, torch threads 2; batch 64, eager, "
        f"2 epochs of {samples} images, the second timed, no evaluation; streams alternating "
        "in one run).",
        "",
        "| setting | mode | " + " | ".join(f"{n} img/s" for n in names)
        + " | device / best host |",
        "| --- | --- | " + " | ".join("---:" for _ in names) + " | ---: |",
    ]
    for setting, by_mode in results:
        for mode, by_stream in by_mode.items():
            host = max(v for k, v in by_stream.items() if k != "device")
            lines.append(f"| {setting} | {mode} | "
                         + " | ".join(f"{by_stream[n]:.0f}" for n in names)
                         + f" | {by_stream['device'] / host:.2f} |")  # fmt: skip
    text = "\n".join(lines)
    print(text)
    if args.write_docs:
        write_section(REPO / "docs" / "benchmarks.md", "Training by stream (CPU)", text)
    return text


if __name__ == "__main__":
    main()
