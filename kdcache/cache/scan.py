"""The scan of a whole cache that ``kdcache verify`` reports and ``kdcache pack`` requires: every
chunk of every marked block read back through the reader's checks (:mod:`.integrity`), and the
recorded teacher figures against the per-block hit counts.
"""

from __future__ import annotations

import logging
import re

import numpy as np

from kdcache.cache.reader import CacheReader
from kdcache.cache.sparse import KEPT_MASS_TOLERANCE, kept_mass_violations
from kdcache.errors import KdcacheError

log = logging.getLogger(__name__)


def block_problems(reader: CacheReader) -> list[tuple[int, int, str]]:
    """(view, block, what is wrong) for every marked block that does not read back intact.

    Every chunk of every marked block is read and checked (presence, checksum, finite values,
    position-bound digest); in a sparse cache each row's kept probabilities must also sum to at
    most 1 (within the stored precision) at every recorded temperature.
    """
    ident = reader.identity
    bad: list[tuple[int, int, str]] = []
    for view, block in np.argwhere(reader.done_mask()).tolist():
        try:
            if ident.storage.mode == "dense":
                reader.read_dense(view, block)
            else:
                over = kept_mass_violations(reader.read_sparse(view, block))
                if over > 0:
                    bad.append((view, block, _kept_mass_problem(reader, view, block, over)))
            reader.read_input_hashes(view, block)
            if ident.augmentation.mixed:
                reader.read_mix(view, block)
            reader.read_block_counts(view, block)
        except KdcacheError as exc:
            bad.append((view, block, str(exc)))
    return bad


def _kept_mass_problem(reader: CacheReader, view: int, block: int, over: int) -> str:
    return (
        f"view {view} block {block}: {over} rows whose kept top-{reader.identity.storage.topk} "
        f"mass exceeds 1 by more than {KEPT_MASS_TOLERANCE:g} (the stored log-sum-exp does not "
        "match the kept values)"
    )


def figure_problems(reader: CacheReader) -> list[str]:
    """Where the recorded teacher top-1/top-5 disagree with the per-block hit counts (empty when
    they agree, or when the cache is incomplete and records none).

    Raises:
        KdcacheError: the hit counts cannot be read (a damaged or missing record).
    """
    if reader.meta.teacher_top1 is None:
        return []
    top1, top5 = reader.block_correct_counts()
    return reader.meta.figure_mismatches(top1, top5)


def bad_blocks_detail(bad: list[tuple[int, int, str]], listed: int = 12, kinds: int = 3) -> str:
    """Which blocks are bad (the first ``listed``) and one example of each kind of problem (up to
    ``kinds``), the same message with other numbers being one kind: a damaged copy often has one
    problem in hundreds of blocks, and a line per block would bury the report."""
    for _, _, problem in bad:
        log.info("bad block: %s", problem)
    where = ", ".join(f"view {v} block {b}" for v, b, _ in bad[:listed])
    more = f" and {len(bad) - listed} more" if len(bad) > listed else ""
    each = "; `kdcache -v verify` lists each problem" if len(bad) > 1 else ""
    examples: dict[str, str] = {}
    for _, _, problem in bad:
        examples.setdefault(re.sub(r"\d+", "#", problem), problem)
    shown = list(examples.values())[:kinds]
    label = "The problem" if len(examples) == 1 else f"{len(examples)} kinds of problem"
    return f"{len(bad)} bad blocks ({where}{more}{each}). {label}: " + "; ".join(shown)
