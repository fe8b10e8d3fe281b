"""Report views: which tables and figures a report holds, along which axis, as small YAML files in
`reports/views/` (or any path). Backbone and formulation names in a view are data; a name the run does not
have gives a note in its section, never an error."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from benchmark.errors import BenchError, closest

VIEWS_DIR = Path(__file__).resolve().parent / "views"
PerClassMetric = Literal["f1", "recall", "precision", "specificity", "auc"]


class Statistics(BaseModel):
    """How a view (or one of its sections) tests, as the paper it reproduces did. A flag given on the command
    line (`--test`, `--correction`, `--split`, `--alpha`) still wins, so every option changes what it says."""

    model_config = ConfigDict(extra="forbid")
    test: Literal["auto", "wilcoxon", "permutation", "corrected-t", "ranksum", "bayes"] | None = None
    correction: Literal["holm", "fdr_bh", "bonferroni", "none"] | None = None
    split: Literal["val", "test"] | None = None
    alpha: float | None = Field(None, gt=0, lt=1, allow_inf_nan=False)
    why: str | None = None  # printed with the settings, e.g. "as in the study"


def section_kinds() -> list[str]:
    """The registered section kinds (reports/sections/, and any registered from outside before the view is read)."""
    from .sections import SECTIONS

    return list(SECTIONS)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: str  # a registered section (reports/sections/)
    statistics: Statistics | None = None  # this section's own; else the view's
    title: str | None = None
    # None: --compare (default formulations); or an ablation axis of the suite's `variants:`
    compare: str | None = None
    within: list[str] | None = None  # the fixed backbones / formulations; None: the default one
    items: list[str] | None = None  # which formulations / backbones to show; None: all
    reference: str | None = None
    pairs: Literal["reference", "all"] | None = None  # None: --pairs
    metric: PerClassMetric | None = None  # per_class: None = --metric
    metrics: list[PerClassMetric] = ["precision", "recall", "f1", "specificity"]
    columns: Literal["default", "ordinal", "polat", "ra"] | None = None  # summary: None = --summary

    @field_validator("kind")
    @classmethod
    def _registered(cls, kind: str) -> str:
        if kind not in section_kinds():
            raise ValueError(f"{kind!r} is not a report section")
        return kind


class View(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    title: str = "mesbench report"
    statistics: Statistics | None = None  # every section's, unless a section sets its own
    sections: list[Section]


def view_names() -> list[str]:
    return sorted(p.stem for p in VIEWS_DIR.glob("*.yaml"))


def load_view(name_or_path: str) -> View:
    path = Path(name_or_path)
    if not path.is_file():
        path = VIEWS_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise BenchError(
            f"--view {name_or_path!r}: no such view — {closest(name_or_path, view_names())}, or the path "
            "of a view YAML file."
        )
    from benchmark.suite.loading import MAX_YAML_BYTES, check_yaml_bounds

    if path.stat().st_size > MAX_YAML_BYTES:  # refused before it is read
        raise BenchError(f"view {path}: {path.stat().st_size:,} bytes, more than a view can sensibly be.")
    try:
        text = path.read_text()
        check_yaml_bounds(text, f"view {path}")
        doc = yaml.safe_load(text)
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise BenchError(f"view {path}: not valid YAML ({exc}).") from None
    try:
        return View.model_validate(doc)
    except ValidationError as exc:
        msgs = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise BenchError(
            f"view {path}: " + "; ".join(msgs) + f". Section kinds: {', '.join(section_kinds())}."
        ) from None


STAT_FIELDS = ("test", "correction", "split", "alpha")


def section_statistics(view: View, section: Section, explicit: frozenset[str]) -> dict[str, object]:
    """The statistics settings a section runs with beyond the command line's: its own, else the view's, for every
    field the user did not give on the command line."""
    out: dict[str, object] = {}
    for source in (view.statistics, section.statistics):
        if source is None:
            continue
        for name in STAT_FIELDS:
            value = getattr(source, name)
            if value is not None and name not in explicit:
                out[name] = value
    return out
