"""`fedkit run` and `fedkit runs` end to end: --json parity with a direct core run, clear config
errors that write nothing, and list/show/export over an output directory."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from fedkit.experiment.cli import run, runs_app
from fedkit.experiment.results import ResultsStore, results_path
from tests.integration.test_runner import TINY, direct_fedavg_sha

runner = CliRunner()

_SCRIPT = Path(sys.executable).with_name("fedkit")
FEDKIT = (
    [str(_SCRIPT)]
    if _SCRIPT.exists()
    else [sys.executable, "-c", "from fedkit.cli import main; main()"]
)
"""The installed console script (the real entry point), or the same entry called directly."""


def cli() -> typer.Typer:
    """The same commands `fedkit` mounts, on a fresh app."""
    app = typer.Typer()
    app.command("run")(run)
    app.add_typer(runs_app, name="runs")
    return app


STUDY = (
    TINY
    + """
[study]
name = "quick"

[[arms]]
name = "fedavg"

[[arms]]
name = "fedprox"
algorithm.name = "fedprox"
algorithm.mu = 0.1

[[arms]]
name = "centralized"
algorithm.name = "centralized"
"""
)


REQUIRED_KEYS = (
    "run_id",
    "rounds",
    "final_accuracy",
    "best_accuracy",
    "rounds_to_target",
    "wall_seconds",
    "bytes_up",
    "bytes_down",
    "model_sha256",
)


def check_json_line(stdout: str, out: Path) -> None:
    """The final stdout line is the run's JSON object, equal to a direct core run."""
    doc = json.loads(stdout.strip().splitlines()[-1])
    for key in REQUIRED_KEYS:
        assert key in doc
    assert doc["rounds"] == 2 and doc["status"] == "completed"
    # accuracies 0.350, 0.350 (chance 0.1): the --set target 0.3 is reached at round 1
    assert doc["rounds_to_target"] == 1 and doc["bytes_up"] > 0 and doc["bytes_down"] > 0
    assert 0.0 <= doc["final_accuracy"] <= doc["best_accuracy"] <= 1.0
    assert doc["wall_seconds"] > 0
    assert doc["model_sha256"] == direct_fedavg_sha(seed=7, rounds=2, cohort=4)
    with ResultsStore(results_path(out), create=False) as store:
        row = store.run(doc["run_id"])
        assert row.status == "completed" and row.summary is not None
        assert row.summary.model_sha256 == doc["model_sha256"]
        assert row.config["run"]["rounds"] == 2  # the --set override is what was recorded
        assert row.config["run"]["target_accuracy"] == 0.3
        assert row.config["algorithm"]["local"]["lr"] == 0.05
        assert row.config["algorithm"]["server"] == {"name": "sgd", "lr": 1.0, "momentum": 0.0}


def test_run_json_matches_direct_core_run(tmp_path: Path) -> None:
    exp = tmp_path / "tiny.toml"
    exp.write_text(TINY)
    out = tmp_path / "out"
    args = ["run", str(exp), "--out", str(out), "--json", "--set", "run.rounds=2"]
    # an old flat key and the new dotted keys through --set (same values as the file)
    args += ["--set", "run.target_accuracy=0.3", "--set", "algorithm.lr=0.05"]
    args += ["--set", "algorithm.server.name=sgd", "--set", "aggregator.name=mean"]
    res = runner.invoke(cli(), args)
    assert res.exit_code == 0, res.output
    check_json_line(res.stdout, out)
    assert "results:" in res.stderr


@pytest.mark.slow
def test_installed_fedkit_run_json_matches_direct_core_run(tmp_path: Path) -> None:
    """The same through the real console script in a fresh process (progress bar included)."""
    exp = tmp_path / "tiny.toml"
    exp.write_text(TINY)
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            *FEDKIT,
            "run",
            str(exp),
            "--out",
            str(out),
            "--json",
            "--set",
            "run.rounds=2",
            "--set",
            "run.target_accuracy=0.3",
            "--set",
            "algorithm.local.lr=0.05",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    check_json_line(proc.stdout, out)
    assert "results:" in proc.stderr


