"""What a user sees around the edges: help on every option, a version, plain progress lines without a
terminal, the report of the run that finished last, and finished cells that keep only what is needed."""

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmark.cli import build_parser, main
from benchmark.run.store import Store

ROOT = Path(__file__).resolve().parent.parent


def _actions(parser, path=("bench",)):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _actions(sub, path + (name,))
        elif not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            yield path, action


def test_every_option_and_argument_of_every_verb_has_help():
    missing = [f"{' '.join(p)} {a.option_strings or a.dest}" for p, a in _actions(build_parser()) if not a.help]
    assert missing == []


def test_version(capsys):
    try:
        main(["--version"])
    except SystemExit as exc:
        assert exc.code == 0
    assert capsys.readouterr().out.startswith("mesbench ")


def test_without_a_terminal_progress_is_plain_lines_per_cell(make_suite, tmp_path):
    suite = make_suite(name="plain", formulations=["softmax", "mtl+f1"])
    env = {**os.environ, "MESBENCH_DEVICE": "cpu", "MESBENCH_CACHE": os.environ["MESBENCH_CACHE"]}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmark.cli", "run", str(suite), "--out", str(tmp_path / "p")],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("[")]
    assert len(lines) == 6 and lines[0].startswith("[1/6]") and lines[-1].startswith("[6/6]")
    assert all("val macro-F1" in line and " s · " in line for line in lines)
    assert any("mtl+f1" in line for line in lines)
    assert "\x1b[" not in proc.stderr  # no terminal control codes in a log


def test_report_without_a_run_takes_the_one_that_finished_last_and_says_so(make_suite, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for name in ("older", "newer"):
        suite = make_suite(name=name, formulations=["softmax"])
        assert main(["run", str(suite), "--quiet", "--only", "fold=0"]) == 0
        time.sleep(0.05)
    os.utime(tmp_path / "runs" / "older" / "results.db")  # touched later, but finished earlier
    capsys.readouterr()
    assert main(["report"]) == 0
    out = capsys.readouterr()
    assert "# mesbench report — newer" in out.out
    assert "report of runs/newer (the run under ./runs that finished last)" in out.err


def test_a_finished_cell_keeps_only_its_best_checkpoint_and_the_summary_says_the_size(make_suite, tmp_path, capsys):
    suite = make_suite(name="disk", formulations=["softmax"])
    out = tmp_path / "disk"
    assert main(["run", str(suite), "--out", str(out), "--only", "fold=0", "--quiet"]) == 0
    printed = capsys.readouterr().out
    key = Store(out, create=False).cell_rows()[0]["key"]
    assert sorted(p.name for p in (out / "cells" / key).iterdir()) == ["best.pt"]
    assert "on disk" in " ".join(printed.split())
    keep = make_suite(name="keep", formulations=["softmax"], training={"epochs": 2, "keep": "last"})
    assert main(["run", str(keep), "--out", str(tmp_path / "keep"), "--only", "fold=0", "--quiet"]) == 0
    key = Store(tmp_path / "keep", create=False).cell_rows()[0]["key"]
    assert sorted(p.name for p in (tmp_path / "keep" / "cells" / key).iterdir()) == ["best.pt", "last.pt"]


def test_perf_says_each_stage_as_it_finishes(capsys):
    assert main(["perf", "--no-model", "--images", "16", "--batch", "8", "--size", "40x32", "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "[1/2] (1) data path" in err and "[2/2] (2) usual recipe" in err
