"""Augmentation recipes: replayable, seeded, RNG-neutral, and geometrically right."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from kdcache.augment import create_recipe, list_recipes
from kdcache.data import DatasetSpec
from kdcache.data.datasets import CIFAR100
from kdcache.errors import ConfigError, UnknownNameError
from kdcache.seeding import forked_global_rng

IMAGENET_LIKE = DatasetSpec(
    "imagefolder", 10, 3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 24, 0.875, ("train", "val")
)


def _cifar_image(seed: int = 0) -> torch.Tensor:
    # Values 1..255 so that zero padding is distinguishable from image content.
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(1, 256, (3, 32, 32), dtype=torch.uint8, generator=gen)  # [3, 32, 32]


def _recipe_and_image(name: str) -> tuple[object, torch.Tensor]:
    if name == "imagenet":
        gen = torch.Generator().manual_seed(1)
        image = torch.randint(0, 256, (3, 40, 57), dtype=torch.uint8, generator=gen)
        return create_recipe(name, IMAGENET_LIKE), image
    return create_recipe(name, CIFAR100), _cifar_image()


def _rng_snapshot() -> tuple[object, ...]:
    return random.getstate(), np.random.get_state()[1].tobytes(), torch.get_rng_state()


def test_registry_lists_every_recipe() -> None:
    assert list_recipes() == ["cifar", "imagenet", "none", "randaugment"]


@pytest.mark.parametrize("name", ["cifar", "imagenet", "none", "randaugment"])
def test_params_are_json_and_rebuild_the_same_recipe(name: str) -> None:
    recipe, _ = _recipe_and_image(name)
    params = json.loads(json.dumps(recipe.params()))
    assert create_recipe(recipe.name, recipe.spec, **params) == recipe


@pytest.mark.parametrize("name", ["cifar", "imagenet", "none", "randaugment"])
def test_same_seed_replays_the_same_bytes(name: str) -> None:
    recipe, image = _recipe_and_image(name)
    first = [recipe(image, sample_seed=s, view=0) for s in range(20)]
    again = [recipe(image.clone(), sample_seed=s, view=0) for s in range(20)]
    assert all(
        a.dtype == torch.uint8 and torch.equal(a, b) for a, b in zip(first, again, strict=True)
    )
    size = recipe.spec.image_size
    assert all(a.shape == (3, size, size) for a in first)


@pytest.mark.parametrize("name", ["cifar", "imagenet", "randaugment"])
def test_different_seeds_give_different_images(name: str) -> None:
    recipe, image = _recipe_and_image(name)
    outputs = {recipe(image, sample_seed=s, view=0).numpy().tobytes() for s in range(20)}
    assert len(outputs) >= 15


@pytest.mark.parametrize("name", ["cifar", "imagenet", "none", "randaugment"])
def test_recipes_leave_the_callers_global_rngs_untouched(name: str) -> None:
    recipe, image = _recipe_and_image(name)
    random.seed(11)
    np.random.seed(12)
    torch.manual_seed(13)
    before = _rng_snapshot()
    for s in range(10):
        recipe(image, sample_seed=s, view=s)
        after = _rng_snapshot()
        assert after[0] == before[0] and after[1] == before[1]
        assert torch.equal(after[2], before[2])


def test_randaugment_changes_most_images_beyond_the_crop() -> None:
    strong = create_recipe("randaugment", CIFAR100)
    crop = create_recipe("cifar", CIFAR100)
    image = _cifar_image()
    changed = [
        not torch.equal(strong(image, sample_seed=s, view=0), crop(image, sample_seed=s, view=0))
        for s in range(40)
    ]
    assert 20 <= sum(changed) < 40  # each of 2 ops is applied with p=0.5: ~75% change


def test_randaugment_works_on_single_channel_digits() -> None:
    from kdcache.data import load_dataset

    digits = load_dataset("digits", None, "train")
    recipe = create_recipe("randaugment", digits.spec, base="cifar")
    outs = [recipe(digits.image(i), sample_seed=i, view=0) for i in range(50)]
    assert all(o.shape == (1, 8, 8) and o.dtype == torch.uint8 for o in outs)


def test_exhaustive_cifar_has_162_distinct_views() -> None:
    recipe = create_recipe("cifar", CIFAR100, exhaustive=True)
    image = _cifar_image()
    assert recipe.num_distinct_views() == 162
    views = {recipe(image, sample_seed=0, view=v).numpy().tobytes() for v in range(162)}
    assert len(views) == 162


def test_exhaustive_views_ignore_the_seed() -> None:
    recipe = create_recipe("cifar", CIFAR100, exhaustive=True)
    image = _cifar_image()
    assert torch.equal(recipe(image, sample_seed=1, view=77), recipe(image, sample_seed=2, view=77))


def test_random_cifar_draws_only_the_162_exhaustive_views() -> None:
    image = _cifar_image()
    random_mode = create_recipe("cifar", CIFAR100)
    exhaustive = create_recipe("cifar", CIFAR100, exhaustive=True)
    all_views = {exhaustive(image, sample_seed=0, view=v).numpy().tobytes() for v in range(162)}
    drawn = {random_mode(image, sample_seed=s, view=0).numpy().tobytes() for s in range(300)}
    assert drawn <= all_views and len(drawn) > 100
    assert random_mode.num_distinct_views() == 162


@pytest.mark.parametrize("flip", [False, True])
def test_exhaustive_view_geometry_is_the_documented_crop(flip: bool) -> None:
    image = _cifar_image()
    recipe = create_recipe("cifar", CIFAR100, exhaustive=True)
    dy, dx = 0, 8  # top-most, right-most crop: 4 rows of padding on top, 4 columns on the right
    view = (dy * 9 + dx) * 2 + int(flip)
    out = recipe(image, sample_seed=0, view=view)
    unflipped = out.flip(-1) if flip else out
    assert torch.all(unflipped[:, :4, :] == 0) and torch.all(unflipped[:, :, 28:] == 0)
    assert torch.equal(unflipped[:, 4:, :28], image[:, :28, 4:])
    padded = np.pad(image.numpy(), ((0, 0), (4, 4), (4, 4)))
    expected = padded[:, dy : dy + 32, dx : dx + 32]
    np.testing.assert_array_equal(out.numpy(), expected[..., ::-1] if flip else expected)


def test_centre_view_without_flip_is_the_original_image() -> None:
    recipe = create_recipe("cifar", CIFAR100, exhaustive=True)
    image = _cifar_image()
    assert torch.equal(recipe(image, sample_seed=0, view=(4 * 9 + 4) * 2), image)


def test_cifar_recipe_matches_torchvision_under_the_same_seed() -> None:
    import torchvision.transforms as T

    reference = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()])
    recipe = create_recipe("cifar", CIFAR100)
    image = _cifar_image()
    for seed in range(50):
        with forked_global_rng(seed):
            expected = reference(image)
        assert torch.equal(recipe(image, sample_seed=seed, view=0), expected)


def test_imagenet_recipe_matches_torchvision_under_the_same_seed() -> None:
    import torchvision.transforms.v2 as T

    reference = T.Compose([T.RandomResizedCrop(24, antialias=True), T.RandomHorizontalFlip()])
    recipe, image = _recipe_and_image("imagenet")
    for seed in range(50):
        with forked_global_rng(seed):
            expected = reference(image)
        assert torch.equal(recipe(image, sample_seed=seed, view=0), expected)


@pytest.mark.parametrize("shape", [(50, 400), (300, 200), (31, 500), (224, 224)])
def test_imagenet_box_is_torchvisions_including_the_fallback(shape: tuple[int, int]) -> None:
    from torchvision.transforms import RandomResizedCrop

    recipe = create_recipe("imagenet", IMAGENET_LIKE)
    for seed in range(100):
        with forked_global_rng(seed):
            expected = RandomResizedCrop.get_params(
                torch.zeros(1, *shape), [0.08, 1.0], [3 / 4, 4 / 3]
            )
        assert recipe.box(*shape, torch.Generator().manual_seed(seed)) == expected


def test_none_is_the_identity_on_cifar() -> None:
    image = _cifar_image()
    assert torch.equal(create_recipe("none", CIFAR100)(image, sample_seed=5, view=3), image)


def test_unknown_recipe_lists_the_choices() -> None:
    with pytest.raises(UnknownNameError, match="cifar, imagenet, none, randaugment"):
        create_recipe("mixup", CIFAR100)


def test_unknown_parameter_names_the_accepted_ones() -> None:
    with pytest.raises(ConfigError, match="padding, exhaustive"):
        create_recipe("cifar", CIFAR100, pad=4)


@pytest.mark.parametrize("name", ["imagenet", "randaugment"])
def test_exhaustive_needs_a_finite_recipe(name: str) -> None:
    with pytest.raises(ConfigError, match="no finite set of views"):
        create_recipe(name, CIFAR100, exhaustive=True)
    assert create_recipe(name, CIFAR100, exhaustive=False).num_distinct_views() is None


@pytest.mark.parametrize(
    "name, params",
    [
        ("cifar", {"padding": -1}),
        ("imagenet", {"scale": (0.5, 2.0)}),
        ("imagenet", {"ratio": (2.0, 1.0)}),
        ("none", {"crop_pct": 0}),
        ("randaugment", {"config": "auto-m9"}),
        ("randaugment", {"base": "mixup"}),
    ],
)
def test_bad_parameters_are_config_errors(name: str, params: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        create_recipe(name, CIFAR100, **params)


def test_exhaustive_view_out_of_range_is_refused() -> None:
    recipe = create_recipe("cifar", CIFAR100, exhaustive=True)
    with pytest.raises(ConfigError, match="0..161"):
        recipe(_cifar_image(), sample_seed=0, view=162)


def test_cifar_recipe_refuses_images_of_another_size() -> None:
    recipe = create_recipe("cifar", CIFAR100)
    with pytest.raises(ConfigError, match="imagenet"):
        recipe(torch.zeros(3, 40, 40, dtype=torch.uint8), sample_seed=0, view=0)


def test_forked_global_rng_seeds_the_documented_generators_and_restores_them(monkeypatch) -> None:
    cuda_seeds: list[int] = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", cuda_seeds.append)
    before = random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state()
    seed = 2**40 + 3  # NumPy's legacy seeding takes seed % 2**32 (docs/cache-format.md §5.1)
    with forked_global_rng(seed):
        drawn = random.random(), np.random.random(), torch.rand(1).item()
    assert drawn == (
        random.Random(seed).random(),
        np.random.RandomState(seed % 2**32).random(),
        torch.rand(1, generator=torch.Generator().manual_seed(seed)).item(),
    )
    assert cuda_seeds == []  # CUDA's generators are the training process's: never reseeded
    assert random.getstate() == before[0]
    assert np.array_equal(np.random.get_state()[1], before[1])
    assert torch.equal(torch.get_rng_state(), before[2])
