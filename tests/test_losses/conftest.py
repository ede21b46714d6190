"""Shared fixtures of the loss tests: the golden archives and small random logits."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# reference_ldrld.py (the per-group loop form of the official LDRLD) is imported by plain name,
# whatever pytest's import mode.
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

REPO_GOLDEN = HERE / "golden_official.npz"
SHARED_GOLDEN = HERE.parents[1] / ".." / "shared" / "golden" / "losses_official.npz"
