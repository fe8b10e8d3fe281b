"""The formulation registry: `@register_formulation` on a Formulation subclass (in its own file)."""

from __future__ import annotations

from typing import Any

from benchmark.labels import MES
from benchmark.registry import Registry

from .base import Formulation


def _adopt(name: str, obj: Any) -> None:
    """An entry point that names a Formulation subclass (not a module that registers its own on import)."""
    if isinstance(obj, type) and issubclass(obj, Formulation):
        FORMULATIONS.register(obj.name, obj)


FORMULATIONS: Registry[type[Formulation]] = Registry("formulation", "mesbench.formulations", _adopt)
FINETUNE_SUFFIXES = {"+f1": "inverse_f1", "+ft": "plain", "+drw": "drw"}


def register_formulation(cls: type[Formulation]) -> type[Formulation]:
    FORMULATIONS.register(cls.name, cls)
    return cls


def formulation_class(name: str) -> type[Formulation]:
    return FORMULATIONS.lookup(name, [f"{n}{s}" for n in FORMULATIONS for s in FINETUNE_SUFFIXES])


def create_formulation(
    name: str,
    options: dict[str, Any] | None = None,
    num_classes: int = MES.k,
    class_names: tuple[str, ...] | None = None,
) -> Formulation:
    """A formulation on a scale of `num_classes` grades (MES's four unless given), with its options."""
    return formulation_class(name)(num_classes, class_names, **(options or {}))


def scaled_formulation(name: str, options: dict[str, Any] | None, scale: Any) -> Formulation:
    """A formulation on a `benchmark.labels.Scale`: its K grades and their names."""
    return create_formulation(name, options, scale.k, tuple(scale.classes))


def reference_formulation() -> str:
    """The registered baseline that reports compare with by default."""
    return next((n for n, cls in FORMULATIONS.items() if cls.is_reference), next(iter(FORMULATIONS)))
