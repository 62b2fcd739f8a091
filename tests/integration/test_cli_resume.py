"""Must-show (issue 19): a run interrupted through the CLI — SIGINT (Ctrl-C), then SIGTERM —
is recorded ``interrupted`` with the rounds it finished, and ``fedkit run … --resume`` continues
it in the same run row to the model of an uninterrupted run (same ``model_sha256``)."""

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

from fedkit.experiment.config import load_study
from fedkit.experiment.results import ResultsStore, results_path
from fedkit.experiment.runner import run_experiment

pytestmark = pytest.mark.slow  # four fresh interpreters importing torch (~20 s)

_SCRIPT = Path(sys.executable).with_name("fedkit")
FEDKIT = (
    [str(_SCRIPT)]
    if _SCRIPT.exists()
    else [sys.executable, "-c", "from fedkit.cli import main; main()"]
)

ROUNDS = 60
EXPERIMENT = f"""
[data]
dataset = "synthetic"
partition = "natural"
alpha = 1.0
beta = 1.0
[data.options]
num_users = 20

[model]
name = "mlp"

[algorithm]
name = "fedavg"

[algorithm.local]
epochs = 2
batch_size = 5
lr = 0.05

[run]
rounds = {ROUNDS}
clients_per_round = 10
seed = 3
eval_every = 5
"""


def _rounds(db: Path) -> list[tuple[int, str, int]]:
    """(run id, status, rounds recorded) of every run, read as another process would."""
    if not db.exists():
        return []
    con = sqlite3.connect(db, timeout=30)
    try:
        return [
            (int(i), str(s), int(n))
            for i, s, n in con.execute(
                "SELECT id, status, (SELECT COUNT(*) FROM rounds WHERE run_id = runs.id) "
                "FROM runs ORDER BY id"
            )
        ]
    except sqlite3.OperationalError:  # the schema is being created
        return []
    finally:
        con.close()


def _interrupt_after(cmd: list[str], db: Path, k: int, sig: signal.Signals) -> tuple[int, str]:
    """Start ``cmd``, send ``sig`` once the run has recorded at least ``k`` rounds."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, f"the run ended before round {k}: {proc.communicate()[1]}"
        assert time.monotonic() < deadline, "no progress"
        runs = _rounds(db)
        if runs and runs[-1][1] == "running" and runs[-1][2] >= k:
            break
        time.sleep(0.02)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


def test_sigint_then_sigterm_then_resume_equals_uninterrupted(tmp_path: Path) -> None:
    file = tmp_path / "exp.toml"
    file.write_text(EXPERIMENT)
    (cfg,) = load_study(file, []).runs
    with ResultsStore(results_path(tmp_path / "plain")) as store:  # the uninterrupted run
        plain = run_experiment(cfg, store)
    assert plain.summary is not None

    out = tmp_path / "out"
    db = results_path(out)
    cmd = [*FEDKIT, "run", str(file), "--out", str(out), "--quiet", "--json"]

    rc, err = _interrupt_after(cmd, db, 3, signal.SIGINT)
    assert rc == 130, err[-2000:]
    assert "interrupted" in err and "run the same command again" in " ".join(err.split())
    ((rid, status, first),) = _rounds(db)
    assert status == "interrupted" and 3 <= first < ROUNDS
    listed = subprocess.run(
        [*FEDKIT, "runs", "list", "--out", str(out)], capture_output=True, text=True, check=True
    ).stdout
    row = next(line for line in listed.splitlines() if "interrupted" in line)
    assert f" {first} " in row  # rounds shown, not blank

    rc, err = _interrupt_after([*cmd, "--resume"], db, first + 3, signal.SIGTERM)
    assert rc == 130, err[-2000:]
    ((same, status, second),) = _rounds(db)
    assert (same, status) == (rid, "interrupted") and first + 3 <= second < ROUNDS
    with ResultsStore(db, create=False) as store:
        assert str(store.run(rid).error).startswith("KeyboardInterrupt: signal 15 (SIGTERM)")

    done = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    doc = json.loads(done.stdout.strip().splitlines()[-1])
    assert doc["run_id"] == rid and doc["status"] == "completed" and doc["rounds"] == ROUNDS
    assert doc["model_sha256"] == plain.summary.model_sha256
    assert doc["final_accuracy"] == plain.summary.final_accuracy
    assert doc["bytes_up"] == plain.summary.bytes_up
    assert _rounds(db) == [(rid, "completed", ROUNDS)]
    assert not (out / "checkpoints").exists()
