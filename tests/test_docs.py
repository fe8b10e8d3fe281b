"""The docs: the reference is generated from the code and names everything `bench list` names; the README is the
front door with the two set-up commands `.ci/run` runs; its suite example is a valid suite."""

import re
import sys
from pathlib import Path

import yaml

from benchmark.api import catalogue
from benchmark.labels import MES
from benchmark.metrics import DESCRIPTIONS, known_metrics
from benchmark.suite.loading import validate_suite
from formulations import FORMULATIONS, scaled_formulation

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "docs"))

import hooks  # noqa: E402  (docs/hooks.py: what mkdocs runs at build time)


def test_the_generated_reference_names_everything_bench_list_names():
    pages = hooks.reference_pages()
    text = "\n".join(pages.values())
    cat = catalogue()
    for section, key in (("formulations", "name"), ("backbones", "name"), ("metrics", "name"), ("tests", "name"),
                         ("corrections", "name"), ("datasets", "name"), ("fine-tuning", "suffix"),
                         ("report sections", "name")):  # fmt: skip
        for row in cat[section]:
            assert f"| {row[key]} |" in text or f"`{row[key]}`" in text, (section, row[key])
    for name, cls in FORMULATIONS.items():  # each with its paper and its options
        row = next(line for line in pages["reference/formulations.md"].splitlines() if line.startswith(f"| {name} |"))
        assert cls.reference_text.replace("|", "\\|") in row
        for option in getattr(cls.Options, "model_fields", {}):
            assert f"{option} = " in row, (name, option)
    for row in cat["report sections"]:  # each with what it shows and the file it lives in
        line = next(x for x in pages["reference/sections.md"].splitlines() if x.startswith(f"| {row['name']} |"))
        assert row["what"] and row["what"] in line and row["module"].startswith("reports.sections."), row
    assert "## bench run" in pages["reference/commands.md"] and "--space" in pages["reference/commands.md"]


def test_every_metric_a_formulation_stores_is_described():
    stored = set()
    for name in FORMULATIONS:
        stored |= {metric for _, metric, _ in known_metrics(scaled_formulation(name, {}, MES).tasks)}
    assert stored <= set(DESCRIPTIONS), stored - set(DESCRIPTIONS)


def test_readme_is_the_front_door_with_the_two_commands_ci_runs():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    commands = re.findall(r"^python3\.11 -m venv .*$", readme, flags=re.M)
    assert len(commands) == 2 and "bench run suites/smoke.yaml && bench report --markdown" in commands[0]
    assert commands[1] in (ROOT / ".ci" / "run").read_text()  # .ci/run calls the second one verbatim


def test_the_readme_suite_example_is_a_valid_suite():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```yaml\n(name: my-study.*?)```", readme, flags=re.S).group(1)
    suite = validate_suite(yaml.safe_load(block), "README.md")
    assert [b.name for b in suite.backbones] == ["resnet18", "densenet121", "vit_small_patch16_224"]
    assert set(suite.variants) == {"augment"}


def test_the_docs_pages_hold_no_dated_timings_outside_the_measurements_page():
    for page in (ROOT / "docs").glob("*.md"):
        if page.name != "measurements.md":
            assert not re.search(r"\b20\d\d-\d\d-\d\d\b", page.read_text()), page.name
    assert not re.search(r"\b20\d\d-\d\d-\d\d\b", (ROOT / "README.md").read_text())
