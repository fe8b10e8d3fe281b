"""Every registered dataset, and loading one by the suite's `dataset.name`. Adding a dataset = a module with
a `@register_dataset` loader + one import line here."""

from __future__ import annotations

from ..suite.schema import DatasetConfig
from . import files, limuc, synthetic  # noqa: F401 - registry entries
from .dataset import Dataset
from .registry import DATASETS


def load_dataset(cfg: DatasetConfig) -> Dataset:
    return DATASETS.lookup(cfg.name)(cfg)
