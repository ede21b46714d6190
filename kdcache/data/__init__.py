"""Datasets (original images + fingerprints) and seeded augmented views of them."""

from kdcache.data.datasets import list_datasets, load_dataset
from kdcache.data.source import ArrayDataset, SourceDataset
from kdcache.data.spec import DatasetSpec, normalize
from kdcache.data.views import SeededViews, view_items

__all__ = [
    "ArrayDataset",
    "DatasetSpec",
    "SeededViews",
    "SourceDataset",
    "list_datasets",
    "load_dataset",
    "normalize",
    "view_items",
]
