"""Where the shared real data lives (read-only, next to the repository)."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


def cifar100_dir() -> Path:
    """``../shared/data`` when it holds CIFAR-100, else skip the test."""
    if not (SHARED_DATA / "cifar-100-python" / "train").is_file():
        pytest.skip("../shared/data/cifar-100-python is not present")
    return SHARED_DATA
