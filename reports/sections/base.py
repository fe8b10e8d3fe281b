"""The section interface: a kind of report section is a function registered under the name views use for it.

A section reads the loaded run (and what other sections share through the `Context`, read once) and adds its
tables and its figures to the report; `render.build` calls the sections a view names, in the view's order, and
knows none of them by name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from benchmark.errors import BenchError
from benchmark.registry import Registry

from ..load import Run
from ..table import Options, Table

if TYPE_CHECKING:
    import pandas as pd

    from ..calibration import CalibrationData

NEEDS = {"test": "the held-out test predictions (left out of a report built without them)"}


@dataclass
class Context:
    """A report under construction: the run, the tables and figures added so far, and what sections share."""

    run: Run
    with_test: bool  # False: a report that must not read the test predictions (the tuner's, `bench check`'s)
    kinds: set[str]  # the section kinds the view names
    tables: list[Table] = field(default_factory=list)
    figures: list[tuple[str, Callable[[], bytes | None]]] = field(default_factory=list)
    shared: dict[str, Any] = field(default_factory=dict)  # what one section computed and another reuses

    def has(self, need: str) -> bool:
        """Whether this report may read what NEEDS names."""
        return need != "test" or self.with_test

    def table(self, table: Table | None, title: str | None = None) -> None:
        """Add a table (None: the section has nothing to show for this run); `title`: a view's own."""
        if table is not None:
            if title:
                table.title = title
            self.tables.append(table)

    def figure(self, name: str, draw: Callable[[], bytes | None]) -> None:
        """Add a figure, drawn only when a format shows figures."""
        self.figures.append((name, draw))

    def once(self, name: str, make: Callable[[], Any]) -> Any:
        """What several sections read, made by the first that asks."""
        if name not in self.shared:
            self.shared[name] = make()
        return self.shared[name]

    def outputs(self, split: str = "test") -> pd.DataFrame:
        """Every cell's predictions on a test split (`test`, `external:NAME`) with the formulations' outputs, read
        once (Tables 5, 5b, 5c, 5d)."""
        return self.once(
            f"outputs:{split}",
            lambda: self.run.store.predictions_frame(split, ["key", "image_id", "y_true", "outputs"]),
        )

    def calibration(self) -> CalibrationData:
        """Validation (and, on first use, test) class probabilities (Tables 8, 8b and the reliability figures)."""
        from ..calibration import CalibrationData

        return self.once("calibration", lambda: CalibrationData.load(self.run))


# build(ctx, opts, section): `section` is the view's entry (reports.views.Section: title, compare, within, items, …)
Build = Callable[[Context, Options, Any], None]


@dataclass(frozen=True)
class SectionKind:
    name: str
    build: Build
    needs: tuple[str, ...]  # keys of NEEDS: what it reads beyond the cells' stored metrics and results
    follows: str | None  # shown right after this kind in a view that names that kind but not this one
    description: str


def _adopt(name: str, obj: Any) -> None:
    """An entry point that names a section's function (not a module that registers its own on import)."""
    if callable(obj):
        register_section(name)(obj)


# Outside the package, an installed package adds sections through the entry point group `mesbench.sections` (a
# module that registers its own, or `name = module:function`), as formulations and backbones do.
SECTIONS: Registry[SectionKind] = Registry("report section", "mesbench.sections", _adopt)


def register_section(name: str, needs: tuple[str, ...] = (), follows: str | None = None) -> Callable[[Build], Build]:
    """Register `build(ctx, opts, section)` as the section kind `name` (the `kind:` of a view's section). Its
    docstring's first line is its description in `bench list` and the docs."""
    unknown = [n for n in needs if n not in NEEDS]
    if unknown:
        raise ValueError(f"section {name!r}: needs {unknown}; known: {', '.join(NEEDS)}")

    def add(build: Build) -> Build:
        known = SECTIONS.get(name)
        if known is not None and known.build is not build:
            raise BenchError(f"report section {name!r} is registered twice ({known.build.__module__}).")
        doc = (build.__doc__ or "").strip().splitlines()
        SECTIONS.register(name, SectionKind(name, build, tuple(needs), follows, doc[0] if doc else ""))
        return build

    return add
