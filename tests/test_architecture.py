"""The layout ARCHITECTURE.md describes, checked from the source: layers only import downwards, no import
cycles, `reports/` and the formulation registry stay torch-free, and no formulation is named outside
formulations/, suites/ and tests/."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from formulations import FINETUNE_SUFFIXES, FORMULATIONS

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("benchmark", "formulations", "backbones", "reports")

# Bottom to top, as in ARCHITECTURE.md: a module may import its own layer and the layers below it.
LAYERS = [
    (
        "core",
        [
            "benchmark",
            "benchmark.errors",
            "benchmark.labels",
            "benchmark.registry",
            "benchmark.metrics",
            "benchmark.result",
        ],
    ),
    ("plugins", ["formulations", "backbones"]),
    ("suite", ["benchmark.suite"]),
    ("data", ["benchmark.data"]),
    ("train", ["benchmark.train"]),
    ("run", ["benchmark.run"]),
    ("reports", ["reports"]),
    ("tools", ["benchmark.tools"]),
    ("api", ["benchmark.api"]),
    ("cli", ["benchmark.cli"]),
]
# The package's own names are the API's (`import benchmark as mb; mb.load_run`), imported on first use: the one
# import that runs up the layers, and only when a user asks for those names.
FACADE = {("benchmark", "benchmark.api")}


def layer_of(module: str) -> int:
    best, depth = None, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > depth:
                best, depth = i, len(p)
    if best is None:
        raise AssertionError(f"module {module} is in no layer of ARCHITECTURE.md")
    return best


def modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules imported anywhere in the file (function-level imports count: they run too)."""
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module
            targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


@pytest.fixture(scope="module")
def graph():
    mods = modules()
    known = set(mods)
    return {name: imports(name, path, known) for name, path in mods.items()}


def test_every_module_is_in_a_layer(graph):
    for name in graph:
        layer_of(name)


def test_no_upward_imports(graph):
    upward = [(a, b) for a, deps in graph.items() for b in deps if layer_of(b) > layer_of(a) and (a, b) not in FACADE]
    assert not upward, "imports that run up the layers: " + ", ".join(f"{a} -> {b}" for a, b in upward)


def test_no_import_cycles(graph):
    state, stack, cycles = {}, [], []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                cycles.append(stack[stack.index(m) :] + [m])
            elif m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_no_formulation_is_named_outside_its_own_files():
    names = set(FORMULATIONS) | {n + s for n in FORMULATIONS for s in FINETUNE_SUFFIXES}
    task_names = {t for cls in FORMULATIONS.values() for t in cls.tasks if t != "mes"}
    hits = []
    for pkg in ("benchmark", "reports", "backbones", "scripts"):
        for path in (ROOT / pkg).rglob("*"):
            if path.is_dir() or path.suffix not in ("", ".py") or "__pycache__" in path.parts:
                continue
            if path.suffix == "" and "python" not in path.read_text().splitlines()[0]:
                continue  # a shell script
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names | task_names:
                    hits.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value!r}")
    assert hits == [], hits


def test_reports_and_formulations_import_without_torch():
    code = (
        "import sys, formulations, backbones, reports.load, reports.sections, reports.render, reports.check, "
        "reports.summary, benchmark.suite.loading; print(sorted(m for m in ('torch', 'timm') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.strip() == "[]"


def test_importing_backbones_leaves_the_environment_alone():
    code = "import os; before = dict(os.environ); import backbones; print(dict(os.environ) == before)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.strip() == "True"


def test_architecture_md_names_every_layer_and_package():
    text = (ROOT / "ARCHITECTURE.md").read_text()
    for layer, prefixes in LAYERS:
        assert f"| {layer} |" in text, layer
        for p in prefixes:
            if p != "benchmark":
                assert p.rpartition(".")[2] in text, p
    for sub in ("suite", "data", "train", "run", "tools", "cli"):
        assert f"benchmark/{sub}/" in text and (ROOT / "benchmark" / sub).is_dir()
