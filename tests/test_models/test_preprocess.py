"""Each model's own preprocessing: the conversion, where it comes from, how a cache records it."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from torchvision.transforms import v2

from kdcache.cache import schema
from kdcache.data import normalize
from kdcache.data.datasets import CIFAR100, DIGITS
from kdcache.errors import ConfigError
from kdcache.models import build_model
from kdcache.models.preprocess import (
    Preprocessing,
    check_preprocessing_text,
    recorded_preprocessing,
    resolve_preprocessing,
)


def views(n: int = 4, size: int = 32, chans: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, chans, size, size), generator=g, dtype=torch.uint8)


def test_without_a_resize_it_is_the_datasets_normalisation_bit_for_bit() -> None:
    images = views()
    expected = v2.Normalize(CIFAR100.mean, CIFAR100.std)(
        v2.ToDtype(torch.float32, scale=True)(images)
    )
    got = Preprocessing.from_dataset(CIFAR100)(images)
    assert torch.equal(got, normalize(images, CIFAR100))  # what 1.0 / 1.1 caches were made with
    assert torch.allclose(got, expected, atol=1e-6)


@pytest.mark.parametrize("mode", ["bilinear", "bicubic", "nearest"])
def test_a_resize_is_torchvisions_resize_of_the_scaled_image(mode: str) -> None:
    images = views(size=32)
    pre = Preprocessing((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), (48, 40), mode)  # type: ignore[arg-type]
    scaled = v2.ToDtype(torch.float32, scale=True)(images)
    resized = v2.functional.resize(
        scaled, [48, 40], interpolation=v2.InterpolationMode(mode), antialias=True
    )
    assert torch.allclose(pre(images), (resized - 0.5) / 0.25, atol=1e-6)
    assert pre(images).shape == (4, 3, 48, 40)


def test_it_refuses_what_it_cannot_convert() -> None:
    pre = Preprocessing.from_dataset(CIFAR100)
    with pytest.raises(TypeError, match="uint8"):
        pre(views().float())
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        pre(views(chans=1))


def test_the_record_round_trips_and_an_old_cache_reads_as_the_datasets() -> None:
    pre = Preprocessing((0.5,), (0.5,), (160, 160), "bicubic")
    assert Preprocessing.from_dict(json.loads(json.dumps(pre.to_dict()))) == pre
    assert recorded_preprocessing(pre.to_dict(), DIGITS) == pre
    assert recorded_preprocessing(None, DIGITS) == Preprocessing((0.3053,), (0.3758,), (8, 8))
    with pytest.raises(ConfigError, match="malformed preprocessing"):
        Preprocessing.from_dict({"mean": [0.5]})


def test_a_timm_model_gets_its_pretrained_cfg_and_a_zoo_model_the_datasets() -> None:
    vit = build_model("test_vit", num_classes=100)  # pretrained_cfg: 0.5/0.5, 160, bicubic
    assert resolve_preprocessing(vit, CIFAR100) == Preprocessing(
        (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), (160, 160), "bicubic"
    )
    assert resolve_preprocessing(vit, CIFAR100, "dataset") == Preprocessing.from_dataset(CIFAR100)
    zoo = build_model("resnet8", num_classes=100)
    assert resolve_preprocessing(zoo, CIFAR100) == Preprocessing.from_dataset(CIFAR100)
    grey = build_model("test_vit", num_classes=10, in_chans=1)
    assert resolve_preprocessing(grey, DIGITS).mean == (0.5,)


def test_overrides_apply_on_top_of_their_base() -> None:
    vit = build_model("test_vit", num_classes=100)
    mdistiller = "dataset,mean=0.5071/0.4867/0.4408,std=0.2675/0.2565/0.2761"
    got = resolve_preprocessing(build_model("resnet8", num_classes=100), CIFAR100, mdistiller)
    assert got == Preprocessing((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761), (32, 32))
    got = resolve_preprocessing(vit, CIFAR100, "size=224,interpolation=bilinear")
    assert (got.mean, got.input_size, got.interpolation) == ((0.5,) * 3, (224, 224), "bilinear")
    assert resolve_preprocessing(vit, CIFAR100, "size=64x48").input_size == (64, 48)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("bogus", "not a base"),
        ("size=16,auto", "not a base"),
        ("mean=a/b/c", "numbers separated by '/'"),
        ("size=big", "S or HxW"),
        ("gamma=2", "unknown key 'gamma'"),
        ("interpolation=lanczos", "interpolation must be one of"),
        ("std=0/1/1", "std must be > 0"),
    ],
)
def test_bad_preprocessing_text_is_one_clear_error(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve_preprocessing(build_model("resnet8", num_classes=100), CIFAR100, text)


def test_a_bad_base_is_refused_before_any_model_is_built() -> None:
    with pytest.raises(ConfigError, match="not a base"):
        check_preprocessing_text("imagenet")


def test_statistics_for_other_channels_than_the_views_are_refused() -> None:
    with pytest.raises(ConfigError, match="digits views have 1"):
        resolve_preprocessing(
            build_model("resnet8", 10, in_chans=1), DIGITS, "mean=0.5/0.5/0.5,std=1/1/1"
        )


def test_a_1_1_identity_keeps_its_fingerprint_under_format_1_2() -> None:
    # The 1.2 teacher fields are written only when set: an old cache's recorded fingerprint
    # must still match what this reader computes from its identity.
    old = {
        "teacher": {"name": "resnet8", "weights_sha256": "ab" * 32, "num_params": 10},
        "dataset": {"name": "digits", "split": "train", "num_samples": 5, "num_classes": 10,
                    "fingerprint": "cd" * 32, "spec": DIGITS.to_dict()},
        "augmentation": {"recipe": "cifar", "params": {}, "seed": 0, "num_views": 1},
        "storage": {"mode": "dense", "dtype": "float16", "chunk_rows": 4, "topk": None},
    }  # fmt: skip
    canonical = json.dumps(old, sort_keys=True, separators=(",", ":")).encode()
    identity = schema.CacheIdentity.from_dict(old)
    assert identity.fingerprint() == hashlib.sha256(canonical).hexdigest()
    assert identity.teacher.preprocessing is None and not identity.teacher.weights_ema
