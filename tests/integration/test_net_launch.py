"""`fedkit launch` end to end through the real CLI and fresh worker processes: its final JSON line
has the model of `fedkit run` on the same file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.net, pytest.mark.slow]

EXPERIMENT = """
[data]
dataset = "synthetic"
partition = "natural"
num_clients = 3

[model]
name = "logreg"

[algorithm]
name = "fedprox"
clients_per_round = 2
local_steps = 5
lr = 0.05
mu = 0.1

[run]
rounds = 3
seed = 11
"""


def fedkit(*args: str, cwd: Path) -> dict[str, object]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", "from fedkit.cli import main; main()", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=240, check=True,
    )  # fmt: skip
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("workers", [3, 2])  # 2: one process serves clients 0-1 (--clients)
def test_launch_matches_fedkit_run(tmp_path: Path, workers: int) -> None:
    exp = tmp_path / "exp.toml"
    exp.write_text(EXPERIMENT)
    deployed = fedkit("launch", "--workers", str(workers), "--experiment", str(exp), "--out",
                      str(tmp_path / "launch"), "--json", cwd=tmp_path)  # fmt: skip
    simulated = fedkit("run", str(exp), "--out", str(tmp_path / "runs"), "--json", cwd=tmp_path)
    assert deployed["model_sha256"] == simulated["model_sha256"]
    assert deployed["final_accuracy"] == simulated["final_accuracy"]
    assert deployed["committed_rounds"] == 3
    for k in range(workers):
        assert "rounds served" in (tmp_path / "launch" / f"worker-{k}.log").read_text()
