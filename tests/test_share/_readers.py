"""Work for reader processes spawned by the tests (importable, so ``spawn`` can run it)."""

from __future__ import annotations

import hashlib


def digest_of_every_block(location: str, cache_dir: str | None = None) -> str:
    """sha256 over every block's logits and input hashes, in (view, block) order."""
    from kdcache.cache.reader import open_cache

    reader = open_cache(location, cache_dir=cache_dir)
    h = hashlib.sha256()
    for view in range(reader.identity.augmentation.num_views):
        for block in range(reader.meta.num_blocks):
            h.update(reader.read_dense(view, block).tobytes())
            h.update(reader.read_input_hashes(view, block).tobytes())
    return h.hexdigest()
