"""MkDocs hook: pages generated at build time from the code, so none is a hand-kept copy that can drift — the
reference from `benchmark.api.catalogue()` (what `bench list` prints) and from the command-line parser, the
architecture page from ARCHITECTURE.md, and the example notebook as a page."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def table(rows: list[dict[str, str]], columns: list[str] | None = None) -> str:
    columns = columns or list(rows[0])
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(_cell(r[c]) for c in columns) + " |" for r in rows]
    return "\n".join(out) + "\n"


def reference_pages() -> dict[str, str]:
    """reference/*.md: every formulation, backbone, metric, test and command the code knows."""
    from benchmark.api import catalogue

    cat = catalogue()
    note = "*Generated from the registries at build time (`bench list` prints the same).*\n\n"
    pages = {
        "reference/formulations.md": "# Formulations\n\n"
        + note
        + table(cat["formulations"])
        + "\n## Fine-tuning stages\n\nAppended to any formulation's name.\n\n"
        + table(cat["fine-tuning"]),
        "reference/backbones.md": "# Backbones\n\n" + note + "Any timm model name works too, and a factory as "
        "`package.module:function`.\n\n"
        + table(cat["backbones"])
        + "\n## Datasets\n\n"
        + ", ".join(f"`{d['name']}`" for d in cat["datasets"])
        + "\n",
        "reference/metrics.md": "# Metrics\n\n" + note + "A metric is named `[task.]metric[@cls]`, e.g. `accuracy`, "
        "`f1@3`, `f1@macro`, `ra.f1`.\n\n" + table(cat["metrics"]),
        "reference/statistics.md": "# Statistical tests\n\n"
        + note
        + table(cat["tests"])
        + "\n## Multiple-comparison corrections\n\n"
        + table(cat["corrections"]),
        "reference/sections.md": "# Report sections\n\n"
        + note
        + "The `kind:` of a section in a view (`reports/views/*.yaml`, or `bench report --view FILE`); each is one "
        "file in `reports/sections/` (see *Architecture* for adding one).\n\n" + table(cat["report sections"]),
        "reference/commands.md": "# Commands\n\n*Generated from the command-line parser at build time.*\n\n"
        + commands(),
    }
    return pages


def commands() -> str:
    import argparse

    from benchmark.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    parts = []
    for name, p in sub.choices.items():
        p.prog = f"bench {name}"
        parts.append(f"## bench {name}\n\n```text\n{p.format_help().rstrip()}\n```\n")
    return "\n".join(parts)


def notebook_page(path: Path) -> str:
    nb = json.loads(path.read_text())
    out = [f"*[`{path.relative_to(ROOT)}`]: CI runs this notebook as a test.*\n"]
    for c in nb["cells"]:
        src = "".join(c["source"])
        out.append(src if c["cell_type"] == "markdown" else f"```python\n{src}\n```")
    return "\n\n".join(out) + "\n"


def readme_page() -> str:
    """The README is the site's front page as it is the repository's."""
    return (ROOT / "README.md").read_text()


def architecture_page() -> str:
    return (ROOT / "ARCHITECTURE.md").read_text()


def on_files(files, config):
    from mkdocs.structure.files import File

    generated = {**reference_pages(), "architecture.md": architecture_page(), "index.md": readme_page(),
                 "quickstart.md": notebook_page(ROOT / "examples" / "quickstart.ipynb")}  # fmt: skip
    for uri, content in generated.items():
        files.append(File.generated(config, uri, content=content))
    return files
