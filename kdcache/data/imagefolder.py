"""Image files in class folders (the ImageNet / Tiny-ImageNet layout), decoded with Pillow.

Layout::

    data_dir/train/<class name>/**/<image>.{jpg,jpeg,png,ppm,bmp,pgm,tif,tiff,webp}
    data_dir/val/<class name>/**/<image>...

Classes are the sorted folder names of ``data_dir/train`` (of the split's own folder when there is
no ``train``), so train and val agree on class indices even when val lacks a class. Samples are
ordered by their relative posix path, like torchvision's ``ImageFolder``. Split ``test`` reads
``data_dir/test`` if it exists and otherwise falls back to ``val`` (recorded as ``val``).
Tiny-ImageNet's raw ``val/images`` + ``val_annotations.txt`` must first be moved into class
folders.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from kdcache.data.source import SourceDataset
from kdcache.data.spec import DatasetSpec
from kdcache.errors import ConfigError, CorruptImageError, DataNotFoundError

logger = logging.getLogger(__name__)

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageFolderDataset(SourceDataset):
    """One split of an image-folder tree; images decoded to RGB uint8 ``[3, H, W]`` on access."""

    def __init__(
        self,
        spec: DatasetSpec,
        split: str,
        root: Path,
        relpaths: list[str],
        sizes: list[int],
        labels: np.ndarray,
        class_names: tuple[str, ...],
    ) -> None:
        super().__init__(spec, split, labels, class_names)
        self.root = root
        self.relpaths = relpaths
        self.sizes = sizes

    def image(self, index: int) -> torch.Tensor:
        """Decoded as torchvision's ``ImageFolder`` does (PIL ``convert("RGB")``: grey, CMYK,
        palette and RGBA images become RGB). A file that does not decode raises
        :class:`CorruptImageError` naming it, also from inside a DataLoader worker."""
        from PIL import Image, UnidentifiedImageError

        path = self.root / self.relpaths[index]
        try:
            with Image.open(path) as img:
                rgb = np.asarray(img.convert("RGB"))  # [H, W, 3]
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
            raise CorruptImageError(
                f"cannot decode image {path} (sample {index}): {exc}. Replace or remove the file; "
                "already written cache blocks are kept and a re-run resumes"
            ) from exc
        # [3, H, W] with channels-last strides: a view of the decoded [H, W, 3] array, not a
        # transposed copy. Resizing takes torch's uint8 AVX path on this layout about 2.5x faster
        # than on a contiguous [3, H, W] one, to the same bytes (the `imagenet` recipe's crop).
        return torch.from_numpy(rgb.copy()).permute(2, 0, 1)

    def _identity(self) -> tuple[str, Iterator[bytes | memoryview]]:
        # Paths and sizes, not pixels: hashing a decoded ImageNet would take an hour.
        return "files", (
            f"{path}\t{size}\n".encode()
            for path, size in zip(self.relpaths, self.sizes, strict=True)
        )


def _class_dirs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _scan(folder: Path, class_index: dict[str, int]) -> tuple[list[str], list[int], list[int]]:
    """(relative posix paths, sizes, labels) of the images under the class folders of ``folder``.

    ``os.walk(followlinks=True)`` as torchvision does, so symlinked class folders and trees work;
    ``os.scandir`` entries give the file type for free, so each image costs one ``stat`` (its
    size, for the fingerprint) and nothing is decoded.
    """
    relpaths: list[str] = []
    sizes: list[int] = []
    labels: list[int] = []
    for name, label in class_index.items():
        top = folder / name
        if not top.is_dir():
            continue  # a class absent from this split
        for dirpath, dirnames, _ in os.walk(top, followlinks=True):
            dirnames.sort()
            rel_dir = Path(dirpath).relative_to(folder).as_posix()
            with os.scandir(dirpath) as entries:
                for entry in entries:
                    ext = os.path.splitext(entry.name)[1].lower()
                    if ext not in IMG_EXTENSIONS or not entry.is_file():
                        continue
                    relpaths.append(f"{rel_dir}/{entry.name}")
                    sizes.append(entry.stat().st_size)
                    labels.append(label)
    return relpaths, sizes, labels


def load_imagefolder(
    data_dir: Path, split: str, *, image_size: int | None = None
) -> ImageFolderDataset:
    """Scan ``data_dir/<split>`` into an :class:`ImageFolderDataset` (no image is decoded)."""
    if split not in ("train", "val", "test"):
        raise ConfigError(f"imagefolder split must be one of train, val, test; got {split!r}")
    folder = data_dir / split
    if split == "test" and not folder.is_dir() and (data_dir / "val").is_dir():
        logger.info("imagefolder: no %s, using %s as the test split", folder, data_dir / "val")
        split, folder = "val", data_dir / "val"
    if not folder.is_dir():
        raise DataNotFoundError(
            f"imagefolder expects class folders under {folder} (layout "
            f"data_dir/train/<class>/*.jpg and data_dir/val/<class>/*.jpg); "
            f"point `data_dir` at the folder that holds 'train' and 'val'"
        )
    class_root = data_dir / "train" if (data_dir / "train").is_dir() else folder
    class_names = _class_dirs(class_root)
    if not class_names:
        raise DataNotFoundError(f"imagefolder found no class folders in {class_root}")
    stray = sorted(set(_class_dirs(folder)) - set(class_names))
    if stray:
        raise ConfigError(
            f"imagefolder: {folder} has class folders absent from {class_root}: {stray[:5]}"
        )
    class_index = {name: k for k, name in enumerate(class_names)}
    relpaths, sizes, labels = _scan(folder, class_index)
    if not relpaths:
        raise DataNotFoundError(
            f"imagefolder found no images ({', '.join(IMG_EXTENSIONS)}) in the class folders of "
            f"{folder}"
        )
    # Samples in relative posix path order (docs/cache-format.md §4.2), whatever the walk order.
    order = sorted(range(len(relpaths)), key=relpaths.__getitem__)
    spec = DatasetSpec(
        name="imagefolder",
        num_classes=len(class_names),
        in_chans=3,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        image_size=224 if image_size is None else image_size,
        crop_pct=0.875,
        splits=("train", "val"),
    )
    logger.info("imagefolder %s: %d images, %d classes", folder, len(relpaths), len(class_names))
    return ImageFolderDataset(
        spec,
        split,
        folder,
        [relpaths[k] for k in order],
        [sizes[k] for k in order],
        np.asarray([labels[k] for k in order], dtype=np.int64),
        tuple(class_names),
    )
