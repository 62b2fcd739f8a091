"""Issue 19, item 6: a run killed with SIGKILL (no handler runs, nothing is recorded at the end)
does not stay ``running`` forever: the next ``fedkit runs list`` in that folder shows it
``interrupted`` (its process is gone), and ``fedkit run`` resumes it to the model of an
uninterrupted run (same ``model_sha256``), in the same row."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest

from fedkit.experiment.config import load_study
from fedkit.experiment.results import ResultsStore, results_path
from fedkit.experiment.runner import run_experiment
from tests.integration.test_cli_resume import EXPERIMENT, FEDKIT, ROUNDS, _interrupt_after, _rounds

pytestmark = pytest.mark.slow  # three fresh interpreters importing torch


def test_sigkill_then_runs_list_shows_interrupted_and_run_resumes(tmp_path: Path) -> None:
    file = tmp_path / "exp.toml"
    file.write_text(EXPERIMENT)
    (cfg,) = load_study(file, []).runs
    with ResultsStore(results_path(tmp_path / "plain")) as store:
        plain = run_experiment(cfg, store)
    assert plain.summary is not None

    out = tmp_path / "out"
    db = results_path(out)
    cmd = [*FEDKIT, "run", str(file), "--out", str(out), "--quiet", "--json"]
    rc, _ = _interrupt_after(cmd, db, 3, signal.SIGKILL)
    assert rc == -signal.SIGKILL
    ((rid, status, first),) = _rounds(db)
    assert status == "running" and 3 <= first < ROUNDS  # what SIGKILL leaves behind

    listed = subprocess.run(
        [*FEDKIT, "runs", "list", "--out", str(out)], capture_output=True, text=True, check=True
    ).stdout
    row = next(line for line in listed.splitlines() if f" {first} " in line)
    assert "interrupted" in row and "running" not in row, listed
    assert _rounds(db) == [(rid, "interrupted", first)]

    done = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    doc = json.loads(done.stdout.strip().splitlines()[-1])
    assert doc["run_id"] == rid and doc["status"] == "completed" and doc["rounds"] == ROUNDS
    assert doc["model_sha256"] == plain.summary.model_sha256
    assert _rounds(db) == [(rid, "completed", ROUNDS)]
