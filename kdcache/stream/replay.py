"""The replay check: the regenerated uint8 views must hash to what the cache recorded.

The host image source hashes every row in its workers; the device-resident source hashes only the
rows a check needs, on the host, after a non-blocking copy: on CUDA the comparison is made a few
batches later (when the copy has landed) rather than making the step wait, and at the latest at
the end of the epoch. Either way a mismatch stops the run with :class:`ReplayMismatchError` naming
the (view, sample).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from kdcache.errors import ReplayMismatchError
from kdcache.seeding import input_hashes

ReplayMode = Literal["all", "sample", "off"]
SAMPLE_REPLAY_EVERY = 16  # "sample" checks rows with index % 16 == 0, and each batch's first


def replay_rows(mode: ReplayMode, indices: np.ndarray) -> np.ndarray:
    """The positions in a batch of sample ``indices`` [B] that ``mode`` checks (int64)."""
    rows = np.arange(len(indices))
    if mode == "off":
        return rows[:0]
    if mode == "sample":
        rows = rows[(indices % SAMPLE_REPLAY_EVERY == 0) | (rows == 0)]
    return rows


def check_replay(
    views: Tensor, indices: Tensor, got: Tensor | np.ndarray, cached: np.ndarray,
    mode: ReplayMode, versions: dict[str, str],
) -> None:  # fmt: skip
    """Raise :class:`ReplayMismatchError` if a regenerated image's hash differs from the cache's.

    ``views``, ``indices``, ``got`` (the regenerated input hashes) are int64 [B]; ``cached`` [B].
    """
    got_np = got.numpy() if isinstance(got, Tensor) else np.asarray(got)
    rows = replay_rows(mode, indices.numpy())
    compare_hashes(views.numpy()[rows], indices.numpy()[rows], got_np[rows], cached[rows],
                   versions)  # fmt: skip


def compare_hashes(
    views: np.ndarray, indices: np.ndarray, got: np.ndarray, cached: np.ndarray,
    versions: dict[str, str],
) -> None:  # fmt: skip
    """Raise :class:`ReplayMismatchError` at the first row where ``got`` != ``cached``."""
    bad = np.flatnonzero(got != cached)
    if len(bad):
        r = int(bad[0])
        raise ReplayMismatchError(
            f"the regenerated image of (view {int(views[r])}, sample {int(indices[r])}) differs "
            f"from the one the teacher saw ({len(bad)} of {len(got)} checked rows in this "
            "batch): the augmentation does not replay on this machine. The cache was written "
            f"with {versions}; install those versions, or re-extract the cache here. "
            "(`verify_replay` off skips this check at your own risk.)"
        )


@dataclass
class _Pending:
    images: Tensor  # uint8 [b, C, H, W] on the host (pinned on CUDA), maybe still being copied
    done: torch.cuda.Event | None
    views: np.ndarray
    indices: np.ndarray
    cached: np.ndarray


class DeferredReplay:
    """Hashes chosen rows of device-made views on the host without making the step wait.

    ``submit`` starts a non-blocking copy of the rows; ``poll`` checks the copies that have
    landed; ``finish`` waits for the rest and checks them (the epoch's end). On the CPU every
    check is made at once.
    """

    def __init__(self, mode: ReplayMode, versions: dict[str, str]) -> None:
        self.mode = mode
        self.versions = versions
        self.pending: list[_Pending] = []

    def submit(self, images: Tensor, view: Tensor, index: Tensor, cached: np.ndarray) -> None:
        """``images`` uint8 [B, C, H, W] on the device, ``view``/``index`` int64 [B] on the host,
        ``cached`` the cache's hashes [B]."""
        rows = replay_rows(self.mode, index.numpy())
        if not len(rows):
            return
        # The rows go to the device without a wait (the plan is on the host; the step runs on).
        picked = images[torch.from_numpy(rows).to(images.device, non_blocking=True)]
        done = None
        if picked.device.type == "cuda":
            host = torch.empty(picked.shape, dtype=picked.dtype, pin_memory=True)
            host.copy_(picked, non_blocking=True)
            done = torch.cuda.Event()
            done.record()
            picked = host
        self.pending.append(_Pending(picked, done, view.numpy()[rows], index.numpy()[rows],
                                     cached[rows]))  # fmt: skip
        self.poll()

    def poll(self) -> None:
        while self.pending and (self.pending[0].done is None or self.pending[0].done.query()):
            self._check(self.pending.pop(0))

    def finish(self) -> None:
        while self.pending:
            item = self.pending.pop(0)
            if item.done is not None:
                item.done.synchronize()
            self._check(item)

    def _check(self, item: _Pending) -> None:
        got = input_hashes(item.images)
        compare_hashes(item.views, item.indices, got, item.cached, self.versions)
