"""Dataset registry: a name in `dataset.name` -> a loader function (`@register_dataset`, in its module)."""

from __future__ import annotations

from collections.abc import Callable

from ..registry import Registry
from ..suite.schema import DatasetConfig
from .dataset import Dataset

DATASETS: Registry[Callable[[DatasetConfig], Dataset]] = Registry("dataset")


def register_dataset(name):
    return DATASETS.register(name)
