"""DeviceViews: the device-made views are SeededViews' own bytes, labels and input hashes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from kdcache.augment import create_recipe
from kdcache.augment.base import Recipe
from kdcache.data import ArrayDataset, SourceDataset, load_dataset
from kdcache.data.datasets import DIGITS
from kdcache.errors import ConfigError
from kdcache.seeding import input_hash, input_hashes
from kdcache.stream.device_views import DeviceViews
from kdcache.views import SeededViews
from tests.conftest import require_shared_data

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits() -> SourceDataset:
    return load_dataset("digits", None, "train")  # 1438 images, 1 x 8 x 8


@pytest.fixture(scope="module")
def cifar100() -> SourceDataset:
    return load_dataset("cifar100", require_shared_data(), "train")


def random_items(recipe: Recipe, n: int, rows: int, seed: int) -> np.ndarray:
    """``rows`` random (view, index) pairs, repeats included; views within the recipe's range."""
    rng = np.random.default_rng(seed)
    views = recipe.num_distinct_views() if recipe.params().get("exhaustive") else 7
    views = 1 if recipe.name == "none" else views
    return np.stack([rng.integers(0, views, rows), rng.integers(0, n, rows)], axis=1)


def expected(source: SourceDataset, recipe: Recipe, seed: int, items: np.ndarray):  # type: ignore[no-untyped-def]
    """(images [B, C, S, S], labels [B], input hashes [B]) as SeededViews makes them."""
    views = SeededViews(source, recipe, seed, items)
    got = [views[k] for k in range(len(items))]
    images = torch.stack([g["image"] for g in got]) if got else None
    labels = torch.tensor([g["label"] for g in got], dtype=torch.int64)
    return images, labels, np.array([g["input_hash"] for g in got], np.int64)


RECIPES = [
    ("none", {}),
    *[("cifar", {"padding": p}) for p in (0, 2, 4)],
    *[("cifar", {"padding": p, "exhaustive": True}) for p in (0, 2, 4)],
]


@pytest.mark.parametrize(("name", "params"), RECIPES)
@pytest.mark.parametrize("cache_seed", [0, 7, 2**64 - 1])
def test_digits_views_are_seeded_views_bytes(digits, name, params, cache_seed):
    recipe = create_recipe(name, digits.spec, **params)
    device_views = DeviceViews(digits, recipe, cache_seed, CPU)
    for rows in (1, 37, 64):  # odd sizes, one row
        items = random_items(recipe, len(digits), rows, seed=rows + cache_seed % 1000)
        images, labels, hashes = expected(digits, recipe, cache_seed, items)
        got = device_views.views(items)
        assert got.dtype == torch.uint8 and got.device == CPU
        assert torch.equal(got, images)
        assert torch.equal(device_views.views(items.astype(np.uint32)), images)
        assert torch.equal(device_views.labels(items), labels)
        np.testing.assert_array_equal(input_hashes(got), hashes)


@pytest.mark.parametrize(("name", "params"), RECIPES)
def test_cifar100_views_are_seeded_views_bytes(cifar100, name, params):
    recipe = create_recipe(name, cifar100.spec, **params)
    device_views = DeviceViews(cifar100, recipe, 11, CPU)
    items = random_items(recipe, len(cifar100), 129, seed=5)
    images, labels, hashes = expected(cifar100, recipe, 11, items)
    got = device_views.views(items)
    assert torch.equal(got, images)
    assert torch.equal(device_views.labels(items), labels)
    np.testing.assert_array_equal(input_hashes(got), hashes)


def test_every_exhaustive_view_of_one_image_is_the_recipes(digits):
    recipe = create_recipe("cifar", digits.spec, padding=2, exhaustive=True)
    views = recipe.num_distinct_views()
    items = np.stack([np.arange(views), np.full(views, 3)], axis=1)
    images, _, _ = expected(digits, recipe, 0, items)
    assert torch.equal(DeviceViews(digits, recipe, 0, CPU).views(items), images)


def test_an_empty_batch_is_an_empty_tensor(digits):
    device_views = DeviceViews(digits, create_recipe("cifar", digits.spec), 0, CPU)
    empty = np.zeros((0, 2), np.int64)
    assert device_views.views(empty).shape == (0, 1, 8, 8)
    assert device_views.labels(empty).shape == (0,)


def test_geometry_is_drawn_once_per_view_and_sample(digits):
    recipe = create_recipe("cifar", digits.spec)
    device_views = DeviceViews(digits, recipe, 7, CPU)
    items = np.array([[0, 5], [2, 5], [0, 5], [0, 9], [9, 1437]])  # (0, 5) twice; view 9 grows
    first = device_views.views(items)
    assert device_views.geometry_calls == 4  # the repeated pair drawn once
    again = device_views.views(items[::-1].copy())
    assert device_views.geometry_calls == 4  # a later epoch: table lookups only
    assert torch.equal(again, first.flip(0))
    device_views.views(np.array([[0, 5], [1, 5]]))
    assert device_views.geometry_calls == 5  # only the new pair (1, 5)
    images, _, _ = expected(digits, recipe, 7, items)
    assert torch.equal(first, images)
    epoch = np.stack([np.full(100, 3), np.arange(100)], axis=1)
    device_views.geometry(epoch)  # an epoch's geometry drawn ahead of its batches
    assert device_views.geometry_calls == 105
    device_views.views(epoch[:37])
    assert device_views.geometry_calls == 105


def test_exhaustive_and_identity_views_draw_no_geometry(digits):
    for recipe in (create_recipe("cifar", digits.spec, exhaustive=True),
                   create_recipe("none", digits.spec)):  # fmt: skip
        device_views = DeviceViews(digits, recipe, 7, CPU)
        device_views.views(random_items(recipe, len(digits), 50, seed=1))
        assert device_views.geometry_calls == 0


