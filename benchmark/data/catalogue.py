"""Every registered dataset, and loading one by the suite's `dataset.name`. Adding a dataset = a module with
a `@register_dataset` loader + one import line here."""

from __future__ import annotations

from ..suite.schema import DatasetConfig
from . import files, limuc, synthetic  # noqa: F401 - registry entries
from .dataset import Dataset
from .registry import DATASETS


def load_dataset(cfg: DatasetConfig, every_grade: bool = True) -> Dataset:
    """The dataset, checked (its loader checks labels and ids); `every_grade`: a training set needs images of every
    grade, an external test set (False) may lack some."""
    ds = DATASETS.lookup(cfg.name)(cfg)
    if every_grade:
        ds.check_every_grade(f"dataset {cfg.name!r}" + (f" at {cfg.root}" if cfg.root else ""))
    return ds
