"""The label space every layer shares: an ordinal scale of K grades, MES 0..3 unless the data says otherwise.

A `Scale` is data (its grades' names, where its clinically meaningful binary split lies), so a new scale is a new
value, never an edit of the modules that read it. The constants below are MES's, the default scale.
"""

from __future__ import annotations

from dataclasses import dataclass

NUM_CLASSES = 4
GRADES = tuple(range(NUM_CLASSES))
CLASS_NAMES = tuple(f"MES {k}" for k in GRADES)
PROBA_COLUMNS = tuple(f"p{k}" for k in GRADES)  # per-image class probabilities in the results store


@dataclass(frozen=True)
class Scale:
    """K ordered grades. `binary_cut`: grades at or above it form the positive class of the binary task (MES:
    remission 0–1 vs active 2–3, cut 2), named `binary_names`; None: the scale has no such split, and the
    binary metrics are absent."""

    name: str = "MES"
    classes: tuple[str, ...] = CLASS_NAMES
    binary_cut: int | None = 2
    binary_names: tuple[str, str] = ("remission (MES 0–1)", "active (MES 2–3)")

    def __post_init__(self) -> None:
        if len(self.classes) < 2:
            raise ValueError(f"scale {self.name!r}: at least two grades (got {list(self.classes)})")
        if self.binary_cut is not None and not 0 < self.binary_cut < len(self.classes):
            raise ValueError(
                f"scale {self.name!r}: binary_cut {self.binary_cut} must split the grades 0..{len(self.classes) - 1} "
                "in two (1 ≤ cut ≤ K − 1), or be null"
            )

    @property
    def k(self) -> int:
        return len(self.classes)

    @property
    def grades(self) -> tuple[int, ...]:
        return tuple(range(self.k))


MES = Scale()
