"""The dataset registry: ``load_dataset(name, data_dir, split)`` and ``list_datasets()``.

==============  ===================================================  ============  ===========
name            files                                                splits        image size
==============  ===================================================  ============  ===========
``cifar10``     ``data_dir/cifar-10-batches-py/`` (torchvision)      train, test   32
``cifar100``    ``data_dir/cifar-100-python/{train,test,meta}``      train, test   32
``imagefolder`` ``data_dir/{train,val}/<class>/*.jpg``               train, val    224
``digits``      bundled with scikit-learn (``data_dir`` is ignored)  train, test   8
==============  ===================================================  ============  ===========
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from kdcache.data.imagefolder import load_imagefolder
from kdcache.data.source import ArrayDataset, SourceDataset
from kdcache.data.spec import DatasetSpec
from kdcache.errors import ConfigError, DataNotFoundError, UnknownNameError

if TYPE_CHECKING:  # torchvision's datasets load lazily (only the CIFAR loaders need them)
    import torchvision.datasets

logger = logging.getLogger(__name__)

CIFAR10 = DatasetSpec(
    "cifar10", 10, 3, mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616), image_size=32
)
CIFAR100 = DatasetSpec(
    "cifar100", 100, 3, mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762), image_size=32
)
# Mean/std (population) of the train split's pixels / 255, all 1438 x 64 values, to 4 digits:
#   d = load_dataset("digits", None, "train"); x = d.pixels / 255; x.mean(), x.std()
DIGITS = DatasetSpec("digits", 10, 1, mean=(0.3053,), std=(0.3758,), image_size=8)

# (torchvision class name, folder, files) per CIFAR variant; files are what torchvision checks.
_CIFAR_FILES = {
    "cifar10": (
        "CIFAR10",
        "cifar-10-batches-py",
        ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5"),
        ("test_batch",),
        "batches.meta",
    ),
    "cifar100": ("CIFAR100", "cifar-100-python", ("train",), ("test",), "meta"),
}


def _load_cifar(
    spec: DatasetSpec, data_dir: Path | None, split: str, download: bool
) -> ArrayDataset:
    import torchvision.datasets

    tv_name, folder, train_files, test_files, meta = _CIFAR_FILES[spec.name]
    if data_dir is None:
        raise ConfigError(f"{spec.name} needs a data directory (`data_dir`)")
    split_files = train_files if split == "train" else test_files
    # Only the split that is read (and the class names) must be there: a test-only copy serves.
    expected = [data_dir / folder / f for f in (*split_files, meta)]
    missing = [p for p in expected if not p.is_file()]
    if missing and not download:
        hint = (
            f"point `data_dir` at the folder that contains {folder}/"
            if data_dir.name != folder
            else f"point `data_dir` at {data_dir.parent} (the folder that contains {folder}/)"
        )
        raise DataNotFoundError(
            f"{spec.name} not found: expected {', '.join(str(p) for p in missing)} "
            f"(torchvision's layout {data_dir}/{folder}/). Pass `download` to fetch it, or {hint}"
        )
    try:
        tv = _split_only(getattr(torchvision.datasets, tv_name), split, download)(
            root=str(data_dir), train=split == "train", download=download
        )
    except RuntimeError as exc:  # torchvision's md5 check failed
        raise DataNotFoundError(
            f"{spec.name} files under {data_dir / folder} are corrupt or incomplete "
            f"(torchvision: {exc}); delete them and pass `download`, or fix `data_dir`"
        ) from exc
    # torchvision holds an [N, H, W, C] view of the pickles' [N, C, H, W] block; undo the view.
    pixels = np.ascontiguousarray(tv.data.transpose(0, 3, 1, 2))  # [N, 3, 32, 32]
    labels = np.asarray(tv.targets, dtype=np.int64)  # [N]
    return ArrayDataset(spec, split, pixels, labels, tuple(tv.classes))


def _split_only(
    cls: type[torchvision.datasets.CIFAR10], split: str, download: bool
) -> type[torchvision.datasets.CIFAR10]:
    """torchvision's CIFAR class, md5-checking only the files of ``split``.

    torchvision checks every file of both splits before reading one; a folder holding only the
    test batch (enough for ``eval``/``extract --split test``) would be refused as corrupt. With
    ``download`` the full check stays, so an incomplete folder is fetched whole.
    """
    if download:
        return cls
    keep_train = split == "train"
    return type(
        cls.__name__,
        (cls,),
        {
            "train_list": cls.train_list if keep_train else [],
            "test_list": [] if keep_train else cls.test_list,
        },
    )


DIGITS_SPLIT_DOMAIN = b"kdcache-digits-split-v1"


def digits_split_indices(n: int, split: str) -> np.ndarray:
    """Indices of ``split`` in scikit-learn's digits, ascending.

    The test split is the ``n // 5`` samples (359 of 1797) with the smallest key
    ``sha256(DIGITS_SPLIT_DOMAIN + i.to_bytes(8, "little"))``, a fixed pseudo-random 20% that
    depends on no RNG implementation; train is the rest.
    """
    keys = [
        hashlib.sha256(DIGITS_SPLIT_DOMAIN + i.to_bytes(8, "little")).digest() for i in range(n)
    ]
    test = np.zeros(n, dtype=bool)
    test[sorted(range(n), key=keys.__getitem__)[: n // 5]] = True
    return np.flatnonzero(test if split == "test" else ~test).astype(np.int64)


def _load_digits(
    spec: DatasetSpec, data_dir: Path | None, split: str, download: bool
) -> ArrayDataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    raw = np.asarray(bunch.images).round().astype(np.int64)  # [1797, 8, 8], integers 0..16
    # 0..16 -> 0..255: round(x * 255 / 16) with halves rounded up, in exact integer arithmetic.
    pixels = ((raw * 255 + 8) // 16).astype(np.uint8)[:, None]  # [1797, 1, 8, 8]
    index = digits_split_indices(len(raw), split)
    names = tuple(str(t) for t in bunch.target_names)
    return ArrayDataset(spec, split, pixels[index], np.asarray(bunch.target)[index], names)


def _load_imagefolder(
    data_dir: Path | None, split: str, download: bool, image_size: int | None
) -> SourceDataset:
    if data_dir is None:
        raise ConfigError("imagefolder needs a data directory (`data_dir`)")
    if download:
        raise ConfigError("imagefolder cannot be downloaded; drop `download`")
    return load_imagefolder(data_dir, split, image_size=image_size)


_STATIC = {"cifar10": CIFAR10, "cifar100": CIFAR100, "digits": DIGITS}
_LOADERS: dict[str, Callable[[DatasetSpec, Path | None, str, bool], SourceDataset]] = {
    "cifar10": _load_cifar,
    "cifar100": _load_cifar,
    "digits": _load_digits,
}


def list_datasets() -> list[str]:
    """Names accepted by :func:`load_dataset`."""
    return sorted([*_LOADERS, "imagefolder"])


def load_dataset(
    name: str,
    data_dir: str | Path | None,
    split: str,
    download: bool = False,
    *,
    image_size: int | None = None,
) -> SourceDataset:
    """Load one split of a dataset (original images, no augmentation).

    Args:
        name: one of :func:`list_datasets`.
        data_dir: the folder holding the dataset's files (ignored by ``digits``).
        split: ``train`` or the evaluation split (``test``; ``val`` for imagefolder).
        download: let torchvision fetch CIFAR when missing (never done implicitly).
        image_size: evaluation size S for ``imagefolder`` (default 224); other datasets have a
            fixed size and accept only that value.
    """
    path = None if data_dir is None else Path(data_dir).expanduser()
    if name == "imagefolder":
        return _load_imagefolder(path, split, download, image_size)
    if name not in _LOADERS:
        choices = ", ".join(list_datasets())
        raise UnknownNameError(f"unknown dataset {name!r}; choose one of {choices}")
    spec = _STATIC[name]
    if split not in spec.splits:
        raise ConfigError(f"{name} has splits {', '.join(spec.splits)}; got {split!r}")
    if image_size is not None and image_size != spec.image_size:
        raise ConfigError(f"{name} images are {spec.image_size}px; image_size={image_size} given")
    dataset = _LOADERS[name](spec, path, split, download)
    logger.info("loaded %r", dataset)
    return dataset
