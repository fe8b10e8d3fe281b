"""The label space every layer shares: an ordinal scale of K grades, MES 0..3 unless the data says otherwise.

A `Scale` is data (its grades' names, where its clinically meaningful binary split lies), so a new scale is a new
value, never an edit of the modules that read it. `MES` is the default scale (LIMUC's and the study's).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Scale:
    """K ordered grades. `binary_cut`: grades at or above it form the positive class of the binary task (MES:
    remission 0–1 vs active 2–3, cut 2), named `binary_names`; None: the scale has no such split, and the
    binary metrics are absent."""

    name: str = "MES"
    classes: tuple[str, ...] = ("MES 0", "MES 1", "MES 2", "MES 3")
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
        if self.binary_cut is not None and not any(self.binary_names):
            cut, c = self.binary_cut, self.classes
            span = [c[0] if cut == 1 else f"{c[0]}–{c[cut - 1]}", c[cut] if cut == len(c) - 1 else f"{c[cut]}–{c[-1]}"]
            object.__setattr__(self, "binary_names", (f"low ({span[0]})", f"high ({span[1]})"))

    @property
    def k(self) -> int:
        return len(self.classes)

    @property
    def grades(self) -> tuple[int, ...]:
        return tuple(range(self.k))

    @property
    def binary_short(self) -> tuple[str, str]:
        """The binary split's two parts in one word each, as column names use them (MES: remission, active)."""
        low, high = (n.split(" (")[0] for n in self.binary_names)
        return low, high

    @property
    def binary_label(self) -> str:
        """'remission-vs-active' on MES: how tables name the binary task."""
        return "-vs-".join(self.binary_short)

    @property
    def proba_columns(self) -> tuple[str, ...]:
        """The per-image class-probability columns of a predictions frame: p0 … p(K−1)."""
        return tuple(f"p{k}" for k in self.grades)

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "classes": list(self.classes),
            "binary_cut": self.binary_cut,
            "binary_names": list(self.binary_names),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Scale:
        """A stored scale; None (a run written before scales were stored) is MES, the only scale then."""
        if not d:
            return MES
        low, high = d.get("binary_names") or ("", "")
        return cls(d["name"], tuple(d["classes"]), d.get("binary_cut"), (low, high))


MES = Scale()


def scale_of(classes: list[str] | tuple[str, ...], name: str | None = None) -> Scale:
    """The scale of a dataset whose grades are `classes`, in order. Four grades named as MES's or LIMUC's
    folders ('Mayo k') are MES, with its remission/active split; anything else is a scale of its own, named by
    its classes, without a binary split unless the suite's `scale:` gives one."""
    classes = tuple(str(c) for c in classes)
    if classes in (MES.classes, tuple(f"Mayo {k}" for k in MES.grades)) and name in (None, MES.name):
        return MES
    return Scale(name or "grade", classes, None, ("", ""))


def unnamed_grades(k: int) -> tuple[str, ...]:
    """Names for K grades known only by number (manifest labels, synthetic `classes: K`): MES's for four."""
    return MES.classes if k == MES.k else tuple(f"grade {g}" for g in range(k))
