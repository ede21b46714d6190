"""The real CIFAR-100 ResNet-56 under kdcache's and mdistiller's normalisation statistics.

    python benchmarks/bench_cifar_stats.py [--data-dir ../shared/data] [--write-docs]

mdistiller and the RLD/LDRLD code normalise CIFAR-100 with mean (0.5071, 0.4867, 0.4408) and std
(0.2675, 0.2565, 0.2761); kdcache's dataset spec has (0.5071, 0.4865, 0.4409) / (0.2673, 0.2564,
0.2762). Top-1, top-5 and mean NLL of the teacher on the full test split under each, through
kdcache's own :class:`~kdcache.models.preprocess.Preprocessing` (issue #11).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks._docs import write_section  # noqa: E402
from kdcache.data import load_dataset  # noqa: E402
from kdcache.models import build_model  # noqa: E402
from kdcache.models.preprocess import Preprocessing  # noqa: E402

WEIGHTS = "teachers/resnet56_cifar100_020118.pth"
STATS = {
    "kdcache": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "mdistiller": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
}


def measure(data_dir: Path) -> dict[str, tuple[float, float, float]]:
    source = load_dataset("cifar100", data_dir, "test")
    model = build_model("resnet56", 100, weights=str(data_dir / WEIGHTS)).eval()
    n = len(source)
    images = torch.from_numpy(np.stack([np.asarray(source.image(i)) for i in range(n)]))
    labels = torch.from_numpy(np.asarray(source.labels, dtype=np.int64))
    out = {}
    for name, (mean, std) in STATS.items():
        convert = Preprocessing(mean, std, (32, 32))
        top1 = top5 = 0
        nll = 0.0
        with torch.inference_mode():
            for k in range(0, n, 500):
                logits = model(convert(images[k : k + 500]))  # [B, 100]
                y = labels[k : k + 500]
                top = logits.topk(5, dim=1).indices
                top1 += int((top[:, 0] == y).sum())
                top5 += int((top == y[:, None]).any(dim=1).sum())
                nll += float(torch.nn.functional.cross_entropy(logits, y, reduction="sum"))
        out[name] = (100.0 * top1 / n, 100.0 * top5 / n, nll / n)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(2)
    rows = [
        f"| {name} | {STATS[name][0]} / {STATS[name][1]} | {t1:.2f}% | {t5:.2f}% | {nll:.5f} |"
        for name, (t1, t5, nll) in measure(args.data_dir).items()
    ]
    text = (
        "`python benchmarks/bench_cifar_stats.py --write-docs`: the real ResNet-56 on the full "
        "CIFAR-100 test split (10,000 images) under each normalisation.\n\n"
        "| statistics | mean / std | top-1 | top-5 | NLL |\n| --- | --- | --- | --- | --- |\n"
        + "\n".join(rows)
    )
    print(text)
    if args.write_docs:
        write_section(REPO / "docs" / "benchmarks.md", "CIFAR-100 normalisation statistics", text)


if __name__ == "__main__":
    main()
