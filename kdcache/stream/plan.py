"""What each epoch trains on, in which order: a pure function of (seed, epoch, rank, world).

View choice (``docs/training.md``): for epoch e (0-based) sample i uses
``allowed[ default_rng(derived_seed(seed, e, 1)).integers(0, len(allowed), N)[i] ]``, a function of
(seed, epoch, sample) only.

Order: the samples are cut into the cache's blocks; the blocks are permuted with
``default_rng(derived_seed(seed, e, 2))``, dealt round-robin to ranks (each rank reads only its own
chunks), and each rank's blocks are taken ``window_blocks`` at a time, the samples of a window
shuffled together. So every chunk is decoded at most once per epoch, shuffling reaches across
blocks, and memory holds a window of blocks however large N is.

Batches: one process cuts its order into batches of ``batch_size`` (the last one shorter, or dropped
with ``drop_last``). Several ranks must run the same number of steps (DDP), and their shares differ
by up to one block: without ``drop_last`` every rank cuts its share into ``ceil(largest share /
batch_size)`` batches as equal as possible (each at most ``batch_size``), so the union over ranks
is the whole epoch; with ``drop_last`` every rank runs ``smallest share // batch_size`` full
batches.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from kdcache.errors import ConfigError
from kdcache.seeding import derived_seed


@dataclass(frozen=True)
class EpochPlan:
    items: np.ndarray  # int64 [M, 2]: (view, sample index) in training order, this rank's share
    bounds: np.ndarray  # int64 [steps + 1]: batch k is items[bounds[k] : bounds[k + 1]]
    batch_size: int  # per rank, the largest batch

    @property
    def steps(self) -> int:
        """Optimiser steps this epoch (equal on every rank)."""
        return len(self.bounds) - 1

    def batch_slices(self) -> Iterator[slice]:
        for start, stop in zip(self.bounds[:-1].tolist(), self.bounds[1:].tolist(), strict=True):
            yield slice(start, stop)


def epoch_views(seed: int, epoch: int, num_samples: int, allowed: np.ndarray) -> np.ndarray:
    """int64 [N]: the cached view each sample uses in ``epoch``."""
    rng = np.random.default_rng(derived_seed(seed, epoch, 1))
    return allowed[rng.integers(0, len(allowed), num_samples)].astype(np.int64)


def _rank_blocks(seed: int, epoch: int, num_blocks: int, rank: int, world: int) -> np.ndarray:
    rng = np.random.default_rng(derived_seed(seed, epoch, 2))
    return rng.permutation(num_blocks)[rank::world]


def _rank_order(
    seed: int,
    epoch: int,
    num_samples: int,
    block_rows: int,
    window_blocks: int,
    rank: int,
    world: int,
) -> np.ndarray:
    blocks = _rank_blocks(seed, epoch, -(-num_samples // block_rows), rank, world)
    window_rng = np.random.default_rng(derived_seed(seed, epoch, 3, rank, world))
    parts = []
    for w in range(0, len(blocks), window_blocks):
        idx = np.concatenate(
            [
                np.arange(b * block_rows, min((b + 1) * block_rows, num_samples))
                for b in blocks[w : w + window_blocks]
            ]
        )
        parts.append(window_rng.permutation(idx))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def _share_sizes(seed: int, epoch: int, num_samples: int, block_rows: int, world: int) -> list[int]:
    """Samples each rank trains on in ``epoch`` (the sizes of its blocks)."""
    num_blocks = -(-num_samples // block_rows)
    sizes = np.minimum(block_rows, num_samples - np.arange(num_blocks) * block_rows)
    return [int(sizes[_rank_blocks(seed, epoch, num_blocks, r, world)].sum()) for r in range(world)]


def _batch_bounds(share: int, shares: list[int], batch_size: int, drop_last: bool) -> np.ndarray:
    if drop_last:
        steps = min(shares) // batch_size
        return np.arange(steps + 1, dtype=np.int64) * batch_size
    if len(shares) == 1:
        steps = -(-share // batch_size)
        return np.minimum(np.arange(steps + 1, dtype=np.int64) * batch_size, share)
    steps = -(-max(shares) // batch_size)
    if min(shares) < steps:
        raise ConfigError(
            f"a rank has {min(shares)} samples this epoch but every rank must run {steps} steps "
            f"of at most {batch_size}: use a larger batch size, drop_last=True, or fewer ranks"
        )
    sizes = [len(part) for part in np.array_split(np.arange(share), steps)]
    return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)


def plan_epoch(
    *,
    seed: int,
    epoch: int,
    num_samples: int,
    block_rows: int,
    window_blocks: int,
    allowed_views: np.ndarray,
    batch_size: int,
    rank: int = 0,
    world: int = 1,
    drop_last: bool = False,
) -> EpochPlan:
    """This rank's (view, index) items for ``epoch`` and its batches (the same count on every rank).

    Raises:
        ConfigError: a rank would get no block (more ranks than the data has blocks), or too few
            samples to fill the common number of steps.
    """
    if not 0 <= rank < world:
        raise ConfigError(f"rank {rank} is outside a world of {world} process(es)")
    if batch_size < 1:
        raise ConfigError(f"the batch size must be >= 1, got {batch_size}")
    num_blocks = -(-num_samples // block_rows)
    if world > num_blocks:
        raise ConfigError(
            f"{num_samples} samples in {num_blocks} block(s) of {block_rows} rows cannot be shared "
            f"by {world} ranks: each rank reads whole blocks (chunks). Use at most {num_blocks} "
            "ranks, or a cache with fewer rows per chunk"
        )
    views = epoch_views(seed, epoch, num_samples, allowed_views)
    order = _rank_order(seed, epoch, num_samples, block_rows, window_blocks, rank, world)
    shares = _share_sizes(seed, epoch, num_samples, block_rows, world)
    bounds = _batch_bounds(len(order), shares, batch_size, drop_last)
    order = order[: bounds[-1]]
    items = np.stack([views[order], order], axis=1).astype(np.int64)
    return EpochPlan(items=items, bounds=bounds, batch_size=batch_size)