def test_study_prints_one_json_line_per_run_and_runs_commands(tmp_path: Path) -> None:
    exp = tmp_path / "study.toml"
    exp.write_text(STUDY)
    out = tmp_path / "out"
    app = cli()
    res = runner.invoke(
        app, ["run", str(exp), "-o", str(out), "--json", "-q", "--set", "run.rounds=2"]
    )
    assert res.exit_code == 0, res.output
    lines = [json.loads(line) for line in res.stdout.strip().splitlines()]
    assert [d["name"] for d in lines] == ["fedavg", "fedprox", "centralized"]
    assert [d["run_id"] for d in lines] == [1, 2, 3]
    assert all(d["status"] == "completed" for d in lines)

    res = runner.invoke(app, ["runs", "list", "--runs", str(out)])
    assert res.exit_code == 0, res.output
    for name in ("fedavg", "fedprox", "centralized", "completed"):
        assert name in res.stdout

    res = runner.invoke(app, ["runs", "show", "2", "-o", str(out), "--json"])
    assert res.exit_code == 0, res.output
    shown = json.loads(res.stdout)
    assert shown["name"] == "fedprox" and shown["config"]["algorithm"]["mu"] == 0.1
    assert (
        len(shown["rounds"]) == 2 and shown["summary"]["model_sha256"] == lines[1]["model_sha256"]
    )
    res = runner.invoke(app, ["runs", "show", "2", "-o", str(out)])
    assert res.exit_code == 0 and "fedprox" in res.stdout
    res = runner.invoke(app, ["runs", "show", "9", "-o", str(out)])
    assert res.exit_code == 2 and "no run 9" in res.stderr

    res = runner.invoke(app, ["runs", "export", "-o", str(out), "--format", "csv"])
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert [r["name"] for r in rows] == ["fedavg", "fedprox", "centralized"]
    assert rows[0]["model_sha256"] == lines[0]["model_sha256"]
    res = runner.invoke(app, ["runs", "export", "-o", str(out), "-f", "json", "-t", "rounds"])
    assert res.exit_code == 0, res.output
    exported = json.loads(res.stdout)
    assert len(exported) == 3 * 2 and {r["run_id"] for r in exported} == {1, 2, 3}
    # rounds counted from 1, as in reports and progress (issue 19): 2 rounds are rounds 1 and 2
    assert [r["round"] for r in exported if r["run_id"] == 1] == [1, 2]
    assert [r["round"] for r in shown["rounds"]] == [1, 2]
    target = tmp_path / "clients.csv"
    res = runner.invoke(
        app, ["runs", "export", "-o", str(out), "-t", "clients", "--output", str(target)]
    )
    assert res.exit_code == 0, res.output
    assert "client_id" in target.read_text().splitlines()[0]


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (TINY + "\n[run\n", "invalid TOML"),
        (TINY.replace("[run]", "[run]\nroundz = 3"), "unknown key run.roundz"),
        (TINY.replace("lr = 0.05", "lr = -1.0"), "algorithm.local.lr must be a finite number > 0"),
        (TINY.replace("epochs = 1", "epochs = 1\nlearning_rate = 1"), "allowed: lr, epochs"),
        (STUDY.replace("algorithm.mu = 0.1", "algorithm.mu = -0.1"), "algorithm.mu must be"),
    ],
)
def test_invalid_config_exits_2_and_writes_nothing(tmp_path: Path, text: str, needle: str) -> None:
    exp = tmp_path / "bad.toml"
    exp.write_text(text)
    out = tmp_path / "out"
    res = runner.invoke(cli(), ["run", str(exp), "-o", str(out), "--json"])
    assert res.exit_code == 2
    assert needle in res.stderr and str(exp) in res.stderr
    assert res.stdout == ""
    assert not results_path(out).exists()


def test_invalid_config_leaves_existing_database_untouched(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with ResultsStore(results_path(out)) as store:
        store.start_run(name="earlier", config={}, code="c", env={})
    before = results_path(out).read_bytes()
    exp = tmp_path / "bad.toml"
    exp.write_text(TINY.replace("rounds = 3", "rounds = 0"))
    res = runner.invoke(cli(), ["run", str(exp), "-o", str(out), "--set", "algorithm.mu=0.2"])
    assert res.exit_code == 2 and "run.rounds must be an int >= 1" in res.stderr
    with ResultsStore(results_path(out), create=False) as store:
        assert [r.name for r in store.runs()] == ["earlier"]
    assert results_path(out).read_bytes() == before


def test_bad_override_and_missing_database(tmp_path: Path) -> None:
    exp = tmp_path / "tiny.toml"
    exp.write_text(TINY)
    res = runner.invoke(cli(), ["run", str(exp), "-o", str(tmp_path), "--set", "rounds"])
    assert res.exit_code == 2 and "key=value" in res.stderr
    res = runner.invoke(cli(), ["runs", "list", "-o", str(tmp_path / "none")])
    assert res.exit_code == 2 and "no results database" in res.stderr


def test_error_found_when_loading_data_exits_2_and_leaves_no_database(tmp_path: Path) -> None:
    exp = tmp_path / "tiny.toml"
    exp.write_text(TINY)
    out = tmp_path / "out"
    res = runner.invoke(cli(), ["run", str(exp), "-o", str(out), "--set", "data.num_clients=11"])
    assert res.exit_code == 2 and "data.num_clients must be <= 10" in res.stderr
    assert not results_path(out).exists()
    assert list(out.iterdir()) == []
