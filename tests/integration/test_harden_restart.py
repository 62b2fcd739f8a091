"""A coordinator SIGKILLed and restarted through the CLI after a realistic delay (issue 18,
part 3): every process is a fresh ``python -m fedkit`` interpreter (no preloaded forkserver), the
coordinator stays down 10 s, and the workers wait it out and finish the run with the model of an
uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.test_net_deploy import free_port, serial_sha, write_experiment

pytestmark = [pytest.mark.net, pytest.mark.slow]


def completed_rounds(out: Path) -> int:
    try:
        with sqlite3.connect(out / "coordinator.db", timeout=5) as con:
            row = con.execute("SELECT completed_rounds FROM checkpoint").fetchone()
    except sqlite3.Error:
        return 0
    return 0 if row is None else int(row[0])


def test_coordinator_sigkilled_and_restarted_through_the_cli_after_10_s(tmp_path: Path) -> None:
    exp = write_experiment(
        tmp_path / "exp.toml", clients=3, per_round=3, rounds=5, steps=20, deadline=60,
        liveness=10,
    )  # fmt: skip
    out = tmp_path / "out"
    address = f"127.0.0.1:{free_port()}"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    fedkit = [sys.executable, "-m", "fedkit"]
    coordinator = [*fedkit, "coordinator", "--experiment", str(exp), "--listen", address,
                   "--out", str(out), "--json", "--min-workers", "3"]  # fmt: skip
    procs: list[subprocess.Popen[bytes]] = []
    try:
        first = subprocess.Popen(coordinator, env=env, stdout=subprocess.PIPE)
        procs.append(first)
        workers = [
            subprocess.Popen([*fedkit, "worker", "--coordinator", address, "--experiment",
                              str(exp), "--client-id", str(c)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            for c in range(3)
        ]  # fmt: skip
        procs += workers
        end = time.monotonic() + 180
        while completed_rounds(out) < 2:
            assert time.monotonic() < end, "round 2 not committed within 180 s"
            assert first.poll() is None, "the coordinator ended early"
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        time.sleep(10.0)  # the operator takes a while; the CLI then takes seconds to start
        second = subprocess.Popen(coordinator, env=env, stdout=subprocess.PIPE)
        procs.append(second)
        stdout, _ = second.communicate(timeout=240)
        assert second.returncode == 0, stdout
        summary = json.loads(stdout.decode().strip().splitlines()[-1])
        assert summary["status"] == "completed" and summary["committed_rounds"] == 5
        assert summary["start_round"] >= 2
        assert summary["model_sha256"] == serial_sha(exp)
        for w in workers:
            log, _ = w.communicate(timeout=60)
            assert w.returncode == 0, log.decode()[-2000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
