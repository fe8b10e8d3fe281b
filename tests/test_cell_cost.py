"""What a cell costs beyond the model step: checkpoints written in the background (and what a kill during one
leaves), `training.checkpoint_every`, `bench perf --cell` and its null backbone, several workers per GPU, longest
cells first, and the time left in `bench status`."""

import os
import signal
import subprocess
import sys
import threading
import time

import pandas as pd
import pytest
import torch
from test_run import metrics_of

from benchmark.cli import main
from benchmark.train import loop


def _spy_saves(monkeypatch, delay=0.0):
    seen = []
    real = loop.atomic_save

    def spy(obj, path):
        if delay:
            time.sleep(delay)
        epoch = obj["state"]["epoch"] if isinstance(obj, dict) and "state" in obj else None
        seen.append((threading.current_thread().name, path.name, epoch))
        return real(obj, path)

    monkeypatch.setattr(loop, "atomic_save", spy)
    return seen


def _one_cell(make_suite, tmp_path, name, **training):
    suite = make_suite(name=name, formulations=["softmax"], training={"epochs": 3, "early_stopping": 50, **training})
    out = tmp_path / name
    assert main(["run", str(suite), "--out", str(out), "--quiet", "--only", "fold=0"]) == 0
    return out


def test_checkpoints_are_written_by_the_background_thread_best_before_last(make_suite, tmp_path, monkeypatch):
    seen = _spy_saves(monkeypatch)
    _one_cell(make_suite, tmp_path, "bg", checkpoint_every=0)
    assert seen and all(thread == "checkpoint" for thread, _, _ in seen)  # never the training thread
    assert [epoch for _, name, epoch in seen if name == "last.pt"] == [1, 2, 3]  # every epoch when asked
    for i, (_, name, _) in enumerate(seen):
        if name == "best.pt":  # a best epoch lands before the last.pt that refers to it
            assert seen[i + 1][1] == "last.pt"


def test_checkpoint_every_bounds_the_saves_by_training_time(make_suite, tmp_path, monkeypatch):
    seen = _spy_saves(monkeypatch)
    _one_cell(make_suite, tmp_path, "rare", checkpoint_every=3600)
    # three sub-second epochs inside one hour: only the last epoch is saved (with the best one before it)
    assert [epoch for _, name, epoch in seen if name == "last.pt"] == [3]
    assert [name for _, name, _ in seen].count("best.pt") == 1


def test_the_training_loop_does_not_wait_for_the_disk_and_saves_what_was_there_at_save_time(tmp_path, monkeypatch):
    _spy_saves(monkeypatch, delay=0.5)  # a slow shared filesystem
    writer = loop.CheckpointWriter(torch.device("cpu"))
    weights = torch.zeros(1000)
    writer.save([({"w": weights}, tmp_path / "last.pt")])
    weights += 1  # the next optimizer step changes the live tensor in place
    stalled = writer.stall
    writer.wait()
    assert stalled < 0.5  # the save returned before the 0.5 s write was done
    assert torch.equal(torch.load(tmp_path / "last.pt", weights_only=True)["w"], torch.zeros(1000))


