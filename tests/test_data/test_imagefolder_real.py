"""imagefolder on JPEG trees built at test time from real CIFAR-100 images: odd image kinds,
corrupt files, symlinks, 1000 classes."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from kdcache.cache.reader import open_cache
from kdcache.cli import main
from kdcache.data import load_dataset
from kdcache.errors import CorruptImageError
from tests.test_data._paths import cifar100_dir


@pytest.fixture(scope="module")
def cifar_images() -> np.ndarray:
    """The first 1000 CIFAR-100 test images, uint8 [1000, 32, 32, 3]."""
    with (cifar100_dir() / "cifar-100-python" / "test").open("rb") as f:
        data = pickle.load(f, encoding="latin1")["data"][:1000]
    return np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def jpeg_tree(root: Path, images: np.ndarray, classes: int, size: int = 64) -> Path:
    """``root/train/c{k:04d}/{i:05d}.jpg``: image i upscaled to size x size, class i % classes."""
    from PIL import Image

    for i, pixels in enumerate(images):
        path = root / "train" / f"c{i % classes:04d}" / f"{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).resize((size, size), Image.BICUBIC).save(path, quality=90)
    return root


def odd_images(folder: Path, pixels: np.ndarray) -> None:
    """Grey, grey+alpha, CMYK JPEG, palette (with transparency), RGBA and 16-bit grey files."""
    from PIL import Image

    rgb = Image.fromarray(pixels)
    folder.mkdir(parents=True, exist_ok=True)
    rgb.convert("L").save(folder / "grey.jpg")
    rgb.convert("LA").save(folder / "grey_alpha.png")
    rgb.convert("CMYK").save(folder / "cmyk.jpg")
    palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.save(folder / "palette.png", transparency=0)
    rgba = rgb.convert("RGBA")
    rgba.putalpha(Image.fromarray((pixels[..., 0] > 128).astype(np.uint8) * 255))
    rgba.save(folder / "rgba.png")
    Image.fromarray(pixels[..., 0].astype(np.uint16) * 257).save(folder / "grey16.png")


def test_odd_image_kinds_decode_as_torchvisions_imagefolder(tmp_path, cifar_images) -> None:
    from torchvision.datasets import ImageFolder

    for k in range(2):
        odd_images(tmp_path / "train" / f"class{k}", cifar_images[k])
    ours = load_dataset("imagefolder", tmp_path, "train")
    theirs = ImageFolder(str(tmp_path / "train"))
    assert ours.class_names == tuple(theirs.classes)
    by_path = {Path(p).relative_to(tmp_path / "train").as_posix(): k for k, (p, _) in
               enumerate(theirs.samples)}  # fmt: skip
    assert sorted(by_path) == sorted(ours.relpaths) and len(ours) == 12
    for k, rel in enumerate(ours.relpaths):
        image, label = theirs[by_path[rel]]
        expected = torch.from_numpy(np.array(image)).permute(2, 0, 1)
        assert torch.equal(ours.image(k), expected), rel
        assert int(ours.labels[k]) == label


def test_a_tree_with_1000_classes_scans_like_torchvision(tmp_path, cifar_images) -> None:
    from torchvision.datasets import ImageFolder

    jpeg_tree(tmp_path, cifar_images, classes=1000, size=8)
    data = load_dataset("imagefolder", tmp_path, "train")
    theirs = ImageFolder(str(tmp_path / "train"))
    assert data.spec.num_classes == 1000 and len(data) == 1000
    assert data.class_names == tuple(theirs.classes)
    assert data.labels.tolist() == theirs.targets
    assert data.image(999).shape == (3, 8, 8)


def test_symlinked_trees_and_class_folders_read_as_the_real_one(tmp_path, cifar_images) -> None:
    real = jpeg_tree(tmp_path / "real", cifar_images[:12], classes=3, size=16)
    linked = tmp_path / "linked"
    (linked / "train").mkdir(parents=True)
    for name in ("c0000", "c0001"):  # class folders as symlinks
        (linked / "train" / name).symlink_to(real / "train" / name, target_is_directory=True)
    (linked / "train" / "c0002").mkdir()  # a real folder of symlinked files
    for f in sorted((real / "train" / "c0002").iterdir()):
        (linked / "train" / "c0002" / f.name).symlink_to(f)
    whole = tmp_path / "whole"
    whole.mkdir()
    (whole / "train").symlink_to(real / "train", target_is_directory=True)  # the split itself
    a = load_dataset("imagefolder", real, "train")
    for other in (load_dataset("imagefolder", linked, "train"),
                  load_dataset("imagefolder", whole, "train")):  # fmt: skip
        assert other.relpaths == a.relpaths and other.fingerprint() == a.fingerprint()
        assert torch.equal(other.image(11), a.image(11))


def test_a_truncated_jpeg_is_named_by_a_worker_and_exits_1(tmp_path, cifar_images) -> None:
    root = jpeg_tree(tmp_path, cifar_images[:24], classes=2, size=32)
    data = load_dataset("imagefolder", root, "train")
    bad = root / "train" / data.relpaths[20]
    bad.write_bytes(bad.read_bytes()[:300])
    with pytest.raises(CorruptImageError, match=f"cannot decode image {bad}"):
        data.image(20)
    args = [*_extract_args(tmp_path, root), "--workers", 1]
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: cannot decode image {bad} (sample 20)")
    assert "Traceback" not in result.output and "DataLoader worker" not in result.output


def test_a_corrupt_file_leaves_a_cache_that_resumes_once_it_is_fixed(tmp_path, cifar_images):
    root = jpeg_tree(tmp_path, cifar_images[:24], classes=2, size=32)
    data = load_dataset("imagefolder", root, "train")
    bad = root / "train" / data.relpaths[20]
    good = bad.read_bytes()
    bad.write_bytes(b"\0" * len(good))  # same size: the dataset's identity is unchanged
    args = [*_extract_args(tmp_path, root), "--workers", 0]
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 1 and str(bad) in result.output
    assert open_cache(str(tmp_path / "cache")).done_mask()[0].tolist() == [True, True, False]
    bad.write_bytes(good)
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    assert "wrote 1 blocks (8 images)" in result.output
    assert open_cache(str(tmp_path / "cache")).done_mask().all()


TINY_MODEL = """
from torch import nn

def tiny(num_classes, in_chans):
    return nn.Sequential(nn.Conv2d(in_chans, 4, 16, stride=16), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, num_classes))
"""


def _extract_args(tmp: Path, root: Path) -> list[object]:
    """Extract with a tiny seeded model (224 x 224 views) in 3 blocks of 8 rows."""
    (tmp / "tiny.py").write_text(TINY_MODEL)
    spec = f"{tmp / 'tiny.py'}:tiny"
    from kdcache.models import build_model

    torch.manual_seed(0)
    torch.save(build_model(spec, 2).state_dict(), tmp / "tiny.pth")
    return ["extract", "--teacher", spec, "--weights", tmp / "tiny.pth", "--dataset", "imagefolder",
            "--data-dir", root, "--recipe", "none", "--chunk-rows", 8, "--batch-size", 4,
            "--out", tmp / "cache", "--no-progress"]  # fmt: skip
