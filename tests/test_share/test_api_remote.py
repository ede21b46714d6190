"""kdcache.open_cache on an object store streams the batches the local copy streams."""

from __future__ import annotations

from typing import Any

import torch

import kdcache
from tests.test_share.conftest import s3_listing, upload


def epoch(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    batches = cache.loader(None, batch_size=200, seed=1, epoch=0, verify_replay="all")
    return [(b.index, b.view, b.teacher_logits) for b in batches]


def test_an_s3_cache_streams_what_the_local_copy_streams(digits_cache, prefix, tmp_path):
    upload(digits_cache, prefix)
    before = s3_listing(prefix)
    local = kdcache.open_cache(digits_cache)
    expected = epoch(local)
    # Twice: the first pass reads the objects, the second the local copies of the chunks.
    for _ in range(2):
        remote = kdcache.open_cache(prefix, cache_dir=str(tmp_path / "copies"))
        assert (remote.fingerprint, remote.teacher_top1) == (local.fingerprint, local.teacher_top1)
        got = epoch(remote)
        assert len(got) == len(expected)
        for a, b in zip(got, expected, strict=True):
            assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert s3_listing(prefix) == before  # the reader wrote nothing
