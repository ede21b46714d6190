"""``stream="device"`` serves the very batches of ``stream="host"``: same views, order, bytes and
logits, for every seed, epoch, batch size, rank and recipe; and the same per-step losses."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import kdcache
from kdcache.augment import create_recipe
from kdcache.data import load_dataset
from kdcache.errors import ConfigError, ReplayMismatchError
from kdcache.stream.epoch import EpochSource, epoch_batches
from kdcache.stream.images import DeviceImages, HostImages, choose_images
from kdcache.training.config import TrainConfig
from kdcache.training.loop import run_train

CPU = torch.device("cpu")


def assert_same_batches(host, device) -> None:  # type: ignore[no-untyped-def]
    assert len(host) == len(device)
    pairs = list(zip(host, device, strict=True))
    assert pairs, "no batches"
    for a, b in pairs:
        for field in ("images", "labels", "view", "index", "views_uint8"):
            assert torch.equal(getattr(a, field), getattr(b, field)), field
        if a.teacher_logits is None:
            assert b.teacher_logits is None
        else:
            assert torch.equal(a.teacher_logits, b.teacher_logits)


@pytest.mark.parametrize(("seed", "epoch", "batch_size"), [(0, 0, 64), (3, 2, 100), (11, 1, 257)])
def test_cached_device_stream_is_the_host_stream(digits_cache, seed, epoch, batch_size):
    cache = kdcache.open_cache(digits_cache)
    common = dict(batch_size=batch_size, seed=seed, epoch=epoch, verify_replay="all")
    host = cache.loader(None, stream="host", **common)
    device = cache.loader(None, stream="device", **common)
    assert isinstance(host.source.images, HostImages)
    assert isinstance(device.source.images, DeviceImages)
    assert_same_batches(host, device)


@pytest.mark.parametrize("world", [2, 3])
def test_each_rank_gets_the_host_streams_share(fp32_cache, world):
    cache = kdcache.open_cache(fp32_cache)
    for rank in range(world):
        common = dict(batch_size=50, seed=5, epoch=1, rank=rank, world_size=world)
        assert_same_batches(cache.loader(None, stream="host", **common),
                            cache.loader(None, stream="device", **common))  # fmt: skip


def test_a_resumed_epoch_skips_the_same_batches(digits_cache):
    cache = kdcache.open_cache(digits_cache)
    host = cache.loader(None, batch_size=64, seed=2, epoch=0, stream="host").skip(7)
    device = cache.loader(None, batch_size=64, seed=2, epoch=0, stream="device").skip(7)
    assert len(host) == len(device) == len(cache.loader(None, batch_size=64, seed=2, epoch=0)) - 7
    assert_same_batches(host, device)


@pytest.mark.parametrize(
    ("recipe", "params", "views"),
    [("cifar", {"exhaustive": True}, [0, 17, 161]), ("cifar", {"padding": 2}, [0, 1, 2]),
     ("none", {}, [0])],  # fmt: skip
)
def test_online_streams_agree_for_each_geometric_recipe(recipe, params, views):
    train = load_dataset("digits", None, "train")
    made = create_recipe(recipe, train.spec, **params)
    sources = [
        EpochSource(train, made, 9, np.array(views), 128, len(train), images, None)
        for images in (HostImages(train, made, 9, workers=0, device=CPU),
                       DeviceImages(train, made, 9, device=CPU))  # fmt: skip
    ]
    for epoch in (0, 3):
        host, device = (epoch_batches(s, seed=4, epoch=epoch, batch_size=300) for s in sources)
        assert_same_batches(host, device)


def test_auto_takes_the_device_where_it_can_and_the_host_otherwise():
    train = load_dataset("digits", None, "train")
    cifar = create_recipe("cifar", train.spec)
    mixed = create_recipe("cifar+mixup", train.spec)
    assert isinstance(choose_images("auto", train, cifar, 0, workers=0, device=CPU), DeviceImages)
    assert isinstance(choose_images("auto", train, mixed, 0, workers=0, device=CPU), HostImages)
    assert isinstance(choose_images("host", train, cifar, 0, workers=0, device=CPU), HostImages)
    with pytest.raises(ConfigError, match="device-resident stream cannot serve digits with recipe "
                       "'cifar\\+mixup'.*Use `stream` host"):  # fmt: skip
        choose_images("device", train, mixed, 0, workers=0, device=CPU)
    with pytest.raises(ConfigError, match="stream must be one of auto, host, device"):
        choose_images("gpu", train, cifar, 0, workers=0, device=CPU)  # type: ignore[arg-type]


def test_the_device_stream_still_refuses_views_that_do_not_replay(digits_cache, monkeypatch):
    import kdcache.stream.device_views as device_views

    seed = device_views.sample_seed
    monkeypatch.setattr(device_views, "sample_seed", lambda s, v, i: seed(s + 1, v, i))
    loader = kdcache.open_cache(digits_cache).loader(None, batch_size=64, seed=0, epoch=0,
                                                     stream="device")  # fmt: skip
    with pytest.raises(ReplayMismatchError, match="differs from the one the teacher saw"):
        for _ in loader:
            pass


def test_training_from_either_stream_gives_the_same_losses(digits_cache, tmp_path):
    results = {}
    for stream in ("host", "device"):
        config = TrainConfig(student="resnet8", out=str(tmp_path / stream), loss="kd",
                             cache=str(digits_cache), epochs=2, batch_size=100, workers=0,
                             stream=stream, max_samples=700, seed=3)  # fmt: skip
        results[stream] = run_train(config)
    assert results["host"].step_losses == results["device"].step_losses
    assert results["host"].final_top1 == results["device"].final_top1
