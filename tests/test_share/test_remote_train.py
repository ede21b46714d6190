"""Training from a cache on the object store gives exactly what the local copy gives."""

from __future__ import annotations

import torch

from kdcache.training import outputs
from kdcache.training.config import TrainConfig
from kdcache.training.loop import run_train
from tests.test_share.conftest import s3_listing, upload


def test_training_over_s3_equals_training_from_the_local_copy(digits_cache, prefix, tmp_path):
    upload(digits_cache, prefix)
    before = s3_listing(prefix)
    settings = dict(
        student="resnet8",
        loss="ldrld",
        loss_params={"k": 4},
        epochs=2,
        batch_size=64,
        workers=0,
        device="cpu",
        max_samples=384,
        seed=1,
    )
    local = run_train(TrainConfig(cache=str(digits_cache), out=str(tmp_path / "local"), **settings))
    remote = run_train(TrainConfig(cache=prefix, out=str(tmp_path / "remote"), **settings))
    assert local.step_losses == remote.step_losses
    a = outputs.load_checkpoint(tmp_path / "local" / "last.pt")["model"]
    b = outputs.load_checkpoint(tmp_path / "remote" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert remote.cache_fingerprint == local.cache_fingerprint
    assert s3_listing(prefix) == before  # the reader wrote nothing
