"""Suite YAML: schema, loading with line numbers for errors, and expansion helpers."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import BenchError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatasetConfig(Strict):
    name: str = "synthetic"
    root: str | None = None
    manifest: str | None = None
    class_dirs: list[str] = Field(default_factory=lambda: ["Mayo 0", "Mayo 1", "Mayo 2", "Mayo 3"])
    resize: tuple[int, int] | None = None  # (height, width)
    params: dict[str, Any] = Field(default_factory=dict)
    mmap: bool = False


class ProtocolConfig(Strict):
    kind: Literal["study", "grouped", "polat"] = "study"
    test_fraction: float = 0.15
    folds: int = Field(10, ge=2)
    repeats: int = Field(1, ge=1)
    seed: int = 0
    use_published_test: bool = False
    val_fraction: float = 0.15  # polat: share of the non-test patients' images in each validation split
    val_share_tolerance: float = 0.15  # polat: accepted relative deviation of each class's validation share
    max_split_attempts: int = 1000

    @field_validator("test_fraction")
    @classmethod
    def _fraction(cls, v):
        if not 0 < v < 1:
            raise ValueError(f"test_fraction must lie strictly between 0 and 1 (got {v}); the study uses 0.15")
        return v


class TrainingConfig(Strict):
    epochs: int = Field(200, ge=1)
    lr: float = Field(2e-4, gt=0, allow_inf_nan=False)
    weight_decay: float = Field(0.0, ge=0, allow_inf_nan=False)
    batch_size: int = Field(32, ge=2)
    eval_batch_size: int = Field(256, ge=1)
    early_stopping: int = Field(25, ge=1)
    plateau_patience: int = Field(15, ge=0)
    plateau_factor: float = Field(0.2, gt=0, lt=1)
    monitor: Literal["val_loss", "val_accuracy", "val_macro_f1", "val_qwk"] = "val_loss"
    sampler: Literal["none", "weighted"] = "none"
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    compile: bool = False
    finetune_lr: float = Field(2e-5, ge=0, allow_inf_nan=False)
    finetune_epochs: int | None = Field(None, ge=1)  # None: same as epochs


class BackboneConfig(Strict):
    name: str
    batch_size: int | None = None
    pretrained: bool = False
    weights: str | None = None
    input_size: tuple[int, int] | None = None


FINETUNE_SUFFIX = {"inverse_f1": "+f1", "plain": "+ft"}


class FinetuneOptions(Strict):
    """The fine-tuning stage: `inverse_f1` re-weights the loss by 1/F1 per class, `plain` is its control
    (the identical stage 2 without weights)."""

    lr: float | None = Field(None, ge=0, allow_inf_nan=False)  # None: training.finetune_lr
    epochs: int | None = Field(None, ge=1)  # None: training.finetune_epochs
    eps: float = Field(1e-3, gt=0, allow_inf_nan=False)  # F1 floor before inverting
    max_weight: float = Field(10.0, ge=1, allow_inf_nan=False)  # cap, as a multiple of the smallest weight
    task_weights: bool = False  # MTL: also re-weight alpha/beta/gamma by 1/macro-F1 of each task


class FormulationConfig(Strict):
    name: str
    label: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    finetune: Literal["inverse_f1", "plain"] | None = None
    finetune_options: FinetuneOptions = Field(default_factory=FinetuneOptions)
    # Per-fold options (written by `bench tune`, which tunes each outer fold on its own training part).
    options_by_fold: dict[int, dict[str, Any]] = Field(default_factory=dict)
    tuned: str | None = None  # where tuned options came from, shown in report notes

    @property
    def display(self) -> str:
        if self.label:
            return self.label
        return self.name + (FINETUNE_SUFFIX[self.finetune] if self.finetune else "")

    def base(self) -> "FormulationConfig":
        """The stage-1 formulation a fine-tuned one starts from (never labelled like the fine-tuned one)."""
        label = None
        if self.label:
            suffix = FINETUNE_SUFFIX[self.finetune] if self.finetune else ""
            label = self.label[: -len(suffix)] if suffix and self.label.endswith(suffix) else f"{self.label}[stage 1]"
        return FormulationConfig(name=self.name, label=label, options=self.options,
                                 options_by_fold=self.options_by_fold, tuned=self.tuned)


class Suite(Strict):
    name: str = Field(min_length=1)
    description: str = ""
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    protocol: ProtocolConfig = Field(default_factory=ProtocolConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    backbones: list[BackboneConfig]
    formulations: list[FormulationConfig]

    @field_validator("name")
    @classmethod
    def _one_path_component(cls, v):
        # The name becomes runs/<name>: anything that is not one plain folder name would write elsewhere.
        if v in (".", "..") or any(c in v for c in "/\\") or v != v.strip() or "\x00" in v:
            raise ValueError(f"the suite name becomes the folder runs/<name>, so it must be one plain folder name "
                             f"(no '/', '\\', '.' or '..'); got {v!r}")
        return v

    @field_validator("backbones", mode="before")
    @classmethod
    def _backbones(cls, v):
        return [{"name": b} if isinstance(b, str) else b for b in (v or [])]

    @field_validator("formulations", mode="before")
    @classmethod
    def _formulations(cls, v):
        return [parse_formulation_entry(f) for f in (v or [])]

    @model_validator(mode="after")
    def _non_empty(self):
        if not self.backbones:
            raise ValueError("backbones: the suite lists no backbone")
        if not self.formulations:
            raise ValueError("formulations: the suite lists no formulation")
        labels = [f.display for f in self.formulations]
        dup = {x for x in labels if labels.count(x) > 1}
        if dup:
            raise ValueError(f"formulations: {sorted(dup)} listed twice; give one a distinct 'label'")
        return self


def parse_formulation_entry(entry):
    """'mtl+f1' is shorthand for {name: mtl, finetune: inverse_f1}; 'mtl+ft' for {name: mtl, finetune: plain}."""
    if isinstance(entry, str):
        entry = {"name": entry}
    if isinstance(entry, dict) and isinstance(entry.get("name"), str):
        for kind, suffix in FINETUNE_SUFFIX.items():
            if entry["name"].endswith(suffix):
                entry = dict(entry, name=entry["name"][: -len(suffix)], finetune=kind)
    return entry


# --------------------------------------------------------------------------- YAML with line numbers


class _LineLoader(yaml.SafeLoader):
    pass


def _construct_mapping(loader, node, deep=False):
    mapping = {}
    lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        mapping[key] = loader.construct_object(value_node, deep=True)
        lines[key] = key_node.start_mark.line + 1
    return _LinedDict(mapping, lines)


class _LinedDict(dict):
    def __init__(self, data, lines):
        super().__init__(data)
        self.lines = lines


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _line_of(doc, loc):
    """Best line number for a pydantic error location inside the YAML document."""
    node, line = doc, None
    for part in loc:
        if isinstance(node, _LinedDict) and part in node.lines:
            line = node.lines[part]
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            break
    return line


def load_suite(path: str | os.PathLike, overrides: list[str] | None = None) -> Suite:
    path = Path(path)
    try:
        exists = path.is_file()
    except OSError as exc:
        raise BenchError(f"Suite file {str(path)!r} cannot be reached ({exc.strerror}); check the path and the "
                         "permissions of its folders.") from None
    if not exists:
        raise BenchError(f"Suite file {str(path)!r} does not exist. Give the path of a suite YAML, e.g. suites/smoke.yaml.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise BenchError(f"{path}: not a text file (byte {exc.start} is not UTF-8). A suite is a YAML text file; "
                         "check that the path names the suite, not a binary file.") from None
    except OSError as exc:
        raise BenchError(f"{path}: cannot be read ({exc.strerror}). Check the path and its permissions.") from None
    try:
        doc = yaml.load(text, Loader=_LineLoader)  # noqa: S506 - SafeLoader subclass
    except yaml.YAMLError as exc:
        raise BenchError(f"{path}: not valid YAML ({exc}). Fix the syntax at the line shown.") from None
    if not isinstance(doc, dict):
        raise BenchError(f"{path}: a suite must be a YAML mapping with at least 'name', 'backbones' and 'formulations'.")
    doc = apply_overrides(doc, overrides or [], path)
    return validate_suite(doc, str(path))


def validate_suite(doc: dict, source: str = "<suite>") -> Suite:
    try:
        return Suite.model_validate(doc)
    except ValidationError as exc:
        msgs = []
        for err in exc.errors():
            loc = [p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-"))]
            field = ".".join(str(p) for p in loc) or "(top level)"
            line = _line_of(doc, err["loc"])
            where = f"line {line}, " if line else ""
            if err["type"] == "extra_forbidden":
                parent = loc[:-1]
                allowed = _allowed_keys(parent)
                from .errors import closest

                msgs.append(f"{where}unknown key {field!r}: {closest(loc[-1], allowed)}")
            else:
                value = err.get("input")
                shown = "" if isinstance(value, dict) else f" (got {value!r})"
                msgs.append(f"{where}field {field!r}: {err['msg']}{shown}")
        raise BenchError(f"{source}: invalid suite — " + "; ".join(msgs) + ". Fix these fields and run again.") from None


def _allowed_keys(parent_loc):
    model = Suite
    for part in parent_loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            break
        ann = field.annotation
        inner = getattr(ann, "__args__", None)
        candidate = inner[0] if inner else ann
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            model = candidate
        elif isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
    return list(model.model_fields)


def apply_overrides(doc: dict, overrides: list[str], source) -> dict:
    """`key.sub=value` pairs (values parsed as YAML) applied on top of the document."""
    if not overrides:
        return doc  # keeps the line numbers for error messages
    doc = json.loads(json.dumps(doc))  # plain dicts, deep copy
    for item in overrides:
        if "=" not in item:
            raise BenchError(f"Override {item!r} is not of the form key=value (e.g. training.epochs=3).")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw)
        node = doc
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise BenchError(f"Override {item!r}: {p!r} in {source} is not a mapping.")
        node[parts[-1]] = value
    return doc


def stable_hash(obj, n=12) -> str:
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:n]


def dump_suite(suite: Suite) -> str:
    return yaml.safe_dump(suite.model_dump(mode="json"), sort_keys=False)
