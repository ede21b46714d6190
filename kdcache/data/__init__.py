"""Datasets: original images, labels and fingerprints (the views of them: :mod:`kdcache.views`)."""

from kdcache.data.datasets import list_datasets, load_dataset
from kdcache.data.source import ArrayDataset, SourceDataset
from kdcache.data.spec import DatasetSpec, normalize

__all__ = [
    "ArrayDataset",
    "DatasetSpec",
    "SourceDataset",
    "list_datasets",
    "load_dataset",
    "normalize",
]
