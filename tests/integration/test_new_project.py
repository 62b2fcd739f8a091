"""`fedkit new DIR` writes a project whose own model and lazily supplied data run as written:
under the serial and processes executors (the same final model), through `fedkit launch`
(slow; with TensorBoard's per-worker round trips), and with a clear error where a process
cannot import the plugins."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

_SCRIPT = Path(sys.executable).with_name("fedkit")
FEDKIT = (
    [str(_SCRIPT)]
    if _SCRIPT.exists()
    else [sys.executable, "-c", "from fedkit.cli import main; main()"]
)


def fedkit(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run(
        [*FEDKIT, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
        check=check,
    )  # fmt: skip


def last_json(out: subprocess.CompletedProcess[str]) -> dict[str, object]:
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("new") / "my-fl project"
    out = fedkit("new", str(root), cwd=root.parent)
    assert "wrote" in out.stdout
    return root


def test_new_writes_model_data_experiment_and_test(project: Path) -> None:
    names = sorted(str(p.relative_to(project)) for p in project.rglob("*.py"))
    assert names == [
        "my_fl_project/__init__.py",
        "my_fl_project/data.py",
        "my_fl_project/model.py",
        "test_project.py",
    ]
    assert 'name = "my_fl_project.model:Net"' in (project / "experiment.toml").read_text()
    again = fedkit("new", str(project), cwd=project.parent, check=False)
    assert again.returncode == 2 and "use --force" in again.stderr


def test_project_runs_the_same_under_serial_and_processes(project: Path) -> None:
    common = ("--quiet", "--json", "--set", "run.rounds=3")
    serial = last_json(fedkit("run", "experiment.toml", "--out", "s", *common, cwd=project))
    procs = last_json(
        fedkit(
            "run",
            "experiment.toml",
            "--out",
            "p",
            *common,
            "--set",
            'run.executor="processes"',
            cwd=project,
        )
    )
    assert serial["status"] == procs["status"] == "completed"
    assert serial["rounds"] == 3
    assert serial["model_sha256"] == procs["model_sha256"]
    assert serial["final_accuracy"] == procs["final_accuracy"]


def test_a_process_that_cannot_import_the_plugin_says_so(project: Path) -> None:
    elsewhere = project.parent
    out = fedkit(
        "run", str(project / "experiment.toml"), "--out", str(elsewhere / "x"), cwd=elsewhere,
        check=False,
    )  # fmt: skip
    assert out.returncode == 2
    text = " ".join(out.stderr.split())
    assert "cannot load plugin 'my_fl_project.data:load'" in text
    assert "No module named 'my_fl_project'" in text
    assert "PYTHONPATH" in text


@pytest.mark.slow
@pytest.mark.net
def test_project_runs_under_launch_with_the_model_of_run(project: Path) -> None:
    text = (project / "experiment.toml").read_text()
    small = text.replace('partition = "natural"', 'partition = "natural"\nnum_clients = 3')
    small = small.replace("num_clients = 20", "num_clients = 3")
    small = small.replace("clients_per_round = 5", "clients_per_round = 2")
    small = small.replace("[run]\n", "[run]\ntensorboard = true\n")
    (project / "small.toml").write_text(small)
    deployed = last_json(
        fedkit(
            "launch",
            "--workers",
            "3",
            "--experiment",
            "small.toml",
            "--out",
            "launch",
            "--json",
            cwd=project,
        )
    )
    simulated = last_json(fedkit("run", "small.toml", "--out", "r", "--json", cwd=project))
    assert deployed["model_sha256"] == simulated["model_sha256"]
    assert deployed["committed_rounds"] == 5
    (events,) = {p.parent for p in (project / "launch").rglob("events.out.tfevents.*")}
    ea = EventAccumulator(str(events))
    ea.Reload()
    tags = set(ea.Tags()["tensors"])
    assert {"test/accuracy", "train/loss", "bytes/up"} <= tags
    rtt = {t for t in tags if t.startswith("worker_rtt/")}
    assert rtt and rtt <= {"worker_rtt/0", "worker_rtt/1", "worker_rtt/2"}
    assert len(ea.Tensors("test/accuracy")) == 5  # one step per round