def test_a_failed_background_write_is_raised_in_the_training_loop(make_suite, tmp_path, monkeypatch, capsys):
    import errno

    def full(obj, path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(loop, "atomic_save", full)
    suite = make_suite(name="full", formulations=["softmax"])
    assert main(["run", str(suite), "--out", str(tmp_path / "full"), "--quiet", "--only", "fold=0"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "disk is full" in err and "Traceback" not in err


SLOW_WRITES = """
import sys, time
from benchmark.train import loop
real = loop.atomic_save
def slow(obj, path):  # the temp file is written, then the disk is slow to finish it
    tmp = path.with_name(path.name + ".slowdisk.tmp")
    tmp.write_bytes(b"partial")
    time.sleep(0.6)
    tmp.unlink()
    return real(obj, path)
loop.atomic_save = slow
from benchmark.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _epoch_of(last):
    try:
        return torch.load(last, weights_only=True)["state"]["epoch"]
    except Exception:  # absent, or being replaced right now
        return 0


@pytest.mark.slow
def test_a_kill_during_a_background_write_resumes_to_the_uninterrupted_result(make_suite, tmp_path):
    suite = make_suite(
        name="killwrite",
        formulations=["softmax"],
        training={"epochs": 5, "lr": 0.003, "batch_size": 16, "early_stopping": 50},
    )
    # a killed process's claim goes stale in 2 s, not the default minute, so each resume starts at once
    env = {**os.environ, "MESBENCH_DEVICE": "cpu", "OMP_NUM_THREADS": "1", "MESBENCH_STALE_SECONDS": "2",
           "MESBENCH_HEARTBEAT_SECONDS": "0.25"}  # fmt: skip
    run = ["run", str(suite), "--quiet", "--only", "fold=0", "--out"]
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    assert subprocess.run([sys.executable, "-m", "benchmark.cli", *run, str(ref)], env=env).returncode == 0
    script = tmp_path / "slow_writes.py"
    script.write_text(SLOW_WRITES)
    kills, saved = [], -1
    for _ in range(3):
        p = subprocess.Popen([sys.executable, str(script), *run, str(killed)], env=env)
        deadline = time.time() + 120
        while p.poll() is None and time.time() < deadline:
            writing = list(killed.glob("cells/*/*.slowdisk.tmp"))
            last = writing[0].with_name("last.pt") if writing else None
            # kill inside a write, each time one epoch later than the last completed save of the previous kill
            if last is not None and _epoch_of(last) > saved:
                p.send_signal(signal.SIGKILL)
                saved = _epoch_of(last)
                kills.append(saved)
                break
            time.sleep(0.02)
        p.wait()
    assert len(kills) >= 2 and kills[-1] >= 1, f"never caught writes in flight: {kills}"
    p = subprocess.run(
        [sys.executable, "-m", "benchmark.cli", *run, str(killed)], env=env, capture_output=True, text=True
    )
    assert p.returncode == 0, p.stderr
    pd.testing.assert_frame_equal(metrics_of(ref), metrics_of(killed))
    assert not list(killed.rglob("*.tmp"))  # a killed write's temp file is cleaned up, never used


def test_bench_perf_cell_breaks_an_epoch_down_on_the_null_backbone(capsys):
    from benchmark.tools.perf import cell_perf

    code = main(["perf", "--cell", "--backbone", "null", "--size", "64x48", "--images", "120", "--epochs", "2"])
    assert code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "bench perf --cell — null · 64×48" in out and "a checkpoint every epoch" in out
    assert "checkpoint stall:" in out and "% of the epoch" in out and "per-epoch fixed cost" in out
    assert "per-cell fixed cost: before the first batch" in out
    r = cell_perf("null", (48, 64), 32, 120, 2)
    assert r.epoch == pytest.approx(sum(r.parts.values()))
    assert r.stall_share == pytest.approx(r.parts["checkpoint"] / r.epoch)
    assert r.epochs == 2 and r.n_train + r.n_val + r.n_test == 120


def test_the_null_backbone_costs_nothing_and_trains(make_suite, tmp_path):
    from backbones import create_backbone, model_cost

    model, d, _ = create_backbone("null")
    x = torch.rand(2, 3, 8, 8)
    assert d == 3 and torch.allclose(model(x), x.mean(dim=(2, 3)))
    assert model_cost(model, (288, 352))["params"] == 0
    suite = make_suite(name="null", formulations=["softmax"], backbones=["null"])
    assert main(["run", str(suite), "--out", str(tmp_path / "null"), "--quiet", "--only", "fold=0"]) == 0


def test_a_device_named_twice_takes_two_workers(monkeypatch):
    from benchmark.cli.run import assign_devices, check_workers
    from benchmark.errors import BenchError

    assert assign_devices(4, ["0", "0", "1", "1"]) == ["0", "0", "1", "1"]
    assert assign_devices(3, ["0", "0"]) == ["0", "0", "0"]
    assert assign_devices(4, ["0", "1"]) == ["0", "1", "0", "1"]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    check_workers(2, "0,0")  # two workers on one GPU
    check_workers(8, "0,1")  # four on each
    with pytest.raises(BenchError, match="puts 5 workers on GPU 0"):
        check_workers(5, "0,0")


def test_longest_cells_first_stage_one_before_its_fine_tuning(make_suite, tmp_path):
    from benchmark.run.runner import Runner
    from benchmark.suite.loading import load_suite

    suite = load_suite(make_suite(name="order", formulations=["softmax", "softmax+f1"], backbones=["null", "tiny"]))
    cells = Runner(suite, tmp_path / "order").prepare()
    order = [(c.backbone.name, c.depends is not None) for c in cells]
    # tiny (a ResNet) costs more FLOPs than null: its cells come first, then null's; fine-tuned cells last
    assert order == [("tiny", False)] * 2 + [("null", False)] * 2 + [("tiny", True)] * 2 + [("null", True)] * 2


def test_status_estimates_the_time_left_from_finished_cells():
    from benchmark.cli.status import time_left

    cells = pd.DataFrame(
        [("a", "softmax", "k1"), ("a", "softmax", "k2"), ("a", "softmax", "k3"), ("a", "mtl", "k4"),
         ("b", "softmax", "k5")],
        columns=["backbone", "formulation", "key"],
    )  # fmt: skip
    now = 10_000.0
    rows = {
        "k1": {"status": "done", "owner": "w", "started": 0.0, "finished": 600.0},
        "k2": {"status": "done", "owner": "w", "started": 0.0, "finished": 1200.0},
        "k4": {"status": "running", "owner": "w", "started": now - 300, "finished": None},
    }
    text = time_left(cells, rows, now)
    # k3: the mean of a·softmax (900 s); k4: a's mean 900 s less the 300 s it has run; k5: nothing to go by
    assert text.startswith("time left: ≈ 25 min of cell time")
    assert "1 cell(s) of backbones with no finished cell yet are not counted" in text
