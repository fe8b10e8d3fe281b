"""Formulation registry. Adding one = one new file with a @register_formulation class + one import here.

Importing this package does not import torch (see base.py): the report reads decoding rules from here.
"""

from __future__ import annotations

from benchmark.errors import unknown

from .base import Decoded, Formulation, Task

FORMULATIONS: dict[str, type[Formulation]] = {}
FINETUNE_SUFFIXES = {"+f1": "inverse_f1", "+ft": "plain"}


def register_formulation(cls: type[Formulation]) -> type[Formulation]:
    FORMULATIONS[cls.name] = cls
    return cls


def create_formulation(name: str, options: dict | None = None) -> Formulation:
    if name not in FORMULATIONS:
        raise unknown("formulation", name, list(FORMULATIONS) + [f"{n}{s}" for n in FORMULATIONS
                                                                 for s in FINETUNE_SUFFIXES])
    return FORMULATIONS[name](**(options or {}))


# registry entries
from . import softmax, regression, coral, corn, mtl  # noqa: E402,F401

__all__ = ["Decoded", "Formulation", "Task", "FORMULATIONS", "register_formulation", "create_formulation"]
