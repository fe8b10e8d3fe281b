"""Loading a suite: YAML with line numbers kept for errors, `--set` overrides, and dumping."""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml
from pydantic import BaseModel, ValidationError

from ..errors import BenchError, closest
from .schema import Suite


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


MAX_YAML_BYTES = 1 << 20  # a suite or view is a page of text: a megabyte is far past any real one
MAX_YAML_NODES = 100_000  # values after aliases are expanded: a real suite has a few hundred


def check_yaml_bounds(text: str, where: str) -> None:
    """Refuse a YAML document too large, or whose aliases would expand it without bound (a 1.3 kB "billion laughs"
    document reached 3 GiB), before anything is constructed: the size after expansion is computed on the composed
    node graph, where an alias is a shared node, so nothing is expanded to measure it."""
    if len(text) > MAX_YAML_BYTES:
        raise BenchError(
            f"{where}: {len(text):,} characters, more than a suite or view can sensibly be ({MAX_YAML_BYTES:,}); "
            "check that this is the right file."
        )
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise BenchError(f"{where}: not valid YAML ({exc}). Fix the syntax at the line shown.") from None
    sizes: dict[int, int] = {}

    def expanded(node) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        sizes[id(node)] = 1  # a cycle counts once (SafeLoader refuses recursive structures anyway)
        if isinstance(node, yaml.SequenceNode):
            n = 1 + sum(expanded(child) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            n = 1 + sum(expanded(k) + expanded(v) for k, v in node.value)
        else:
            n = 1
        sizes[id(node)] = n
        return n

    if root is not None and expanded(root) > MAX_YAML_NODES:
        raise BenchError(
            f"{where}: its YAML aliases (*name) expand it to {expanded(root):,} values, more than {MAX_YAML_NODES:,}: "
            "a document that repeats itself this often expands without bound. Write the values out, or use fewer "
            "aliases."
        )


def load_suite(path: str | os.PathLike, overrides: list[str] | None = None) -> Suite:
    path = Path(path)
    try:
        exists = path.is_file()
    except OSError as exc:
        raise BenchError(
            f"Suite file {str(path)!r} cannot be reached ({exc.strerror}); check the path and the "
            "permissions of its folders."
        ) from None
    if not exists:
        raise BenchError(
            f"Suite file {str(path)!r} does not exist. Give the path of a suite YAML, e.g. suites/smoke.yaml."
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise BenchError(
            f"{path}: not a text file (byte {exc.start} is not UTF-8). A suite is a YAML text file; "
            "check that the path names the suite, not a binary file."
        ) from None
    except OSError as exc:
        raise BenchError(f"{path}: cannot be read ({exc.strerror}). Check the path and its permissions.") from None
    check_yaml_bounds(text, str(path))
    try:
        doc = yaml.load(text, Loader=_LineLoader)
    except yaml.YAMLError as exc:
        raise BenchError(f"{path}: not valid YAML ({exc}). Fix the syntax at the line shown.") from None
    if not isinstance(doc, dict):
        raise BenchError(
            f"{path}: a suite must be a YAML mapping with at least 'name', 'backbones' and 'formulations'."
        )
    doc = apply_overrides(doc, overrides or [], path)
    return validate_suite(doc, str(path))


def validate_suite(doc: dict, source: str = "<suite>") -> Suite:
    try:
        suite = Suite.model_validate(doc)
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
                msgs.append(f"{where}unknown key {field!r}: {closest(loc[-1], allowed)}")
            else:
                value = err.get("input")
                shown = "" if isinstance(value, dict) else f" (got {value!r})"
                msg = str(err["msg"]).removeprefix("Value error, ")
                msgs.append(f"{where}field {field!r}: {msg}{shown}")
        raise BenchError(
            f"{source}: invalid suite — " + "; ".join(msgs) + ". Fix these fields and run again."
        ) from None
    check_scale_fits(suite, doc, source)
    return suite


def check_scale_fits(suite: Suite, doc: dict, source: str) -> None:
    """Every formulation's options on the grades the suite declares (its `scale:`, the synthetic `classes`, the
    folder names): a hierarchy or cut points that do not fit them are refused here, with the line, not after the
    data is decoded. Data whose grades only its files tell (a manifest) is checked when it is loaded."""
    from formulations import scaled_formulation

    data = suite.data_scale()
    if suite.scale is not None and data is not None and data.k != len(suite.scale.classes):
        line = _line_of(doc, ("scale",))
        raise BenchError(
            f"{source}: {f'line {line}, ' if line else ''}scale.classes names {len(suite.scale.classes)} grades "
            f"({', '.join(suite.scale.classes)}), but the data has {data.k} ({', '.join(data.classes)}). Name each "
            "of the data's grades once, in order, or drop `scale:` to use the data's own names."
        )
    scale = suite.declared_scale()
    if scale is None:
        return
    for i, f in enumerate(suite.formulations):
        try:
            scaled_formulation(f.name, f.options, scale)
            for extra in f.options_by_fold.values():
                scaled_formulation(f.name, {**f.options, **extra}, scale)
        except BenchError as exc:
            line = _line_of(doc, ("formulations", i))
            where = f"line {line}, " if line else ""
            raise BenchError(
                f"{source}: {where}formulations[{i}] ({f.display}) on the scale {scale.name} of {scale.k} grades "
                f"({', '.join(scale.classes)}): {exc}"
            ) from None


def _allowed_keys(parent_loc):
    model: type[BaseModel] = Suite
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
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            first = str(exc).splitlines()[0]
            raise BenchError(
                f"Override {item!r}: {raw!r} is not a value ({first}). Give a number, a word, or a YAML list such "
                "as [64, 64]; tags like !!python/... are never run."
            ) from None
        node = doc
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise BenchError(f"Override {item!r}: {p!r} in {source} is not a mapping.")
        node[parts[-1]] = value
    return doc


def dump_suite(suite: Suite) -> str:
    return yaml.safe_dump(suite.model_dump(mode="json"), sort_keys=False)


MAX_CELLS = 20_000  # a paper suite is 5 × 6 × 10 = 300; beyond this, ask (--yes) before expanding


def cell_count(suite: Suite) -> int:
    """How many cells the suite expands to, computed without expanding it (nor making its splits)."""
    folds = suite.protocol.folds * (1 if suite.protocol.kind == "polat" else max(suite.protocol.repeats, 1))
    return len(suite.backbones) * len(suite.formulations) * len(suite.combos()) * folds * len(suite.training.seeds)


def check_size(suite: Suite, yes: bool) -> None:
    n = cell_count(suite)
    if n > MAX_CELLS and not yes:
        p = suite.protocol
        raise BenchError(
            f"Suite {suite.name!r} expands to {n:,} cells ({len(suite.backbones)} backbones × "
            f"{len(suite.formulations)} formulations × {len(suite.combos())} variant combinations × {p.folds} folds × "
            f"{p.repeats} repeats × "
            f"{len(suite.training.seeds)} seeds), more than {MAX_CELLS:,}. Check protocol.repeats and folds; if you "
            "mean it, add --yes."
        )
