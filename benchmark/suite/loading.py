"""Loading a suite: YAML with line numbers kept for errors, `--set` overrides, and dumping."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import NoReturn

import yaml
from pydantic import BaseModel, ValidationError

from ..errors import BenchError, closest, not_a_file
from .schema import Suite


class _LineLoader(yaml.SafeLoader):
    pass


def _construct_mapping(loader, node, deep=False):
    mapping: dict = {}
    lines: dict = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in mapping:  # PyYAML keeps the last silently: a second `training:` block would replace the first
            raise yaml.constructor.ConstructorError(
                f"in the mapping that starts on line {node.start_mark.line + 1}",
                node.start_mark,
                f"key {key!r} appears twice (first on line {lines[key]}); the second would silently replace the "
                "first: merge them or rename one",
                key_node.start_mark,
            )
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


def load_suite(path: str | os.PathLike, overrides: list[str] | None = None, paths: bool = False) -> Suite:
    """The suite, validated; `paths`: also check that the data it names is there (a folder, a class folder, a
    manifest), naming the suite file and line — before anything heavy is imported."""
    doc = read_suite_doc(path, overrides)
    suite = validate_suite(doc, str(path))
    if paths:
        check_data_paths(suite, doc, str(path))
    return suite


def read_suite_doc(path: str | os.PathLike, overrides: list[str] | None = None) -> dict:
    """The suite file's YAML mapping with the `--set` overrides applied, its lines kept; not yet validated."""
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
    return apply_overrides(doc, overrides or [], path)


def check_data_paths(suite: Suite, doc: dict, source: str) -> None:
    """The files and folders the suite's data lives in, checked before anything loads (a missing root used to be
    found after the imports, 50 s in, without the suite's file or line)."""
    from .schema import DatasetConfig

    entries: list[tuple[tuple, DatasetConfig]] = [(("dataset",), suite.dataset)]
    entries += [(("test_sets", i, "dataset"), t.dataset) for i, t in enumerate(suite.test_sets)]
    for loc, cfg in entries:
        where_root = f"{'.'.join(map(str, loc))}"

        def fail(field: str, problem: str, fix: str, loc=loc, where_root=where_root) -> NoReturn:
            line = _line_of(doc, (*loc, field)) or _line_of(doc, loc)
            at = f"line {line}, " if line else ""
            raise BenchError(f"{source}: {at}{where_root}.{field}: {problem}. {fix}")

        def resolved(text: str) -> Path:
            return Path(os.path.expandvars(text)).expanduser()

        if cfg.name in ("folder", "limuc"):
            root_text = cfg.root or (os.environ.get("LIMUC_ROOT") if cfg.name == "limuc" else None)
            if not root_text:
                fix = (
                    "Set it to the folder of the LIMUC download, or set LIMUC_ROOT in the environment."
                    if cfg.name == "limuc"
                    else "Set it to the folder holding one sub-folder per grade."
                )
                fail("root", "not given" + (" (and LIMUC_ROOT is not set)" if cfg.name == "limuc" else ""), fix)
            root = resolved(root_text)
            if not root.is_dir():
                fail("root", f"{str(root)!r} does not exist or is not a folder", "Point it at the data folder.")
            if cfg.name == "folder":
                for cls in cfg.class_dirs:
                    if not (root / cls).is_dir():
                        fail(
                            "class_dirs",
                            f"the class folder {str(root / cls)!r} is missing",
                            "Name each grade's folder under root, in order.",
                        )
        for field, text, fix in (
            ("manifest", cfg.manifest if cfg.name == "manifest" else None, "Give the path of the CSV manifest."),
            ("patients", cfg.patients, "Give the path of the CSV of path,patient rows."),
        ):
            path = resolved(text) if text else None
            if path is not None and not path.is_file():
                what = not_a_file(path)
                fail(field, f"{text!r} {what}", fix)


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
    check_formulation_names(suite, doc, source)
    check_scale_fits(suite, doc, source)
    return suite


def check_formulation_names(suite: Suite, doc: dict, source: str) -> None:
    """Every report row name (a formulation's label, and the stage 1 a fine-tuned one starts from) stands for one
    configuration: a stage 1 is found by its name, so a label that names another formulation's stage 1 would leave
    the fine-tuned cells waiting for a stage 1 that is never trained."""

    def ident(f) -> str:
        return f.model_dump_json(exclude={"label", "tuned"})

    def short(f) -> str:
        return f.name + (f" (finetune: {f.finetune})" if f.finetune else "") + (f" {f.options}" if f.options else "")

    seen: dict[str, tuple[int, str, str, str]] = {}  # row name -> (index, what, configuration, its summary)
    for i, f in enumerate(suite.formulations):
        rows = [(f.display, f"formulations[{i}]", f)]
        if f.finetune:
            rows.append((f.base().display, f"the stage 1 of formulations[{i}] ({f.display})", f.base()))
        for name, what, config in rows:
            first = seen.setdefault(name, (i, what, ident(config), short(config)))
            if first[2] != ident(config):
                line = _line_of(doc, ("formulations", i))
                where = f"line {line}, " if line else ""
                raise BenchError(
                    f"{source}: {where}{what} is named {name!r}, as {first[1]} is, but they are different "
                    f"formulations ({first[3]} and {short(config)}). Each name is one row of every table and "
                    "a fine-tuned formulation finds its stage 1 by name: give one of them a distinct 'label'."
                )


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
    return len(suite.backbones) * len(suite.formulations) * suite.n_combos * folds * len(suite.training.seeds)


def check_size(suite: Suite, yes: bool) -> None:
    n = cell_count(suite)
    if n > MAX_CELLS and not yes:
        p = suite.protocol
        raise BenchError(
            f"Suite {suite.name!r} expands to {n:,} cells ({len(suite.backbones)} backbones × "
            f"{len(suite.formulations)} formulations × {suite.n_combos:,} variant combinations × {p.folds} folds × "
            f"{p.repeats} repeats × "
            f"{len(suite.training.seeds)} seeds), more than {MAX_CELLS:,}. Check protocol.repeats and folds; if you "
            "mean it, add --yes."
        )
