"""Paths to the read-only shared data (../shared next to the repo); tests skip when absent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared"
COMPAT_JSON = SHARED / "compat" / "mdistiller_cifar100_state_dicts.json"
TEACHER = SHARED / "data" / "teachers" / "resnet56_cifar100_020118.pth"


def load_compat() -> dict[str, dict]:
    """The mdistiller layouts, without the ``_about`` entry; empty when the file is absent."""
    if not COMPAT_JSON.is_file():
        return {}
    data = json.loads(COMPAT_JSON.read_text())
    return {k: v for k, v in data.items() if not k.startswith("_")}


@pytest.fixture
def teacher_path() -> Path:
    if not TEACHER.is_file():
        pytest.skip(f"real teacher not found at {TEACHER}")
    return TEACHER
