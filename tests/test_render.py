"""The report as a person gets it: LaTeX that a real engine compiles, HTML that a real browser shows with
every figure decoding, and figures written as files."""

import base64
import io
import os
import re
import shutil
import subprocess

import pytest
from fake_run import write_fake_run
from PIL import Image

from benchmark.cli import main


def need(binary):
    """In CI these must exist (.ci/run installs them); elsewhere a missing one is skipped with the reason."""
    path = shutil.which(binary)
    if path is None and not os.environ.get("CI"):
        pytest.skip(f"{binary} is not installed (Debian: see .ci/run)")
    assert path, f"{binary} is missing in CI: .ci/run installs it"
    return path


# Its module fixture is built once, on one worker, rather than once on each.
pytestmark = pytest.mark.xdist_group("test_render")


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    return write_fake_run(
        tmp_path_factory.mktemp("render") / "run",
        folds=4,
        n_val=80,
        n_test=90,
        backbones=("resnet18", "densenet121", "resnet50"),
    )


@pytest.mark.parametrize("view", ["default", "kim-lee-2025", "polat-2023"])
def test_latex_compiles_with_pdflatex(fake, view, tmp_path):
    pdflatex = need("pdflatex")
    tex = tmp_path / "report.tex"
    assert main(["report", str(fake), "--view", view, "--latex", "--standalone", "-o", str(tex)]) == 0
    text = tex.read_text()
    assert "−" not in text and "p < 0" not in text  # a Unicode minus or a text-mode '<' would garble
    proc = subprocess.run(
        [pdflatex, "-interaction=nonstopmode", "-halt-on-error", tex.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert (tmp_path / "report.pdf").stat().st_size > 5000
    log = (tmp_path / "report.log").read_text(errors="replace")
    assert "Missing character" not in log


def test_html_in_a_real_browser(fake, tmp_path):
    chromium = need("chromium")
    html = tmp_path / "report.html"
    assert main(["report", str(fake), "--html", "-o", str(html)]) == 0
    text = html.read_text()
    images = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", text)
    assert len(images) >= 8
    # beside the page: each embedded figure as a PNG file, and no PDF (a second drawing: --figures-only's)
    files = sorted((tmp_path / "figures").glob("*.png"))
    assert len(files) == len(images) and not list((tmp_path / "figures").glob("*.pdf"))
    assert {base64.b64encode(p.read_bytes()).decode() for p in files} == set(images)
    for data in images:  # every figure decodes
        Image.open(io.BytesIO(base64.b64decode(data))).verify()
    shot = tmp_path / "shot.png"
    proc = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--enable-logging=stderr",
            "--v=0",
            f"--screenshot={shot}",
            "--window-size=1280,2000",
            html.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shot.exists(), proc.stderr[-2000:]
    assert "Uncaught" not in proc.stderr and "CONSOLE" not in proc.stderr.upper().replace("CONSOLE_", "")
    img = Image.open(shot).convert("L")
    lo, hi = img.getextrema()
    assert hi - lo > 100  # not blank: text and figures on a white page
    assert len(set(img.resize((64, 100)).getdata())) > 20


def test_figures_are_also_written_as_files_and_markdown_references_them(fake, capsys):
    capsys.readouterr()
    assert main(["report", str(fake), "--figures-only"]) == 0
    out = capsys.readouterr()
    pngs = sorted((fake / "figures").glob("*.png"))
    pdfs = sorted((fake / "figures").glob("*.pdf"))
    assert len(pngs) >= 8 and len(pdfs) == len(pngs)
    assert all(p.name in out.err for p in pngs)  # listed at the end of the command
    assert main(["report", str(fake)]) == 0
    md = capsys.readouterr().out
    links = re.findall(r"!\[[^\]]+\]\(([^)]+\.png)\)", md)
    assert {os.path.basename(link) for link in links} == {p.name for p in pngs}
    assert all(os.path.isfile(link) for link in links)  # relative to where the Markdown goes (here: cwd)
