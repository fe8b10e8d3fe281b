"""Formulations: one file each, registered with @register_formulation. Adding one = its file + one import
line below.

Importing this package does not import torch (see base.py): the report reads decoding rules from here.
"""

from . import (  # noqa: F401 - registry entries
    cdw_ce,
    clm,
    coral,
    corn,
    ecoc,
    emd,
    focal,
    logit_adjusted,
    mtl,
    regression,
    soft_labels,
    softmax,
    sord,
    wk,
)
from .base import Decoded, Formulation, Task
from .registry import (
    FINETUNE_SUFFIXES,
    FORMULATIONS,
    create_formulation,
    formulation_class,
    reference_formulation,
    register_formulation,
    scaled_formulation,
)

__all__ = [
    "Decoded",
    "Formulation",
    "Task",
    "FORMULATIONS",
    "FINETUNE_SUFFIXES",
    "register_formulation",
    "create_formulation",
    "scaled_formulation",
    "formulation_class",
    "reference_formulation",
]
