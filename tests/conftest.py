import os
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("MESBENCH_CACHE", str(Path(__file__).resolve().parent.parent / ".cache" / "test-data"))
os.environ["MESBENCH_DEVICE"] = "cpu"
# Under pytest-xdist the cores are shared between the test processes. The controller imports this file too (as
# one process) and its workers inherit what it set, so a value set here is set again in each worker: two workers
# with two threads each on two cores made every OpenMP kernel wait for a core (a test 10× slower).
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
_threads = str(max(1, min(2, (os.cpu_count() or 2) // _workers)))
if os.environ.get("OMP_NUM_THREADS") in (None, os.environ.get("MESBENCH_TEST_THREADS")):  # not the user's own
    os.environ["OMP_NUM_THREADS"] = os.environ["MESBENCH_TEST_THREADS"] = _threads

ROOT = Path(__file__).resolve().parent.parent


def tiny_suite(tmp_path: Path, name="tiny", formulations=("softmax",), **overrides) -> Path:
    """A suite small enough to train in seconds: 160 synthetic 32×32 images, 2 folds, 2 epochs."""
    doc = {
        "name": name,
        "dataset": {"name": "synthetic", "params": {"n_images": 160, "n_patients": 24, "size": [32, 32], "seed": 1}},
        "protocol": {"kind": "grouped", "folds": 2, "seed": 0, "test_fraction": 0.25},
        "training": {
            "epochs": 2,
            "lr": 0.003,
            "batch_size": 32,
            "finetune_epochs": 1,
            "finetune_lr": 0.001,
            "checkpoint_every": 0,  # every epoch: kill and resume tests catch cells part-way
        },
        "backbones": ["tiny"],
        "formulations": list(formulations),
    }
    for key, value in overrides.items():
        section, _, field = key.partition("__")
        if field:
            doc[section][field] = value
        elif isinstance(value, dict) and isinstance(doc.get(section), dict):
            doc[section] = {**doc[section], **value}
        else:
            doc[section] = value
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture
def make_suite(tmp_path):
    def make(**kw):
        return tiny_suite(tmp_path, **kw)

    return make


from services import pg_server, slurm_cluster  # noqa: E402, F401  (real services, as session fixtures)


def pytest_collection_modifyitems(config, items):
    """The longest serial chains first. An xdist_group runs on one worker, one test after another (the real
    PostgreSQL and Slurm tests are ten minutes of them); scheduled where collection puts them, near the end, they
    kept one worker busy while the other had nothing left. Independent tests keep their order."""

    def order(item):
        mark = item.get_closest_marker("xdist_group")
        group = mark.args[0] if mark and mark.args else None
        return 0 if group == "services" else 1 if group else 2

    items.sort(key=order)
