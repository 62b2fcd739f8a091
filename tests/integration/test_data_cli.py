"""`fedkit data describe` through typer's CliRunner: tables, JSON, plots, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedkit.data.cli import app, data_overrides
from fedkit.experiment.config import ConfigError
from tests.conftest import require_data

runner = CliRunner()

SYNTHETIC = ["--set", "dataset=synthetic", "--set", "partition=natural"]


def run_json(args: list[str]) -> dict[str, object]:
    result = runner.invoke(app, ["describe", *args, "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert isinstance(doc, dict)
    return doc


def test_set_keys_are_those_of_fedkit_run_and_bare_keys_are_data_keys() -> None:
    parsed = data_overrides(
        ["data.dataset=mnist", "alpha=0.1", "num_clients=100", "options.cache=false", 'name="a b"']
    )
    assert parsed == {
        "data.dataset": "mnist",
        "data.alpha": 0.1,
        "data.num_clients": 100,
        "data.options.cache": False,
        "data.name": "a b",
    }
    assert data_overrides(["run.rounds=3"]) == {"run.rounds": 3}  # other sections stay theirs
    with pytest.raises(ConfigError, match="key=value"):
        data_overrides(["alpha"])


def test_json_has_per_client_counts_and_histograms() -> None:
    doc = run_json([*SYNTHETIC, "--set", "alpha=0.5", "--set", "beta=0.5"])
    clients = doc["clients"]
    assert isinstance(clients, list) and len(clients) == 30
    assert doc["num_classes"] == 10
    for c in clients:
        assert c["num_samples"] == sum(c["label_histogram"]) > 0
        assert len(c["label_histogram"]) == 10
        assert c["name"].startswith("f_")
        assert c["num_test_samples"] >= 1
    assert sum(c["num_samples"] for c in clients) == doc["num_train_samples"]
    assert doc["spec"] == {
        "dataset": "synthetic",
        "partition": "natural",
        "alpha": 0.5,
        "beta": 0.5,
        "min_size": 1,
        "dirichlet_method": "hsu",
        "seed": 0,
        "test_partition": "auto",
    }
    assert 0.0 <= doc["mean_total_variation"] <= 1.0
    assert doc["histogram_counts"] == "samples"


def test_file_with_set_overrides(tmp_path: Path) -> None:
    exp = tmp_path / "exp.toml"
    exp.write_text(
        '[run]\nrounds = 10\n\n[data]\ndataset = "synthetic"\npartition = "iid"\n'
        "num_clients = 5\nseed = 1\n\n[data.options]\nnum_users = 10\n"
    )
    doc = run_json([str(exp)])
    assert len(doc["clients"]) == 5  # type: ignore[arg-type]
    doc = run_json([str(exp), "--set", "num_clients=3", "--set", "options.num_users=4"])
    assert len(doc["clients"]) == 3  # type: ignore[arg-type]
    assert doc["spec"]["options"] == {"num_users": 4}  # type: ignore[index]
    # the dotted keys of `fedkit run --set` work the same (other sections are accepted, unused)
    doc = run_json(
        [
            str(exp),
            "--set",
            "data.num_clients=4",
            "--set",
            "data.options.num_users=6",
            "--set",
            "run.rounds=2",
            "--set",
            "algorithm.local.lr=0.1",
        ]
    )
    assert len(doc["clients"]) == 4  # type: ignore[arg-type]
    assert doc["spec"]["options"] == {"num_users": 6}  # type: ignore[index]
    doc = run_json([str(exp), "--set", "partition=dirichlet", "--set", "alpha=0.05"])
    sizes = {c["num_samples"] for c in doc["clients"]}  # type: ignore[attr-defined]
    assert max(sizes) - min(sizes) <= 1  # Hsu et al.: equal client sizes


def test_table_is_summarised_and_plot_is_saved(tmp_path: Path) -> None:
    png = tmp_path / "plots" / "partition.png"
    result = runner.invoke(
        app,
        [
            "describe",
            "--set",
            "dataset=synthetic",
            "--set",
            "partition=one_class",
            "--set",
            "num_clients=25",
            "--rows",
            "4",
            "--plot",
            str(png),
        ],
    )
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "synthetic: one_class partition" in out
    assert "classes per client (mean)" in out and "1.00" in out
    assert "21 more clients" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--set", "dataset=synthetic", "--set", "partiton=iid"], 2, "unknown key data.partiton"),
        (["--set", "dataset=synthetic", "--set", "partition=dirichlet"], 2, "num_clients"),
        (["--set", "alpha"], 2, "--set expects key=value"),
        ([], 2, "give an experiment FILE or --set"),
        (
            ["--set", "dataset=synthetic", "--set", "partition=natural", "--set", "num_clients=99"],
            1,
            "data.num_clients must be <= 30",
        ),
    ],
)
def test_errors_exit_non_zero_with_a_message(args: list[str], code: int, message: str) -> None:
    result = runner.invoke(app, ["describe", *args])
    assert result.exit_code == code
    assert message in result.stderr


def test_missing_dataset_file_is_reported(tmp_path: Path) -> None:
    args = ["--set", "dataset=mnist", "--set", "num_clients=2", "--root", str(tmp_path)]
    result = runner.invoke(app, ["describe", *args, "--set", "options.cache=false"])
    assert result.exit_code == 1
    assert "train-images-idx3-ubyte.gz" in result.stderr
    assert "f68b3c2dcbeaaa9fbdd348bbdeb94873" in result.stderr


def test_file_without_data_table(tmp_path: Path) -> None:
    exp = tmp_path / "exp.toml"
    exp.write_text("[run]\nrounds = 1\n")
    result = runner.invoke(app, ["describe", str(exp)])
    assert result.exit_code == 2
    assert "no [data] table" in result.stderr


def test_real_mnist_dirichlet(tmp_path: Path) -> None:
    root = require_data(
        "mnist/train-images-idx3-ubyte.gz",
        "mnist/train-labels-idx1-ubyte.gz",
        "mnist/t10k-images-idx3-ubyte.gz",
        "mnist/t10k-labels-idx1-ubyte.gz",
    )
    args = ["--set", "dataset=mnist", "--set", "partition=dirichlet", "--set", "alpha=0.1"]
    args += ["--set", "num_clients=20", "--root", str(root)]
    doc = run_json(args)
    clients = doc["clients"]
    assert isinstance(clients, list) and len(clients) == 20
    assert all(c["num_samples"] == 3000 for c in clients)
    totals = [sum(col) for col in zip(*(c["label_histogram"] for c in clients), strict=True)]
    # MNIST's training label counts
    assert totals == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert sum(c["num_test_samples"] for c in clients) == 10_000
    assert doc["mean_total_variation"] > 0.5  # type: ignore[operator]


def test_mounted_under_the_fedkit_command() -> None:
    """`fedkit data describe` is reachable from the console-script entry point."""
    code = "from fedkit.cli import main; main()"
    args = ["data", "describe", "--set", "dataset=synthetic", "--set", "partition=iid"]
    args += ["--set", "num_clients=4", "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert [c["num_samples"] > 0 for c in json.loads(proc.stdout)["clients"]] == [True] * 4
