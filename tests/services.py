"""Real services for the tests, started here and stopped afterwards: a throwaway PostgreSQL 15 cluster and a
single-node Slurm cluster (munged, slurmctld, slurmd on this host), both from Debian packages that .ci/run
installs. Missing packages skip these tests on a developer machine and fail them under CI."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def _missing(what: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{what} and root are needed here; .ci/run installs it")
    pytest.skip(f"needs root and {what} (.ci/run installs it)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_available() -> bool:
    return (PG_BIN / "initdb").exists() and os.geteuid() == 0


@pytest.fixture(scope="session")
def pg_server():
    """A throwaway PostgreSQL server for the whole session: a function that creates a database, returns its URL."""
    if not postgres_available():
        _missing("PostgreSQL 15 (Debian `postgresql`)")
    with postgres() as database:
        yield database


@contextlib.contextmanager
def postgres():
    """initdb + pg_ctl as user postgres in a temporary directory, on a free local port (also used by the
    scripts/ benchmarks). Yields a function that creates a database and returns its URL."""
    data = Path(tempfile.mkdtemp(prefix="mesbench-pg-"))
    shutil.chown(data, "postgres", "postgres")
    port = _free_port()
    as_pg = ["runuser", "-u", "postgres", "--"]
    subprocess.run(
        as_pg + [str(PG_BIN / "initdb"), "-D", str(data / "db"), "-A", "trust", "-U", "postgres"],
        check=True,
        capture_output=True,
    )
    options = f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -c max_connections=200"
    subprocess.run(
        as_pg + [str(PG_BIN / "pg_ctl"), "-D", str(data / "db"), "-l", str(data / "log"), "-w", "-o", options, "start"],
        check=True,
        capture_output=True,
    )

    def database(name):
        subprocess.run(
            as_pg + ["psql", "-h", "127.0.0.1", "-p", str(port), "-c", f"CREATE DATABASE {name}"],
            check=True,
            capture_output=True,
        )
        return f"postgresql://postgres@127.0.0.1:{port}/{name}"

    def pg_ctl(action, *extra):
        subprocess.run(
            as_pg + [str(PG_BIN / "pg_ctl"), "-D", str(data / "db"), "-l", str(data / "log"), "-w", *extra, action],
            check=True,
            capture_output=True,
        )

    database.stop = lambda: pg_ctl("stop", "-m", "immediate")  # as a crash or a pulled plug would
    database.start = lambda: pg_ctl("start", "-o", options)

    try:
        yield database
    finally:
        subprocess.run(
            as_pg + [str(PG_BIN / "pg_ctl"), "-D", str(data / "db"), "-m", "fast", "stop"], capture_output=True
        )
        shutil.rmtree(data, ignore_errors=True)


SLURM_CONF = """\
ClusterName=mesbench-test
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
AuthType=auth/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd.pid
SlurmctldLogFile={dir}/slurmctld.log
SlurmdLogFile={dir}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
KillWait=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
NodeName={host} CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName=test Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def slurm_available() -> bool:
    return all(shutil.which(b) for b in ("munged", "slurmctld", "slurmd", "sbatch")) and os.geteuid() == 0


@pytest.fixture(scope="session")
def slurm_cluster():
    """A single-node Slurm cluster for the whole session: the environment (SLURM_CONF) sbatch and submitit need."""
    if not slurm_available():
        _missing("Slurm (Debian `slurm-wlm` and `munge`)")
    with slurm() as env:
        yield env


@contextlib.contextmanager
def slurm():
    """A single-node Slurm cluster, as in SPEC.md: munged (as user munge, its own socket), slurmctld and slurmd
    as root on free ports, configured in a temporary directory. Yields the environment (SLURM_CONF) that sbatch,
    squeue and submitit need."""
    d = Path(tempfile.mkdtemp(prefix="mesbench-slurm-"))
    for sub in ("state", "spool", "munge"):
        (d / sub).mkdir()
    d.chmod(0o755)
    shutil.chown(d / "munge", "munge", "munge")
    key = d / "munge" / "munge.key"
    subprocess.run(["mungekey", "-c", "-k", str(key)], check=True, capture_output=True)
    shutil.chown(key, "munge", "munge")
    munge_socket = d / "munge" / "munge.socket"
    subprocess.run(
        [
            "runuser",
            "-u",
            "munge",
            "--",
            "munged",
            f"--key-file={key}",
            f"--socket={munge_socket}",
            f"--pid-file={d / 'munge' / 'munged.pid'}",
            f"--log-file={d / 'munge' / 'munged.log'}",
            f"--seed-file={d / 'munge' / 'munged.seed'}",
        ],  # fmt: skip
        check=True,
        capture_output=True,
    )
    host = socket.gethostname().split(".")[0]
    memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20 // 2
    conf = d / "slurm.conf"
    conf.write_text(
        SLURM_CONF.format(
            host=host,
            dir=d,
            ctld_port=_free_port(),
            d_port=_free_port(),
            munge_socket=munge_socket,
            cpus=os.cpu_count() or 1,
            memory_mb=memory_mb,
        )
    )
    env = {**os.environ, "SLURM_CONF": str(conf)}
    subprocess.run(["slurmctld", "-f", str(conf)], check=True, capture_output=True, env=env)
    subprocess.run(["slurmd", "-f", str(conf)], check=True, capture_output=True, env=env)
    deadline = time.time() + 60
    while time.time() < deadline:
        state = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, env=env).stdout.strip()
        if state in ("idle", "mixed", "allocated"):
            break
        time.sleep(0.5)
    else:
        raise RuntimeError(f"the test Slurm node did not come up (state {state!r}); logs in {d}")
    try:
        yield env
    finally:
        subprocess.run(["scancel", "--full", "--signal=KILL", "--user=root"], capture_output=True, env=env)
        subprocess.run(["scancel", "--user=root"], capture_output=True, env=env)
        deadline = time.time() + 15
        while time.time() < deadline and subprocess.run(["squeue", "-h"], capture_output=True, env=env).stdout.strip():
            time.sleep(0.5)
        for pid_file in ("slurmd.pid", "slurmctld.pid", "munge/munged.pid"):
            with contextlib.suppress(OSError, ValueError):
                os.kill(int((d / pid_file).read_text()), 15)
        time.sleep(1)
        shutil.rmtree(d, ignore_errors=True)