def test_items_out_of_range_are_refused_like_seeded_views(digits):
    device_views = DeviceViews(digits, create_recipe("cifar", digits.spec), 0, CPU)
    for bad in ([[0, len(digits)]], [[-1, 0]], [[0, -1]]):
        with pytest.raises(ConfigError, match="outside"):
            device_views.views(np.array(bad))
        with pytest.raises(ConfigError, match="outside"):
            device_views.labels(np.array(bad))
    exhaustive = DeviceViews(digits, create_recipe("cifar", digits.spec, exhaustive=True), 0, CPU)
    with pytest.raises(ConfigError, match="enumerates views 0..161; got view 162"):
        exhaustive.views(np.array([[162, 0]]))
    with pytest.raises(ValueError, match="pairs"):
        device_views.views(np.zeros((3, 3), np.int64))
    with pytest.raises(ConfigError, match="cache seed"):
        DeviceViews(digits, create_recipe("cifar", digits.spec), 2**64, CPU)


def test_nbytes_is_what_the_views_hold(digits):
    for padding in (0, 4):
        recipe = create_recipe("cifar", digits.spec, padding=padding)
        side = 8 + 2 * padding
        held = DeviceViews(digits, recipe, 0, CPU).device_bytes
        assert DeviceViews.nbytes(digits, recipe) == held == len(digits) * (side * side + 8)


def test_the_images_are_copied_once_and_the_source_stays_pristine(digits):
    before = digits.images_array().copy()
    device_views = DeviceViews(digits, create_recipe("none", digits.spec), 0, CPU)
    device_views.views(np.array([[0, 0]]))[0].fill_(255)  # a caller writing into a batch
    np.testing.assert_array_equal(digits.images_array(), before)
    assert device_views.views(np.array([[0, 0]]))[0].equal(torch.from_numpy(before[0]))


def test_images_array_is_every_image_without_a_copy(digits):
    array = digits.images_array()
    assert isinstance(digits, ArrayDataset) and np.shares_memory(array, digits.pixels)
    assert array.dtype == np.uint8 and array.shape == (len(digits), 1, 8, 8)
    assert torch.equal(torch.from_numpy(array[17].copy()), digits.image(17))
    with pytest.raises(ValueError, match="read-only"):
        array[0, 0, 0, 0] = 1


def image_folder(root: Path) -> SourceDataset:
    from PIL import Image

    for label, size in (("a", (8, 8)), ("b", (12, 9))):
        (root / "train" / label).mkdir(parents=True)
        Image.new("RGB", size, (label == "a") * 200).save(root / "train" / label / "x.png")
    return load_dataset("imagefolder", root, "train", image_size=8)


def test_unsupported_data_and_recipes_say_why(digits, tmp_path):
    spec = digits.spec
    resized = ArrayDataset(DIGITS, "train", np.zeros((3, 1, 10, 10), np.uint8),
                           np.zeros(3, np.int64), digits.class_names)  # fmt: skip
    folder = image_folder(tmp_path)
    cases = [
        (digits, create_recipe("cifar+mixup", spec), "mixes images"),
        (digits, create_recipe("randaugment", spec), "'randaugment' is made on the host"),
        (digits, create_recipe("imagenet", spec), "'imagenet' is made on the host"),
        (digits, create_recipe("none", spec, crop_pct=0.875), "crop_pct 0.875 resizes"),
        (resized, create_recipe("cifar", spec), "a resize is needed"),
        (folder, create_recipe("cifar", folder.spec), "reads its images on access"),
    ]
    for source, recipe, reason in cases:
        said = DeviceViews.unsupported_reason(source, recipe)
        assert said is not None and reason in said and "\n" not in said
        with pytest.raises(ConfigError, match="cannot serve this data"):
            DeviceViews(source, recipe, 0, CPU)
    for name in ("none", "cifar"):
        assert DeviceViews.unsupported_reason(digits, create_recipe(name, spec)) is None
    assert (
        DeviceViews.unsupported_reason(digits, create_recipe("none", spec, crop_pct=0.99)) is None
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_views_and_labels_are_the_cpu_ones(digits):
    recipe = create_recipe("cifar", digits.spec)
    items = random_items(recipe, len(digits), 333, seed=3)
    cuda = DeviceViews(digits, recipe, 5, torch.device("cuda"))
    got = cuda.views(items)
    assert got.device.type == "cuda"
    images, labels, hashes = expected(digits, recipe, 5, items)
    assert torch.equal(got.cpu(), images) and torch.equal(cuda.labels(items).cpu(), labels)
    np.testing.assert_array_equal(input_hashes(got), hashes)


def test_batched_input_hashes_are_input_hash_of_each_row():
    gen = torch.Generator().manual_seed(0)
    for shape in ((5, 1, 8, 8), (3, 3, 32, 32), (0, 3, 32, 32)):
        batch = torch.randint(0, 256, shape, dtype=torch.uint8, generator=gen)
        for layout in (batch, batch.flip(-1), batch.contiguous(memory_format=torch.channels_last)):
            want = [input_hash(image) for image in layout]
            assert input_hashes(layout).dtype == np.int64
            assert input_hashes(layout).tolist() == want
    with pytest.raises(TypeError, match="uint8"):
        input_hashes(torch.zeros((2, 1, 8, 8)))
    with pytest.raises(TypeError, match="uint8"):
        input_hashes(torch.zeros((1, 8, 8), dtype=torch.uint8))
