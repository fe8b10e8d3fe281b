"""`bench check`'s default (#37): the CI suite made with default numerics at any thread count passes against the one
committed baseline (recorded with scripts/ci-suite's pinned numerics), while a real regression — an untrained model,
a planted decoding bug — fails, naming the formulations and metrics."""

import shutil
import sqlite3
from pathlib import Path

import pytest

from benchmark.cli import main

ROOT = Path(__file__).resolve().parent.parent
CI_SUITE = ROOT / "suites" / "ci.yaml"
BASELINE = ROOT / "suites" / "baselines" / "ci.csv"
SUBSET = ("softmax", "coral", "mtl")  # three heads and decodings, one fold; the whole suite runs in scripts/ci-suite
FOLD = "0"
# One thread and an oversubscribed four; the default (every core: two on CI) is scripts/ci-suite's own check in .ci/run
THREADS = ("1", "4")


def subset_baseline(path: Path) -> Path:
    """The committed baseline's rows of the cells these tests train (its header kept)."""
    lines = BASELINE.read_text().splitlines(keepends=True)
    header = [line for line in lines if line.startswith("#")]
    body = [line for line in lines if not line.startswith("#")]
    keep = [body[0]] + [line for line in body[1:] if line.split(",")[1] in SUBSET and line.split(",")[3] == FOLD]
    path.write_text("".join(header + keep))
    return path


# Its module fixture is built once, on one worker, rather than once on each.
pytestmark = pytest.mark.xdist_group("test_noise_check")


@pytest.fixture(scope="module")
def ci_runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("noise")
    only = ["--only", "formulation=" + ",".join(SUBSET), "--only", f"fold={FOLD}", "--quiet"]
    for threads in THREADS:
        assert main(["run", str(CI_SUITE), "--out", str(d / f"t{threads}"), "--threads", threads, *only]) == 0
    assert main(["run", str(CI_SUITE), "--out", str(d / "untrained"), "--set", "training.lr=0.0000001", *only]) == 0
    return d, subset_baseline(d / "baseline.csv")


@pytest.mark.slow
@pytest.mark.parametrize("threads", THREADS)
def test_default_numerics_at_any_thread_count_pass_the_committed_baseline(ci_runs, capsys, threads):
    d, baseline = ci_runs
    capsys.readouterr()
    assert main(["check", str(d / f"t{threads}"), "--baseline", str(baseline)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "check passed: 0 regression(s)" in out
    assert "paired bootstrap over the evaluated images" in out and "Holm" in out and "α = 0.05" in out
    assert "Smallest drop it could flag at this design: median" in out


@pytest.mark.slow
def test_an_untrained_model_fails_naming_its_formulations_and_metrics(ci_runs, capsys):
    d, baseline = ci_runs
    capsys.readouterr()
    assert main(["check", str(d / "untrained"), "--baseline", str(baseline)]) == 1
    out = " ".join(capsys.readouterr().out.split())
    assert "check FAILED" in out and "REGRESSIONS" in out
    for f in SUBSET:
        assert f"regressed: formulation {f} on tiny" in out
    assert "macro-F1" in out or "QWK" in out
    capsys.readouterr()
    assert main(["check", str(d / "untrained"), "--baseline", str(baseline), "--markdown"]) == 1
    md = capsys.readouterr().out
    assert md.startswith("## bench check: FAILED") and "### Regressions" in md
    assert "| backbone | formulation | split | metric | Δ (now − baseline) | 95% CI | p (Holm) | tolerance |" in md


@pytest.mark.slow
def test_a_planted_decoding_bug_fails_and_blames_only_that_formulation(ci_runs, tmp_path, capsys):
    d, baseline = ci_runs
    planted = tmp_path / "planted"
    shutil.copytree(d / "t1", planted)
    with sqlite3.connect(planted / "results.db") as conn:  # coral's decoding reads one grade too high
        keys = [k for (k,) in conn.execute("SELECT key FROM cells WHERE formulation = 'coral'")]
        conn.executemany("UPDATE predictions SET y_pred = MIN(y_pred + 1, 3) WHERE key = ?", [(k,) for k in keys])
    capsys.readouterr()
    assert main(["check", str(planted), "--baseline", str(baseline)]) == 1
    out = " ".join(capsys.readouterr().out.split())
    assert "regressed: formulation coral on tiny" in out
    assert "formulation softmax" not in out and "formulation mtl" not in out


@pytest.mark.slow
def test_two_runs_are_compared_the_same_way_and_exact_stays_value_by_value(ci_runs, capsys):
    d, baseline = ci_runs
    capsys.readouterr()
    assert main(["check", str(d / "t4"), "--against", str(d / "t1")]) == 0
    assert main(["check", str(d / "untrained"), "--against", str(d / "t1")]) == 1
    capsys.readouterr()
    assert main(["check", str(d / "t1"), "--baseline", str(baseline), "--exact"]) in (0, 1)
    out = capsys.readouterr().out
    assert "values compared" in out  # the per-value comparison's own verdict


def test_a_baseline_without_predictions_says_to_record_it_again(tmp_path, capsys):
    from fake_run import write_fake_run

    run = write_fake_run(tmp_path / "run", backbones=("resnet18",), formulations=("softmax",), folds=2, n_test=40)
    old = tmp_path / "old.csv"
    assert main(["check", str(run), "--baseline", str(old), "--update"]) == 0
    text = old.read_text().splitlines(keepends=True)
    old.write_text("".join(line for line in text if ",prediction,grade," not in line))
    capsys.readouterr()
    assert main(["check", str(run), "--baseline", str(old)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "no per-image predictions" in err and "--update" in err and "--exact" in err
