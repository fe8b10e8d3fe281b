"""Dataset registry: a name in `dataset.name` -> a loader function (`@register_dataset`)."""

from __future__ import annotations

from typing import Callable

from ..registry import Registry
from ..suite.schema import DatasetConfig
from .dataset import Dataset


def _load_entries():
    from . import files, limuc, synthetic  # noqa: F401 - their decorators register the datasets


DATASETS: Registry[Callable[[DatasetConfig], Dataset]] = Registry("dataset", _load_entries)


def register_dataset(name):
    return DATASETS.register(name)


def load_dataset(cfg: DatasetConfig) -> Dataset:
    return DATASETS.get(cfg.name)(cfg)
