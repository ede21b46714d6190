"""Shared fixtures of the loss tests: the golden archives and small random logits."""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent

REPO_GOLDEN = HERE / "golden_official.npz"
SHARED_GOLDEN = HERE.parents[1] / ".." / "shared" / "golden" / "losses_official.npz"
