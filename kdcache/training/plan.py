"""What each epoch trains on, in which order: a pure function of (seed, epoch, rank, world).

View choice (``docs/training.md``): for epoch e (0-based) sample i uses
``allowed[ default_rng(derived_seed(seed, e, 1)).integers(0, len(allowed), N)[i] ]``, a function of
(seed, epoch, sample) only.

Order: the samples are cut into the cache's blocks; the blocks are permuted with
``default_rng(derived_seed(seed, e, 2))``, dealt round-robin to ranks (each rank reads only its own
chunks), and each rank's blocks are taken ``window_blocks`` at a time, the samples of a window
shuffled together. So every chunk is decoded at most once per epoch, shuffling reaches across
blocks, and memory holds a window of blocks however large N is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kdcache.seeding import derived_seed


@dataclass(frozen=True)
class EpochPlan:
    items: np.ndarray  # int64 [M, 2]: (view, sample index) in training order, this rank's share
    steps: int  # optimiser steps this epoch (equal on every rank)
    batch_size: int  # per rank


def epoch_views(seed: int, epoch: int, num_samples: int, allowed: np.ndarray) -> np.ndarray:
    """int64 [N]: the cached view each sample uses in ``epoch``."""
    rng = np.random.default_rng(derived_seed(seed, epoch, 1))
    return allowed[rng.integers(0, len(allowed), num_samples)].astype(np.int64)


def _rank_order(
    seed: int,
    epoch: int,
    num_samples: int,
    block_rows: int,
    window_blocks: int,
    rank: int,
    world: int,
) -> np.ndarray:
    num_blocks = -(-num_samples // block_rows)
    rng = np.random.default_rng(derived_seed(seed, epoch, 2))
    blocks = rng.permutation(num_blocks)[rank::world]
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
) -> EpochPlan:
    """This rank's (view, index) items for ``epoch`` and the common number of steps."""
    views = epoch_views(seed, epoch, num_samples, allowed_views)
    order = _rank_order(seed, epoch, num_samples, block_rows, window_blocks, rank, world)
    if world == 1:
        steps = -(-len(order) // batch_size)
    else:
        # DDP needs the same number of steps on every rank: the smallest share sets it.
        shares = [
            len(_rank_order(seed, epoch, num_samples, block_rows, window_blocks, r, world))
            for r in range(world)
        ]
        steps = min(shares) // batch_size
        order = order[: steps * batch_size]
    items = np.stack([views[order], order], axis=1).astype(np.int64)
    return EpochPlan(items=items, steps=steps, batch_size=batch_size)
