"""``torchrun --standalone --nproc-per-node 2 -m fedkit run STUDY``: a study's arms one after
another on the whole group (loopback), each equal to the serial simulator's; refusals.

The two-host version over a bridge is ``test_torchrun_bridge.py`` (slow).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedkit.experiment.results import ResultsStore, results_path
from tests.integration.test_cli_run import cli
from tests.integration.test_runner import TINY

STUDY = (
    TINY.replace('name = "fedavg"', 'name = "scaffold"')
    + """
[study]
name = "group"

[[arms]]
name = "scaffold"

[[arms]]
name = "fedprox"
algorithm.name = "fedprox"
algorithm.mu = 0.1

[[arms]]
name = "centralized"
algorithm.name = "centralized"
"""
)


@pytest.mark.dist
def test_study_arms_run_one_after_another_on_two_ranks(tmp_path: Path) -> None:
    file = tmp_path / "study.toml"
    file.write_text(STUDY)
    serial = CliRunner().invoke(
        cli(), ["run", str(file), "--out", str(tmp_path / "serial"), "--json", "-q"]
    )
    assert serial.exit_code == 0, serial.output
    want = {
        d["name"]: d["model_sha256"]
        for d in (json.loads(ln) for ln in serial.stdout.splitlines() if ln.startswith("{"))
    }
    assert len(want) == 3
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node=2",
            "-m",
            "fedkit",
            "run",
            str(file),
            "--out",
            str(tmp_path / "group"),
            "--json",
            "-q",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"},
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = {
        d["name"]: d["model_sha256"]
        for d in (json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith("{"))
    }
    assert got == want  # one JSON line per arm, from rank 0 only
    with ResultsStore(results_path(tmp_path / "group"), create=False) as store:
        rows = store.runs()
    assert [r.name for r in rows] == ["scaffold", "fedprox", "centralized"]
    assert all(r.status == "completed" for r in rows)
    # Federated arms ran on the group; the centralised baseline on rank 0 alone.
    assert [r.config["run"]["executor"] for r in rows] == ["torchrun", "torchrun", "serial"]
    assert [("distributed" in r.environment) for r in rows] == [True, True, False]


def test_distributed_flag_needs_torchrun(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    file = tmp_path / "tiny.toml"
    file.write_text(TINY)
    got = CliRunner().invoke(cli(), ["run", str(file), "--out", str(tmp_path), "--distributed"])
    assert got.exit_code == 2
    assert "--distributed needs torchrun's environment (RANK, WORLD_SIZE" in got.output
    assert not results_path(tmp_path).exists()


def test_torchrun_executor_without_torchrun_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RANK", raising=False)
    file = tmp_path / "tiny.toml"
    file.write_text(TINY.replace("seed = 7", 'seed = 7\nexecutor = "torchrun"'))
    got = CliRunner().invoke(cli(), ["run", str(file), "--out", str(tmp_path)])
    assert got.exit_code == 2
    assert "run.executor = 'torchrun' runs on the ranks of a torchrun launch" in got.output
    assert not results_path(tmp_path).exists()


def test_malformed_torchrun_environment_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "two")
    file = tmp_path / "tiny.toml"
    file.write_text(TINY)
    got = CliRunner().invoke(cli(), ["run", str(file), "--out", str(tmp_path)])
    assert got.exit_code == 2
    assert "torchrun environment: WORLD_SIZE must be an integer, got 'two'" in got.output
