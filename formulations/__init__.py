"""Formulation registry. Adding one = one new file with a @register_formulation class + one import here.

Importing this package does not import torch (see base.py): the report reads decoding rules from here.
"""

from __future__ import annotations

from benchmark.registry import Registry

from .base import Decoded, Formulation, Task

FORMULATIONS: Registry[type[Formulation]] = Registry("formulation")
FINETUNE_SUFFIXES = {"+f1": "inverse_f1", "+ft": "plain"}


def register_formulation(cls: type[Formulation]) -> type[Formulation]:
    return FORMULATIONS.register(cls.name)(cls)


def formulation_class(name: str) -> type[Formulation]:
    return FORMULATIONS.get(name, [f"{n}{s}" for n in FORMULATIONS for s in FINETUNE_SUFFIXES])


def create_formulation(name: str, options: dict | None = None) -> Formulation:
    return formulation_class(name)(**(options or {}))


def reference_formulation() -> str:
    """The registered baseline that reports compare with by default."""
    return next((n for n, cls in FORMULATIONS.items() if cls.is_reference), next(iter(FORMULATIONS)))


# registry entries
from . import softmax, regression, coral, corn, mtl  # noqa: E402,F401

__all__ = ["Decoded", "Formulation", "Task", "FORMULATIONS", "register_formulation", "create_formulation",
           "formulation_class", "reference_formulation"]
