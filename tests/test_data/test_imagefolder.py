"""The imagefolder dataset on a tiny tree of PNG files written by the test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from kdcache.augment import create_recipe
from kdcache.data import load_dataset
from kdcache.errors import ConfigError, DataNotFoundError
from kdcache.views import SeededViews, view_items


def _write_png(path: Path, pixels: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """train/{cat,dog}, val/{cat,dog}: RGB PNGs of several sizes plus one grayscale image."""
    rng = np.random.default_rng(0)
    written: dict[str, np.ndarray] = {}
    layout = {
        "train/cat/a.png": (20, 30),
        "train/cat/b.png": (24, 24),
        "train/dog/c.png": (40, 18),
        "train/dog/sub/d.png": (17, 33),
        "val/cat/e.png": (25, 25),
        "val/dog/f.png": (21, 29),
    }
    for rel, (h, w) in layout.items():
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        _write_png(tmp_path / rel, pixels)
        written[rel] = pixels
    gray = rng.integers(0, 256, (19, 22), dtype=np.uint8)
    _write_png(tmp_path / "train/dog/gray.png", gray)
    written["train/dog/gray.png"] = np.repeat(gray[..., None], 3, axis=-1)
    (tmp_path / "train/cat/notes.txt").write_text("not an image")
    return tmp_path, written


def test_imagefolder_reads_classes_labels_and_exact_pixels(
    tree: tuple[Path, dict[str, np.ndarray]],
) -> None:
    root, written = tree
    data = load_dataset("imagefolder", root, "train", image_size=16)
    assert data.class_names == ("cat", "dog") and data.spec.num_classes == 2
    assert data.relpaths == ["cat/a.png", "cat/b.png", "dog/c.png", "dog/gray.png", "dog/sub/d.png"]
    assert data.labels.tolist() == [0, 0, 1, 1, 1]
    for k, rel in enumerate(data.relpaths):
        image = data.image(k)
        assert image.dtype == torch.uint8 and image.shape[0] == 3
        np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), written[f"train/{rel}"])
    assert data.spec.image_size == 16 and data.spec.mean == (0.485, 0.456, 0.406)


def test_imagefolder_val_split_and_test_alias(tree: tuple[Path, dict[str, np.ndarray]]) -> None:
    root, _ = tree
    val = load_dataset("imagefolder", root, "val")
    alias = load_dataset("imagefolder", root, "test")
    assert len(val) == 2 and val.labels.tolist() == [0, 1] and val.spec.image_size == 224
    assert alias.split == "val" and alias.fingerprint() == val.fingerprint()


def test_imagefolder_fingerprint_tracks_files(tree: tuple[Path, dict[str, np.ndarray]]) -> None:
    root, _ = tree
    before = load_dataset("imagefolder", root, "train").fingerprint()
    assert load_dataset("imagefolder", root, "train").fingerprint() == before
    _write_png(root / "train/cat/z.png", np.zeros((5, 5, 3), dtype=np.uint8))
    assert load_dataset("imagefolder", root, "train").fingerprint() != before


def test_imagefolder_views_batch_with_the_default_collate(
    tree: tuple[Path, dict[str, np.ndarray]],
) -> None:
    root, _ = tree
    data = load_dataset("imagefolder", root, "train", image_size=16)
    for name in ("imagenet", "none", "randaugment"):
        views = SeededViews(data, create_recipe(name, data.spec), 3, view_items([0, 1], len(data)))
        batch = next(iter(torch.utils.data.DataLoader(views, batch_size=10)))
        assert batch["image"].shape == (10, 3, 16, 16), name


def test_eval_transform_resizes_the_short_side_then_centre_crops(
    tree: tuple[Path, dict[str, np.ndarray]],
) -> None:
    import torchvision.transforms.v2.functional as tvf

    root, _ = tree
    data = load_dataset("imagefolder", root, "train", image_size=16)
    image = data.image(0)  # [3, 20, 30]
    expected = tvf.center_crop(tvf.resize(image, [18], antialias=True), [16, 16])  # 18 = 16/0.875
    out = create_recipe("none", data.spec)(image, sample_seed=0, view=0)
    assert torch.equal(out, expected)


def test_missing_imagefolder_split_names_the_layout(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError, match="data_dir/train/<class>"):
        load_dataset("imagefolder", tmp_path, "train")
    with pytest.raises(ConfigError, match="train, val, test"):
        load_dataset("imagefolder", tmp_path, "holdout")


def test_val_class_unknown_to_train_is_refused(tree: tuple[Path, dict[str, np.ndarray]]) -> None:
    root, _ = tree
    _write_png(root / "val/bird/g.png", np.zeros((4, 4, 3), dtype=np.uint8))
    with pytest.raises(ConfigError, match="bird"):
        load_dataset("imagefolder", root, "val")


def test_decoded_images_keep_the_decoders_channels_last_layout(
    tree: tuple[Path, dict[str, np.ndarray]],
) -> None:
    """No transposed copy per image: torch resizes this layout ~2.5x faster (the crop's cost)."""
    root, _ = tree
    data = load_dataset("imagefolder", root, "train", image_size=16)
    image = data.image(0)  # [3, 20, 30]
    assert image.stride() == (1, 30 * 3, 3)  # a [20, 30, 3] array seen as [3, 20, 30]


@pytest.mark.parametrize("name", ["imagenet", "none", "randaugment"])
def test_views_have_the_same_bytes_whatever_the_decoded_layout(
    tree: tuple[Path, dict[str, np.ndarray]], name: str
) -> None:
    """The recipes' output (and so every input hash) does not depend on the image's strides."""
    root, _ = tree
    data = load_dataset("imagefolder", root, "train", image_size=16)
    params = {"scale": (0.01, 0.05)} if name == "imagenet" else {}  # also tiny crops, upscaled
    recipe = create_recipe(name, data.spec, **params)
    for k in range(len(data)):
        for seed in range(8):
            image = data.image(k)
            a = recipe(image, sample_seed=seed, view=0)
            b = recipe(image.contiguous(), sample_seed=seed, view=0)
            assert a.is_contiguous() and torch.equal(a, b), (name, k, seed)
