"""Seeded views: a pure function of (seed, view, index), whatever the loader, process or batch."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from kdcache.augment import create_recipe
from kdcache.data import load_dataset
from kdcache.errors import ConfigError
from kdcache.seeding import input_hash, sample_seed
from kdcache.views import SeededViews, view_items

from ._paths import cifar100_dir

REPO = Path(__file__).resolve().parents[2]
RECIPES = ["cifar", "imagenet", "randaugment"]


def _views(recipe: str, seed: int = 7) -> SeededViews:
    digits = load_dataset("digits", None, "train")
    params = {"padding": 2} if recipe == "cifar" else {}
    items = view_items(range(3), range(0, 1438, 37))  # 3 views x 39 samples
    return SeededViews(digits, create_recipe(recipe, digits.spec, **params), seed, items)


def _hashes(loader: torch.utils.data.DataLoader) -> list[int]:
    return [int(h) for batch in loader for h in batch["input_hash"]]


def test_view_items_are_view_major_int64_pairs() -> None:
    items = view_items([0, 5], 3)
    assert items.dtype == np.int64
    assert items.tolist() == [[0, 0], [0, 1], [0, 2], [5, 0], [5, 1], [5, 2]]


def test_item_is_the_recipe_applied_with_the_sample_seed() -> None:
    views = _views("cifar")
    k = 50
    view, index = views.items[k].tolist()
    item = views[k]
    expected = views.recipe(
        views.source.image(index), sample_seed=sample_seed(7, view, index), view=view
    )
    assert torch.equal(item["image"], expected)
    assert item["input_hash"] == input_hash(expected)
    assert (item["view"], item["index"]) == (view, index)
    assert item["label"] == views.source.labels[index]


@pytest.mark.parametrize("recipe", RECIPES)
def test_views_of_one_sample_differ(recipe: str) -> None:
    views = _views(recipe)
    n = len(views) // 3
    differing = sum(views[k]["input_hash"] != views[k + n]["input_hash"] for k in range(n))
    assert differing >= n * 0.8


@pytest.mark.parametrize("recipe", RECIPES)
def test_hashes_do_not_depend_on_workers_or_batch_size(recipe: str) -> None:
    views = _views(recipe)
    serial = _hashes(torch.utils.data.DataLoader(views, batch_size=7, num_workers=0))
    parallel = _hashes(torch.utils.data.DataLoader(views, batch_size=64, num_workers=2))
    assert serial == parallel == [views[k]["input_hash"] for k in range(len(views))]


@pytest.mark.slow
def test_spawned_workers_replay_the_same_images() -> None:
    views = _views("randaugment")
    loader = torch.utils.data.DataLoader(
        views, batch_size=64, num_workers=2, multiprocessing_context="spawn"
    )
    images = torch.cat([batch["image"] for batch in loader])
    assert torch.equal(images, torch.stack([views[k]["image"] for k in range(len(views))]))


def test_reversed_order_gives_the_same_item_per_pair() -> None:
    views = _views("imagenet")
    backwards = SeededViews(views.source, views.recipe, views.cache_seed, views.items[::-1].copy())
    assert [backwards[k]["input_hash"] for k in range(len(views))][::-1] == [
        views[k]["input_hash"] for k in range(len(views))
    ]


def test_another_cache_seed_gives_other_images() -> None:
    a, b = _views("cifar", seed=7), _views("cifar", seed=8)
    assert [a[k]["input_hash"] for k in range(20)] != [b[k]["input_hash"] for k in range(20)]


def test_a_fresh_process_computes_the_same_hashes() -> None:
    script = (
        "import json\n"
        "from tests.test_data.test_views import RECIPES, _views\n"
        "print(json.dumps({r: [_views(r)[k]['input_hash'] for k in range(0, 117, 5)]"
        " for r in RECIPES}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env["OMP_NUM_THREADS"] = "1"  # beside a busy pytest-xdist worker, 2 threads only contend
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    fresh = json.loads(result.stdout.strip().splitlines()[-1])
    here = {r: [_views(r)[k]["input_hash"] for k in range(0, 117, 5)] for r in RECIPES}
    assert fresh == here


def test_views_pickle_round_trip() -> None:
    views = _views("randaugment")
    clone = pickle.loads(pickle.dumps(views))
    assert [clone[k]["input_hash"] for k in range(10)] == [
        views[k]["input_hash"] for k in range(10)
    ]


def test_bad_items_are_refused() -> None:
    digits = load_dataset("digits", None, "train")
    recipe = create_recipe("cifar", digits.spec, padding=1, exhaustive=True)  # 18 views
    with pytest.raises(ConfigError, match="outside"):
        SeededViews(digits, recipe, 0, np.array([[0, 1438]]))
    with pytest.raises(ConfigError, match="0..17"):
        SeededViews(digits, recipe, 0, np.array([[18, 0]]))
    with pytest.raises(ValueError, match=r"\[M, 2\]"):
        SeededViews(digits, recipe, 0, np.array([0, 1]))


@pytest.mark.realdata
def test_cifar100_exhaustive_views_of_one_image_are_distinct_and_batch() -> None:
    train = load_dataset("cifar100", cifar100_dir(), "train")
    recipe = create_recipe("cifar", train.spec, exhaustive=True)
    views = SeededViews(train, recipe, 0, view_items(range(162), [0]))
    batch = next(iter(torch.utils.data.DataLoader(views, batch_size=162)))
    assert batch["image"].shape == (162, 3, 32, 32)
    assert len(set(batch["input_hash"].tolist())) == 162
    assert batch["label"].dtype == torch.int64 and set(batch["label"].tolist()) == {19}
