"""`bench tune --space`: the search space over any setting a cell takes — a training, augmentation or backbone field
(the ones an ablation variant may set) or an option of the tuned formulation.

    NAME=LOW:HIGH       a float between LOW and HIGH;  NAME=LOW:HIGH:log  the same, sampled on a log scale
    NAME=LOW..HIGH      an integer between LOW and HIGH (both included)
    NAME=a,b,c          one of these values (each read as YAML: 0.1, true, mixup)

Each end of a range and each value is put through the field's own validation when the command is read, so a bad
space is one line before anything trains."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from ..errors import BenchError
from ..suite.schema import (
    RUN_WIDE_TRAINING,
    VARIANT_BACKBONE_FIELDS,
    AugmentConfig,
    BackboneConfig,
    FormulationConfig,
    Suite,
    TrainingConfig,
)

FORMS = (
    "NAME=LOW:HIGH[:log] (a float), NAME=LOW..HIGH (an integer) or NAME=a,b,c (one of these values), with NAME a "
    "training, augment or backbone field or options.FIELD of the tuned formulation, e.g. "
    "--space training.lr=0.0001:0.01:log"
)


@dataclass(frozen=True)
class Param:
    spec: str  # as given, for messages
    name: str  # dotted: training.lr, augment.rotation, backbone.lr_decay, options.gamma
    kind: str  # float, int or categorical
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    choices: tuple[Any, ...] = ()

    def suggest(self, trial) -> Any:
        if self.kind == "float":
            return trial.suggest_float(self.name, self.low, self.high, log=self.log)
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high))
        return trial.suggest_categorical(self.name, list(self.choices))

    def text(self) -> str:
        if self.kind == "float":
            return f"{self.name} ∈ [{self.low:g}, {self.high:g}]" + (" (log)" if self.log else "")
        if self.kind == "int":
            return f"{self.name} ∈ {{{int(self.low)}, …, {int(self.high)}}}"
        return f"{self.name} ∈ {{{', '.join(map(str, self.choices))}}}"

    def ends(self) -> list[Any]:
        """The values whose validity stands for the whole space: both ends of a range, every choice."""
        if self.kind == "float":
            return [self.low, self.high]
        if self.kind == "int":
            return [int(self.low), int(self.high)]
        return list(self.choices)


def _number(text: str, spec: str, integer: bool = False) -> float:
    try:
        return float(int(text)) if integer else float(text)
    except ValueError:
        raise BenchError(
            f"--space {spec!r}: {text!r} is not {'an integer' if integer else 'a number'}. Give {FORMS}."
        ) from None


def parse_space(spec: str) -> Param:
    """One `--space NAME=…`, as syntax (the field's own checks come with `check_space`)."""
    import math

    import yaml

    name, sep, value = spec.partition("=")
    name, value = name.strip(), value.strip()
    if not sep or not name or not value:
        raise BenchError(f"--space {spec!r}: give {FORMS}.")
    if "," in value:
        choices = tuple(yaml.safe_load(v.strip()) for v in value.split(",") if v.strip())
        if len(set(map(repr, choices))) < 2:
            raise BenchError(f"--space {spec!r}: a choice needs at least two different values, e.g. {name}=a,b.")
        return Param(spec, name, "categorical", choices=choices)
    if ".." in value:
        low_text, _, high_text = value.partition("..")
        low, high = _number(low_text, spec, True), _number(high_text, spec, True)
        if low >= high:
            raise BenchError(f"--space {spec!r}: LOW ({int(low)}) must be below HIGH ({int(high)}).")
        return Param(spec, name, "int", low, high)
    parts = value.split(":")
    if len(parts) == 1:
        raise BenchError(
            f"--space {spec!r}: one value is not a space: --set {name}={value} fixes a setting; a space is {FORMS}."
        )
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "log"):
        raise BenchError(f"--space {spec!r}: give {FORMS}.")
    low, high = _number(parts[0], spec), _number(parts[1], spec)
    if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
        raise BenchError(f"--space {spec!r}: LOW ({low:g}) must be a finite number below HIGH ({high:g}).")
    log = len(parts) == 3
    if log and low <= 0:
        raise BenchError(f"--space {spec!r}: a log scale needs LOW above 0 (got {low:g}).")
    return Param(spec, name, "float", low, high, log)


def settings(suite: Suite, backbone: BackboneConfig, fcfg: FormulationConfig, values: dict[str, Any]):
    """(training, backbone, options) of a trial: the suite's, with these values of the space set — validated by the
    same models as a suite's own fields."""
    overrides = {k: v for k, v in values.items() if not k.startswith("options.")}
    training = suite.training_with([overrides]) if overrides else suite.training
    if any(k.startswith("backbone.") for k in overrides):  # as a variant sets them, for every backbone
        with_overrides = suite.model_copy(update={"backbones": [backbone]}).backbones_with([overrides])
        backbone = with_overrides[0]
    options = {**fcfg.options, **{k.partition(".")[2]: v for k, v in values.items() if k.startswith("options.")}}
    if options != fcfg.options:
        FormulationConfig.model_validate({"name": fcfg.name, "options": options})
    return training, backbone, options


def check_space(params: list[Param], suite: Suite, backbone: BackboneConfig, fcfg: FormulationConfig) -> None:
    """Every name known and every end of every range accepted by its field, else one line naming the --space."""
    names = [p.name for p in params]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise BenchError(f"--space names {', '.join(twice)} twice; give each setting one range.")
    fields = {
        "training": set(TrainingConfig.model_fields) - set(RUN_WIDE_TRAINING) - {"augment"},
        "augment": set(AugmentConfig.model_fields),
        "backbone": set(VARIANT_BACKBONE_FIELDS),
        "options": _option_fields(fcfg.name),
    }
    option_fields = fields["options"]
    for p in params:
        section, _, field = p.name.partition(".")
        if field not in fields.get(section, set()):
            from ..errors import closest

            every = sorted(f"{s}.{f}" for s, fs in fields.items() for f in fs)
            raise BenchError(
                f"--space {p.spec!r}: {p.name!r} is not a setting a trial can change (training.FIELD, augment.FIELD, "
                f"backbone.FIELD or options.FIELD of {fcfg.name!r}, which has "
                f"{', '.join(sorted(option_fields)) or 'no options'}): {closest(p.name, every)}."
            )
        for value in p.ends():
            try:
                settings(suite, backbone, fcfg, {p.name: value})
            except (ValidationError, BenchError, ValueError) as exc:
                why = _first_error(exc)
                raise BenchError(f"--space {p.spec!r}: {p.name} = {value!r} is refused: {why}.") from None


def _option_fields(name: str) -> set[str]:
    from formulations import formulation_class

    model = getattr(formulation_class(name), "Options", None)
    return set(getattr(model, "model_fields", {}) or {})


def _first_error(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        err = exc.errors()[0]
        where = ".".join(str(x) for x in err.get("loc", ()))
        return (f"{where}: " if where else "") + re.sub(r"^Value error, ", "", err.get("msg", str(exc)))
    return str(exc).splitlines()[0].rstrip(".")
