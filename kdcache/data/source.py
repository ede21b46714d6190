"""Source datasets: labelled original images, no augmentation, with a content fingerprint.

A :class:`SourceDataset` is the input of every augmentation recipe. It exposes the original uint8
image of sample ``i`` and the fingerprint that a cache records to refuse other data later.

Fingerprint (``docs/cache-format.md`` §Dataset fingerprint)::

    sha256( b"kdcache-dataset-v1\\n"
            + json.dumps({"name", "split", "n", "classes", "identity"}, sort_keys=True,
                         separators=(",", ":")).encode() + b"\\n"
            + labels as little-endian int64 [N]
            + identity bytes )

where ``identity`` names what the identity bytes are: ``"pixels-u8:N,C,H,W"`` (the raw C-contiguous
uint8 pixels ``[N, C, H, W]``; for CIFAR exactly the pixel block of the official pickles) or
``"files"`` (per sample ``"<relative posix path>\\t<size in bytes>\\n"`` in sample order).
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Iterator

import numpy as np
import torch

from kdcache.data.spec import DatasetSpec

FINGERPRINT_DOMAIN = b"kdcache-dataset-v1\n"


class SourceDataset(ABC):
    """Original images and labels of one split of one dataset.

    Attributes:
        spec: the dataset's static description.
        split: the split name as recorded in caches (e.g. ``train``, ``test``, ``val``).
        labels: int64 ``[N]`` class indices in ``[0, spec.num_classes)``.
        class_names: one name per class, index order.
    """

    spec: DatasetSpec
    split: str
    labels: np.ndarray  # int64 [N]
    class_names: tuple[str, ...]

    def __init__(
        self, spec: DatasetSpec, split: str, labels: np.ndarray, class_names: tuple[str, ...]
    ) -> None:
        self.spec = spec
        self.split = split
        self.labels = np.ascontiguousarray(labels, dtype=np.int64)  # [N]
        self.class_names = tuple(class_names)
        self._fingerprint: str | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec.name!r}, split={self.split!r}, n={len(self)})"

    @abstractmethod
    def image(self, index: int) -> torch.Tensor:
        """The original image of sample ``index``: uint8 ``[C, H, W]``, a fresh tensor."""

    def images_array(self) -> np.ndarray | None:
        """Every image as one uint8 array ``[N, C, H, W]`` when the split is held in memory with
        one image shape; None when images are read on access (image folders).

        A read-only view, no copy: the device-resident views copy it once, which per-item
        :meth:`image` calls (a copy each) would make N times slower.
        """
        return None

    @abstractmethod
    def _identity(self) -> tuple[str, Iterator[bytes | memoryview]]:
        """(kind, byte chunks) identifying the samples themselves, in sample order."""

    def fingerprint(self) -> str:
        """sha256 hex of name, split, N, classes, labels and sample identities (cached)."""
        if self._fingerprint is None:
            kind, chunks = self._identity()
            header = {
                "name": self.spec.name,
                "split": self.split,
                "n": len(self),
                "classes": list(self.class_names),
                "identity": kind,
            }
            digest = hashlib.sha256(FINGERPRINT_DOMAIN)
            digest.update(json.dumps(header, sort_keys=True, separators=(",", ":")).encode())
            digest.update(b"\n")
            digest.update(self.labels.astype("<i8", copy=False).tobytes())
            for chunk in chunks:
                digest.update(chunk)
            self._fingerprint = digest.hexdigest()
        return self._fingerprint


class ArrayDataset(SourceDataset):
    """A split held in memory as one uint8 array ``[N, C, H, W]`` (CIFAR, digits)."""

    def __init__(
        self,
        spec: DatasetSpec,
        split: str,
        pixels: np.ndarray,
        labels: np.ndarray,
        class_names: tuple[str, ...],
    ) -> None:
        super().__init__(spec, split, labels, class_names)
        if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[0] != len(self):
            raise ValueError(
                f"pixels must be uint8 [N, C, H, W] with N={len(self)}, "
                f"got {pixels.dtype} {pixels.shape}"
            )
        self.pixels = np.ascontiguousarray(pixels)  # [N, C, H, W]

    def image(self, index: int) -> torch.Tensor:
        # A copy: recipes may work in place, and the dataset must stay pristine.
        return torch.from_numpy(self.pixels[index].copy())  # [C, H, W]

    def images_array(self) -> np.ndarray:
        view = self.pixels.view()  # [N, C, H, W], sharing the buffer
        view.flags.writeable = False  # the dataset must stay pristine
        return view

    def _identity(self) -> tuple[str, Iterator[bytes | memoryview]]:
        shape = ",".join(str(d) for d in self.pixels.shape)
        # hashlib reads the buffer directly: no 150 MB copy for CIFAR.
        return f"pixels-u8:{shape}", iter([self.pixels.data.cast("B")])
