"""Which items a comparison holds and against which reference: the axes of a run (formulations, backbones, the
suite's ablation axes), the fixed row of each comparison, and the references `--reference` and a view name."""

from __future__ import annotations

from typing import Any

from .load import Run, variant_groups
from .table import Options

AXES = ("formulations", "backbones")  # the two fixed axes; a suite's `variants:` add their own
Section = Any  # a view's section (reports.views.Section, which imports the sections that import this)


def default_backbone(run: Run, opts: Options) -> str:
    if opts.backbone:
        return opts.backbone
    return "densenet121" if "densenet121" in run.backbones else run.backbones[0]


def reference_variant(run: Run, opts: Options, axis: str) -> str:
    """The variant of an ablation axis the others are compared with: the one `--reference` names, else the first."""
    names = list(run.stored_suite.variants[axis])
    return opts.reference if opts.reference in names else names[0]


def row_references(run: Run, opts: Options) -> tuple[dict[str, str], str | None]:
    """Each row's reference for a paired difference, and the ablation axis it is taken along (None: one reference
    for every row, the run's --reference). Along an axis (`--compare AXIS`) a row is compared with the reference
    variant of its own group, the rows that differ from it only in that axis."""
    if opts.compare in run.stored_suite.variants:
        axis = opts.compare
        wanted = reference_variant(run, opts, axis)
        refs = {}
        for _, items, names in variant_groups(run, axis):
            ref = items[names.index(wanted)]
            refs.update({item: ref for item in items})
        return refs, axis
    one = opts.reference
    if one is not None and one in run.formulations:
        return {f: one for f in run.formulations}, None
    return {}, None


def check_axis(run: Run, axis: str) -> None:
    from benchmark.errors import BenchError, closest

    if axis not in AXES and axis not in run.stored_suite.variants:
        choices = ["formulations", "backbones", *run.stored_suite.variants]
        raise BenchError(
            f"--compare {axis!r}: not an axis of this run — {closest(axis, choices)} (formulations, backbones, or an "
            "axis of the suite's `variants:`)."
        )


def within_items(run: Run, opts: Options, section: Section, axis: str) -> list[str]:
    if section.within:
        return section.within
    if axis == "formulations":
        return [default_backbone(run, opts)]
    return list(run.formulations)


def figure_withins(run: Run, section: Section, axis: str) -> list[str]:
    if section.within:
        return section.within
    return list(run.backbones) if axis == "formulations" else list(run.formulations)


def variant_reference(run: Run, axis: str, items: list[str], names: list[str], opts: Options) -> str:
    """The row the other variants are compared with: the one `--reference` names, else the axis's first."""
    return items[names.index(reference_variant(run, opts, axis))]


def section_reference(run: Run, section: Section, axis: str) -> str | None:
    """A view's own reference, which must be one of the compared items of this run (stars against a name the run
    does not have would silently be no stars at all)."""
    if section.reference is None:
        return None
    present = run.formulations if axis == "formulations" else run.backbones
    if section.reference not in present:
        from benchmark.errors import BenchError, closest

        raise BenchError(
            f"view section {section.kind!r}: reference {section.reference!r} is not one of the {axis} of this run — "
            f"{closest(section.reference, present)}. Edit the view's `reference:`."
        )
    return section.reference


def axis_reference(run: Run, opts: Options, axis: str) -> str | None:
    """--reference applies on the axis it names; backbones default to the first one."""
    if axis == "formulations":
        return opts.reference
    return opts.reference if opts.reference in run.backbones else None


def ranking_axis(run: Run, opts, section) -> str | None:
    """The ablation axis a ranking is along (`--compare AXIS`), or None: formulations within backbones."""
    axis = section.compare or opts.compare
    if axis is not None:
        check_axis(run, axis)  # a misspelt axis is refused, never ranked as formulations under its name
    return axis if axis in run.stored_suite.variants else None
