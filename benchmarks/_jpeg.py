"""JPEG trees for the benchmarks, written at run time from real CIFAR-100 images (no ImageNet here).

Shared by ``gpu_check.py``, ``bench_jpeg_datapath.py`` and ``bench_extract_jpeg.py``.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np


def cifar_pixels(data_dir: Path, n: int, split: str = "test") -> np.ndarray:
    """The first ``n`` images of a CIFAR-100 split: uint8 [n, 32, 32, 3]."""
    with (data_dir / "cifar-100-python" / split).open("rb") as f:
        data = pickle.load(f, encoding="latin1")["data"][:n]
    if len(data) < n:
        raise SystemExit(f"the CIFAR-100 {split} split has {len(data)} images, {n} were asked for")
    return np.asarray(data, np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def jpeg_tree(
    root: Path, images: np.ndarray, classes: int, size: tuple[int, int], val: int = 0
) -> Path:
    """``root/{train,val}/c{k:04d}/*.jpg`` from uint8 [N, H, W, 3] images, resized to ``size``
    (W, H) with bicubic and saved at quality 90; image i goes to class i % classes, the first
    ``val`` to ``val/``."""
    from PIL import Image

    for i, pixels in enumerate(images):
        split = "val" if i < val else "train"
        path = root / split / f"c{i % classes:04d}" / f"{i:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).resize(size, Image.BICUBIC).save(path, quality=90)
    return root
