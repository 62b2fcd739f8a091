"""``fedkit run FILE`` under torchrun on two "hosts": network namespaces on a private bridge.

One rank per host, gloo over the bridge (``GLOO_SOCKET_IFNAME`` = the host's veth, addresses
10.77.S.1 and .2, host names fkhost1/fkhost2): the final model equals the serial simulator's bit
for bit (``model_sha256`` of ``--json``), the results database holds one run and only rank 0
wrote anything. A rank killed mid-run (SIGKILL of the worker under torchrun on host 2) ends the
run on host 1 with an error naming rank 1 and its host, the run is recorded interrupted with
a checkpoint, and the same commands again resume it, in the same run row, to the serial model.
Skipped where network namespaces cannot be made (not root, no iproute2).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.netns import TwoHosts, children, torchrun_argv, unavailable

pytestmark = [pytest.mark.slow, pytest.mark.dist]

# SCAFFOLD keeps client state (control variates) on the rank that owns each client, so the
# checkpoint gathers it and the resume hands it back; ~0.2 s a round on one core.
FILE = """
[data]
dataset = "synthetic"
partition = "natural"
alpha = 1.0
beta = 1.0
[data.options]
num_users = 12

[model]
name = "mlp"
hidden = [64]

[algorithm]
name = "scaffold"

[algorithm.local]
epochs = 2
batch_size = 10
lr = 0.05

[run]
rounds = 30
clients_per_round = 6
seed = 3
"""

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TIMEOUT = 240


@pytest.fixture(scope="module")
def hosts() -> Iterator[TwoHosts]:
    why = unavailable()
    if why is not None:
        pytest.skip(f"two network namespaces cannot be made here: {why}")
    with TwoHosts() as two:
        yield two


@pytest.fixture(scope="module")
def experiment(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("file") / "bridge.toml"
    path.write_text(FILE)
    return path


@pytest.fixture(scope="module")
def serial_sha(experiment: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The serial simulator's final model for the same file (a plain ``fedkit run``)."""
    out = tmp_path_factory.mktemp("serial")
    proc = subprocess.run(
        [sys.executable, "-m", "fedkit", "run", str(experiment), "--out", str(out), "--json", "-q"],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=TIMEOUT,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return str(json.loads(proc.stdout.strip().splitlines()[-1])["model_sha256"])


_PORT = [29600 + os.getpid() % 300]


def launch(
    hosts: TwoHosts, experiment: Path, outs: tuple[Path, Path]
) -> list[subprocess.Popen[str]]:
    """Host i runs node i of a 2-node static rendezvous at host 1's address (a fresh port)."""
    _PORT[0] += 1
    procs = []
    for i in (0, 1):
        args = ["-m", "fedkit", "run", str(experiment), "--out", str(outs[i]), "--json", "-q"]
        argv = torchrun_argv(
            nnodes=2, node_rank=i, master=hosts.hosts[0].address, port=_PORT[0], args=args
        )
        procs.append(hosts.popen(i, argv, ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    return procs


def wait(procs: list[subprocess.Popen[str]]) -> list[tuple[int, str, str]]:
    got = []
    for p in procs:
        out, err = p.communicate(timeout=TIMEOUT)
        got.append((p.returncode, out, err))
    return got


def runs(db: Path) -> list[sqlite3.Row]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
        c.row_factory = sqlite3.Row
        return list(c.execute("SELECT * FROM runs ORDER BY id"))


def rounds(db: Path, run_id: int) -> list[int]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
        return [r for (r,) in c.execute("SELECT round FROM rounds WHERE run_id = ?", (run_id,))]


def test_two_hosts_equal_the_serial_simulator(
    hosts: TwoHosts, experiment: Path, serial_sha: str, tmp_path: Path
) -> None:
    outs = (tmp_path / "host1", tmp_path / "host2")
    (rc0, out0, err0), (rc1, out1, err1) = wait(launch(hosts, experiment, outs))
    assert (rc0, rc1) == (0, 0), err0[-3000:] + err1[-3000:]
    doc = json.loads(out0.strip().splitlines()[-1])
    assert doc["status"] == "completed" and doc["rounds"] == 30
    assert doc["model_sha256"] == serial_sha
    # Rank 1 printed no result and wrote nothing; rank 0 recorded exactly one run.
    assert out1.strip() == "" and not outs[1].exists()
    (row,) = runs(outs[0] / "results.sqlite")
    assert row["status"] == "completed"
    assert json.loads(row["config"])["run"]["executor"] == "torchrun"
    placed = json.loads(row["environment"])["distributed"]
    a, b = hosts.hosts
    assert placed == {
        "launcher": "torchrun",
        "world_size": 2,
        "ranks": [f"{a.hostname} {a.address}", f"{b.hostname} {b.address}"],
    }
    assert sorted(rounds(outs[0] / "results.sqlite", row["id"])) == list(range(30))
    assert not (outs[0] / "checkpoints").exists()  # removed once the run completed


def test_killed_rank_interrupts_the_run_and_a_rerun_resumes_it(
    hosts: TwoHosts, experiment: Path, serial_sha: str, tmp_path: Path
) -> None:
    outs = (tmp_path / "host1", tmp_path / "host2")
    db = outs[0] / "results.sqlite"
    procs = launch(hosts, experiment, outs)
    deadline = time.monotonic() + TIMEOUT
    while True:  # let three rounds be recorded (and checkpointed), then kill rank 1's worker
        assert time.monotonic() < deadline and procs[0].poll() is None, "the run did not start"
        if db.exists():
            ids = [r["id"] for r in runs(db)]
            if ids and len(rounds(db, ids[0])) >= 3:
                break
        time.sleep(0.05)
    (worker,) = children(procs[1].pid)  # torchrun's one local rank on host 2
    os.kill(worker, signal.SIGKILL)
    (rc0, _, err0), (rc1, _, _) = wait(procs)
    assert rc0 != 0 and rc1 != 0
    b = hosts.hosts[1]
    named = f"rank 1 (host {b.hostname}, address {b.address}) stopped (no heartbeat)"
    flat = " ".join(err0.split())  # rich wraps long lines
    assert named in flat and "interrupted" in flat and "resumable" in flat, err0[-3000:]
    (row,) = runs(db)
    assert row["status"] == "interrupted"
    assert row["error"].startswith(f"RankLostError: {named} during ")
    done = len(rounds(db, row["id"]))
    assert 3 <= done < 30
    (ckpt,) = (outs[0] / "checkpoints").iterdir()
    assert (ckpt / "checkpoint.safetensors").exists()

    # The same commands again: the run resumes from its checkpoint and ends with the model of
    # the uninterrupted serial run.
    (rc0, out0, err0), (rc1, _, err1) = wait(launch(hosts, experiment, outs))
    assert (rc0, rc1) == (0, 0), err0[-3000:] + err1[-3000:]
    doc = json.loads(out0.strip().splitlines()[-1])
    assert doc["model_sha256"] == serial_sha and doc["rounds"] == 30
    (same,) = runs(db)  # resumed in its own row, the rounds after the checkpoint repeated
    assert (same["id"], same["status"]) == (row["id"], "completed")
    assert sorted(rounds(db, same["id"])) == list(range(30))
    assert not (outs[0] / "checkpoints").exists()
