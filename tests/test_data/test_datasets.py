"""Source datasets: loading, labels, fingerprints, errors, normalisation."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from kdcache.data import DatasetSpec, list_datasets, load_dataset, normalize
from kdcache.data.datasets import CIFAR100, DIGITS, digits_split_indices
from kdcache.errors import ConfigError, DataNotFoundError, UnknownNameError

from ._paths import cifar100_dir

# Pinned: a cache records the fingerprint, so changing its definition orphans every cache.
DIGITS_TRAIN_FINGERPRINT = "e00d5496bb2ed490717b1eae1bee661e60b418071a11e347ba7e57efe727377b"
CIFAR100_TRAIN_FINGERPRINT = "e6671b32471b2252edf795f27c3509bef534663653f511964de92333a7739ca6"


def test_registry_lists_every_dataset() -> None:
    assert list_datasets() == ["cifar10", "cifar100", "digits", "imagefolder"]


def test_unknown_dataset_lists_the_choices() -> None:
    with pytest.raises(UnknownNameError, match="cifar100, digits, imagefolder"):
        load_dataset("mnist", None, "train")


def test_bad_split_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="train, test"):
        load_dataset("digits", None, "validation")


def test_digits_loads_offline_with_1797_samples_split_80_20() -> None:
    train = load_dataset("digits", None, "train")
    test = load_dataset("digits", "/nonexistent/is/ignored", "test")
    assert (len(train), len(test)) == (1438, 359)
    assert train.spec == test.spec == DIGITS
    assert set(np.concatenate([digits_split_indices(1797, s) for s in ("train", "test")])) == set(
        range(1797)
    )
    image = train.image(0)
    assert image.dtype == torch.uint8 and image.shape == (1, 8, 8)
    assert train.labels.dtype == np.int64 and set(train.labels) == set(range(10))
    assert train.class_names == tuple(str(k) for k in range(10))


def test_digits_pixels_are_0_to_16_scaled_by_255_over_16() -> None:
    from sklearn.datasets import load_digits

    raw = load_digits().images  # [1797, 8, 8] in 0..16
    train = load_dataset("digits", None, "train")
    first = digits_split_indices(1797, "train")[0]
    expected = np.floor(raw[first] * 255 / 16 + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(train.image(0)[0].numpy(), expected)
    assert train.pixels.max() == 255 and train.pixels.min() == 0


def test_digits_fingerprint_is_stable_and_differs_between_splits() -> None:
    first = load_dataset("digits", None, "train").fingerprint()
    again = load_dataset("digits", None, "train").fingerprint()
    other = load_dataset("digits", None, "test").fingerprint()
    assert first == again == DIGITS_TRAIN_FINGERPRINT
    assert other != first


def test_fingerprint_follows_its_documented_formula() -> None:
    train = load_dataset("digits", None, "train")
    header = {
        "name": "digits",
        "split": "train",
        "n": 1438,
        "classes": [str(k) for k in range(10)],
        "identity": "pixels-u8:1438,1,8,8",
    }
    digest = hashlib.sha256(b"kdcache-dataset-v1\n")
    digest.update(json.dumps(header, sort_keys=True, separators=(",", ":")).encode() + b"\n")
    digest.update(train.labels.astype("<i8").tobytes() + train.pixels.tobytes())
    assert train.fingerprint() == digest.hexdigest()


def test_fingerprint_changes_with_one_pixel() -> None:
    train = load_dataset("digits", None, "train")
    train.pixels[5, 0, 3, 3] ^= 1
    assert train.fingerprint() != DIGITS_TRAIN_FINGERPRINT


def test_image_is_a_copy_that_callers_may_modify() -> None:
    train = load_dataset("digits", None, "train")
    train.image(0).fill_(7)
    assert not torch.all(train.image(0) == 7)


@pytest.mark.realdata
@pytest.mark.parametrize("split, count", [("train", 50000), ("test", 10000)])
def test_cifar100_loads_from_shared_data(split: str, count: int) -> None:
    data = load_dataset("cifar100", cifar100_dir(), split)
    assert len(data) == count and data.spec == CIFAR100 and data.spec.num_classes == 100
    assert np.bincount(data.labels).tolist() == [count // 100] * 100
    assert data.image(0).shape == (3, 32, 32) and data.image(0).dtype == torch.uint8
    assert data.class_names[:2] == ("apple", "aquarium_fish")
    if split == "train":
        assert data.fingerprint() == CIFAR100_TRAIN_FINGERPRINT


@pytest.mark.realdata
def test_cifar100_pixels_are_the_official_pickle_rows() -> None:
    import pickle

    root = cifar100_dir()
    with open(root / "cifar-100-python" / "test", "rb") as f:
        raw = pickle.load(f, encoding="latin1")
    data = load_dataset("cifar100", root, "test")
    # A row is 1024 R, 1024 G, 1024 B values, each 32x32 row-major: exactly [C, H, W].
    np.testing.assert_array_equal(data.image(123).numpy().ravel(), raw["data"][123])
    assert int(data.labels[123]) == raw["fine_labels"][123]


@pytest.mark.parametrize("name, folder", [("cifar100", "cifar-100-python"), ("cifar10", "cifar")])
def test_missing_cifar_names_the_expected_files_and_download(
    tmp_path: Path, name: str, folder: str
) -> None:
    with pytest.raises(DataNotFoundError) as err:
        load_dataset(name, tmp_path, "train")
    message = str(err.value)
    assert folder in message and "`download`" in message and "`data_dir`" in message
    if name == "cifar100":
        assert str(tmp_path / "cifar-100-python" / "meta") in message


def test_data_dir_pointing_inside_the_cifar_folder_gets_a_hint(tmp_path: Path) -> None:
    inner = tmp_path / "cifar-100-python"
    inner.mkdir()
    with pytest.raises(DataNotFoundError, match=f"point `data_dir` at {tmp_path}"):
        load_dataset("cifar100", inner, "test")


def test_spec_round_trips_through_a_dict() -> None:
    as_dict = CIFAR100.to_dict()
    assert json.loads(json.dumps(as_dict)) == as_dict
    assert DatasetSpec.from_dict(as_dict) == CIFAR100
    assert (CIFAR100.train_split, CIFAR100.eval_split) == ("train", "test")


def test_spec_rejects_mean_of_the_wrong_length() -> None:
    with pytest.raises(ConfigError, match="3 entries"):
        DatasetSpec("x", 10, 3, mean=(0.5,), std=(0.5, 0.5, 0.5), image_size=32)


def test_normalize_matches_torchvision_normalize() -> None:
    from torchvision.transforms import Normalize

    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=gen)
    reference = Normalize(CIFAR100.mean, CIFAR100.std)(images.float().div(255))  # ToTensor's math
    out = normalize(images, CIFAR100)
    assert out.dtype == torch.float32 and out.device == images.device
    torch.testing.assert_close(out, reference, rtol=0, atol=0)
    torch.testing.assert_close(normalize(images[0], CIFAR100), reference[0], rtol=0, atol=0)
    channels_last = images.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(normalize(channels_last, CIFAR100), reference, rtol=0, atol=0)


def test_normalize_refuses_float_input_and_wrong_channels() -> None:
    with pytest.raises(TypeError, match="uint8"):
        normalize(torch.zeros(1, 3, 4, 4), CIFAR100)
    with pytest.raises(ValueError, match=r"\[\.\.\., 1, H, W\]"):
        normalize(torch.zeros(1, 3, 4, 4, dtype=torch.uint8), DIGITS)


def test_digits_normalisation_constants_are_its_train_statistics() -> None:
    pixels = load_dataset("digits", None, "train").pixels / 255.0
    assert DIGITS.mean[0] == pytest.approx(pixels.mean(), abs=5e-5)
    assert DIGITS.std[0] == pytest.approx(pixels.std(), abs=5e-5)


def test_a_test_only_cifar100_folder_serves_the_test_split(tmp_path: Path) -> None:
    """torchvision md5-checks both splits; only the split read (and meta) must be there, still
    checked: a test-only copy loads test, names the missing train file, and a damaged test file
    is refused."""
    real = cifar100_dir() / "cifar-100-python"
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name in ("test", "meta"):
        (folder / name).symlink_to(real / name)
    full = load_dataset("cifar100", cifar100_dir(), "test")
    only = load_dataset("cifar100", tmp_path, "test")
    assert only.fingerprint() == full.fingerprint()
    with pytest.raises(DataNotFoundError, match="cifar-100-python/train"):
        load_dataset("cifar100", tmp_path, "train")
    (folder / "test").unlink()
    (folder / "test").write_bytes((real / "test").read_bytes()[:-1] + b"\0")
    with pytest.raises(DataNotFoundError, match="corrupt or incomplete"):
        load_dataset("cifar100", tmp_path, "test")
