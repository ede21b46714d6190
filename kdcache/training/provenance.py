"""What a run trains from (cache fingerprint, teacher weights digest), and the --resume check.

A resumed run must keep training on the teacher signal it started with: an epoch trained on
another cache or another teacher, recorded under the first one's name in run.json, is a silently
wrong result. Each checkpoint records :func:`run_sources`; :func:`check_resume` refuses a resume
whose sources differ, naming both fingerprints.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch

from kdcache.errors import CacheMismatchError
from kdcache.training.config import TrainConfig
from kdcache.training.run_data import RunData


@functools.lru_cache(maxsize=8)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    from kdcache.models import weights_sha256

    return weights_sha256(path)


def teacher_weights_sha256(config: TrainConfig) -> str | None:
    """sha256 of the online teacher's weights file (None without an online teacher).

    Computed once per file version (path, size, modification time), not per checkpoint.
    """
    if config.teacher is None or not config.teacher_weights:
        return None
    stat = os.stat(config.teacher_weights)
    return _file_sha256(os.path.abspath(config.teacher_weights), stat.st_size, stat.st_mtime_ns)


def run_sources(config: TrainConfig, data: RunData) -> dict[str, str | None]:
    """The identity of the run's teacher signal: the cache's fingerprint, or the online
    teacher's weights digest (a cache's fingerprint already covers its teacher)."""
    return {
        "cache_fingerprint": data.cache_fingerprint,
        "teacher_weights_sha256": teacher_weights_sha256(config),
    }


def check_resume(out: Path, config: TrainConfig, data: RunData) -> None:
    """Refuse ``--resume`` when the cache or teacher differs from the one the run started with.

    Reads only the checkpoint's small entries (memory-mapped load). Checkpoints written before
    the teacher digest was recorded are checked on the cache fingerprint alone.
    """
    state = torch.load(out / "last.pt", map_location="cpu", weights_only=True, mmap=True)
    now = run_sources(config, data)
    for key, what, flag in (
        ("cache_fingerprint", "cache", "`cache`"),
        ("teacher_weights_sha256", "teacher weights", "`teacher_weights`"),
    ):
        if key not in state:
            continue
        before, after = state[key], now[key]
        if before != after:
            raise CacheMismatchError(
                f"`resume` of {out} with another {what}: the run was trained from {key} "
                f"{before or 'none'}, but {flag} now gives {after or 'none'}. Resume with the "
                f"run's original {what}, or start a new run (another `out`)."
            )
